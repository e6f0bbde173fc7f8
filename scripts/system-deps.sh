#!/usr/bin/env bash
# Installs the Debian packages that the integration tests need, only when one is missing.
# The RTSP server used by the tests is GStreamer's gst-rtsp-server driven by Debian's python3-gi;
# curl and jq run the README's examples; chromium is the browser the WebRTC demo test drives
# (with Playwright from PyPI).
set -euo pipefail
PACKAGES=(
    gir1.2-gst-rtsp-server-1.0 python3-gi
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
    curl jq  # the README's HTTP gateway examples, run by tests/e2e/test_readme_examples.py
    chromium  # tests/e2e/test_webrtc_browser.py (fake camera from a .y4m file)
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
