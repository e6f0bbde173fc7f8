"""A real RTSP server on 127.0.0.1: GStreamer's gst-rtsp-server (Debian's packages).

Run by Debian's ``/usr/bin/python3`` (it has ``gi``; a virtual environment's python usually
does not) — :class:`framepipe.testing.rtsp.RtspServer` starts it:

    /usr/bin/python3 framepipe/testing/rtsp_server.py --port 8554 [--file video.mp4] [--fps 15]
        [--mounts N] [--not-shared]

serves ``rtsp://127.0.0.1:PORT/test`` — an endless live test pattern (320x240, H.264), or
the H.264 stream of an mp4 file (known content, played at its own frame rate; the stream ends
with the file). ``--mounts N`` adds ``/s0`` … ``/s{N-1}``, each serving the same content as a
camera of its own. ``--not-shared`` gives every client its own playback (from the start of the
file) instead of joining the one already playing. Prints ``READY <port>`` on stdout once it
listens, and exits on SIGTERM/SIGINT.

This file imports nothing of framepipe: it runs under the system interpreter.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(args: argparse.Namespace) -> str:
    if args.file:
        return (
            f"( filesrc location={args.file} ! qtdemux ! h264parse config-interval=-1 "
            "! rtph264pay name=pay0 pt=96 )"
        )
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} "
        f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
        "! video/x-h264,profile=baseline ! h264parse config-interval=-1 "
        "! rtph264pay name=pay0 pt=96 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/test")
    parser.add_argument("--mounts", type=int, default=0, help="also serve /s0 ... /s{N-1}")
    parser.add_argument("--not-shared", action="store_true", help="one playback per client")
    parser.add_argument("--file", default="")
    parser.add_argument("--pattern", default="ball")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount in [args.mount, *(f"/s{i}" for i in range(args.mounts))]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(args))
        factory.set_shared(not args.not_shared)
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"FAILED could not listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
