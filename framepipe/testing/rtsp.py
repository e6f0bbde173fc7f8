"""Start, stop and restart a real RTSP server on 127.0.0.1 (``rtsp_server.py`` beside this file).

The server is GStreamer's gst-rtsp-server, driven by Debian's ``/usr/bin/python3`` (packages
``gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,bad,ugly}``, installed
by ``make system-deps``). :func:`system_python_has_gst_rtsp` says whether it can run here.
Used by the test suite and by ``framepipe bench --source rtsp``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def system_python_has_gst_rtsp() -> bool:
    """True when Debian's python3 can import the GStreamer RTSP server bindings."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer:
    """One gst-rtsp-server process on 127.0.0.1; ``url`` stays the same across restarts.

    ``file``: serve that mp4's H.264 stream (played at its own rate, ending with the file)
    instead of an endless 320x240 test pattern. ``mounts``: also serve ``/s0`` … as separate
    cameras (:meth:`mount_url`). ``shared=False``: every client gets its own playback.
    """

    def __init__(
        self,
        *,
        file: Path | None = None,
        fps: int = 15,
        port: int | None = None,
        mounts: int = 0,
        shared: bool = True,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.file = file
        self.fps = fps
        self.mounts = mounts
        self.shared = shared
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def mount_url(self, index: int) -> str:
        """The URL of mount ``/s<index>`` (``mounts`` of them are served)."""
        if not 0 <= index < self.mounts:
            raise IndexError(f"mount {index} is not served (mounts={self.mounts})")
        return f"rtsp://127.0.0.1:{self.port}/s{index}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        command = [
            SYSTEM_PYTHON,
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--fps",
            str(self.fps),
        ]
        if self.file is not None:
            command += ["--file", str(self.file)]
        if self.mounts:
            command += ["--mounts", str(self.mounts)]
        if not self.shared:
            command.append("--not-shared")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._process = process
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        line = process.stdout.readline().decode().strip()
        if not line.startswith("READY"):
            self.kill()
            raise RuntimeError(f"RTSP server did not start on port {self.port}: {line!r}")
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"RTSP server on port {self.port} did not accept connections in {timeout}s"
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash as a camera would have it) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def freeze(self) -> None:
        """SIGSTOP: the socket stays open but nothing answers (a hung camera)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        self.kill()
        self.start(timeout)

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
