"""The README's WebRTC example, run as written against a real server.

The "WebRTC" section's Python block runs in a fresh interpreter against `framepipe serve`, with
the example's port rewritten to the server's, and both peers on loopback (the machine's network
stays out of it): the server through `FRAMEPIPE_WEBRTC_ICE_ADDRESSES`, the example's peer
through the same lever, set before the example runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_readme_examples import README, section
from tests.integration.manager_harness import running_manager

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = (
    "from framepipe.server.webrtc.ice import offer_host_addresses\n"
    "offer_host_addresses(['127.0.0.1'])\n"
)


def test_readme_webrtc_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", section(README.read_text(), "WebRTC"), re.DOTALL)
    assert len(blocks) == 1, "one Python example in the WebRTC section"
    with running_manager({"FRAMEPIPE_WEBRTC_ICE_ADDRESSES": "127.0.0.1"}) as manager:
        script = LOOPBACK + blocks[0].replace("port=7070", f"port={manager.port}")
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.fullmatch(r"\d+ \[.*\]\n", result.stdout), result.stdout
        assert manager.request({"type": "list_pipelines"})["response"]["pipelines"] == []
