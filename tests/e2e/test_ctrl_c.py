"""Ctrl-C ends the CLI at any moment, on a busy machine, and leaves nothing behind.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the command and every
process it started (the decoders' forkserver, decode processes). Each test starts the command in
a process group of its own, as a shell does, keeps every core busy with a burner process, and
sends that group SIGINT at a random moment after the start, 20 times. Every run must end within
5 s with a clean exit (0, or 130 / SIGINT when the Ctrl-C came before the command started
anything), no traceback, no process of its group left and no ``fp-`` entry of theirs in /dev/shm.

One exception, which is Python's and not framepipe's: a Ctrl-C while the interpreter is still
importing the command (before ``framepipe.cli.main`` runs; up to a second or two on a loaded
machine) ends it with Python's own KeyboardInterrupt traceback. Such a run must
still leave nothing behind; it is counted apart, and most runs must be interrupted later.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from framepipe.testing import make_test_video
from tests.conftest import as_foreground_job, framepipe_shm_entries
from tests.integration.manager_harness import running_manager
from tests.rtsp import RtspServer, system_python_has_gst_rtsp

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNS = 20
ENDS_WITHIN_S = 5.0
CLEAN_EXITS = (0, 130, -signal.SIGINT)


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """Every core spinning in a process of its own, as on a machine with other work."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)


def _group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of process group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _owned_by(pids: set[str]) -> set[str]:
    """``fp-`` entries in /dev/shm whose names carry one of ``pids`` (fp-<pid>-...)."""
    return {n for n in framepipe_shm_entries() if n.split("fp-", 1)[1].split("-", 1)[0] in pids}


def _during_import(code: int | None, errors: str) -> bool:
    """Python's KeyboardInterrupt while importing the command, before framepipe's main ran."""
    return (
        code in (1, -signal.SIGINT)  # 1: in site's imports; -SIGINT: once past them
        and errors.rstrip().endswith("KeyboardInterrupt")
        and ", in main" not in errors
    )


def _interrupt_at_random(
    command: list[str],
    rng: random.Random,
    earliest: float,
    latest: float,
    burst: int = 1,
    **popen: Any,
) -> tuple[int | None, float, bytes]:
    """Start ``command`` in its own process group, send the group SIGINT after a random delay,
    and check that it ends in time, cleanly, with nothing left; returns its exit code (None:
    interrupted while Python was importing it), the delay and its stdout. ``burst``: that many
    SIGINTs 10 ms apart (a user who keeps pressing Ctrl-C)."""
    process = subprocess.Popen(
        command,
        start_new_session=True,  # a process group of its own, as a shell gives a job
        preexec_fn=as_foreground_job,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "TTY_COMPATIBLE": "1"},
        stderr=subprocess.PIPE,
        **popen,
    )
    stderr = process.stderr
    assert stderr is not None
    written: list[bytes] = []
    reader = threading.Thread(
        target=lambda: written.extend(iter(lambda: stderr.read(4096), b"")), daemon=True
    )
    reader.start()
    pids = {process.pid}
    delay = rng.uniform(earliest, latest)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:  # every process of the group, to find their segments
        pids.update(p.pid for p in _group(process.pid))
        time.sleep(0.05)
    pids.update(p.pid for p in _group(process.pid))
    try:
        sent = time.monotonic()
        for _ in range(burst):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.01)
        try:
            process.wait(ENDS_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {ENDS_WITHIN_S} s after Ctrl-C at {delay:.2f} s")
        left: list[psutil.Process] = []
        while time.monotonic() < sent + ENDS_WITHIN_S:
            left = _group(process.pid)
            if not left:
                break
            time.sleep(0.05)
        assert not left, f"Ctrl-C at {delay:.2f} s left {[p.cmdline()[:4] for p in left]}"
        leaked = _owned_by({str(pid) for pid in pids})
        assert not leaked, f"Ctrl-C at {delay:.2f} s left {sorted(leaked)} in /dev/shm"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        reader.join(10)
        stderr.close()
        stdout = process.stdout.read() if process.stdout is not None else b""
        if process.stdout is not None:
            process.stdout.close()
    errors = b"".join(written).decode(errors="replace")
    if _during_import(process.returncode, errors):
        return None, delay, stdout
    assert process.returncode in CLEAN_EXITS, f"Ctrl-C at {delay:.2f} s: {errors[-3000:]}"
    assert "Traceback" not in errors, f"Ctrl-C at {delay:.2f} s: {errors[-3000:]}"
    return process.returncode, delay, stdout


@pytest.mark.rtsp
def test_ctrl_c_ends_framepipe_run_of_a_live_stream_at_any_moment(
    tmp_path: Path, busy_cores: None
) -> None:
    if not system_python_has_gst_rtsp():
        pytest.skip("GStreamer RTSP server not installed (make system-deps)")
    rng = random.Random()
    server = RtspServer(fps=15)
    server.start()
    output = tmp_path / "camera.mp4"
    command = [sys.executable, "-m", "framepipe.cli", "run", server.url, "--json"]
    codes = []
    try:
        for _ in range(RUNS):
            code, delay, stdout = _interrupt_at_random(
                [*command, "--output", str(output)],
                rng,
                0.2,
                5.0,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
            )
            codes.append(code)
            if code == 0:  # it had started: the summary says why it stopped
                summary = json.loads(stdout)
                assert summary["stopped_by"] == "interrupt", f"Ctrl-C at {delay:.2f} s"
    finally:
        server.kill()
    assert codes.count(0) >= RUNS // 4, f"too few runs were interrupted while streaming: {codes}"


@pytest.mark.rtsp
def test_ctrl_c_pressed_again_and_again_still_ends_framepipe_run_cleanly(
    tmp_path: Path, busy_cores: None
) -> None:
    """The Ctrl-Cs after the first one arrive while the run is tearing down: they must not
    interrupt the teardown (a KeyboardInterrupt there leaves processes and segments)."""
    if not system_python_has_gst_rtsp():
        pytest.skip("GStreamer RTSP server not installed (make system-deps)")
    server = RtspServer(fps=15)
    server.start()
    command = [sys.executable, "-m", "framepipe.cli", "run", server.url, "--json"]
    try:
        for _ in range(3):
            code, delay, stdout = _interrupt_at_random(
                [*command, "--output", str(tmp_path / "camera.mp4")],
                random.Random(),
                4.0,
                6.0,
                burst=40,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
            )
            assert code == 0, f"Ctrl-C at {delay:.2f} s: exit {code}"
            assert json.loads(stdout)["stopped_by"] == "interrupt"
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("runs", "earliest", "burst"),
    [(RUNS, 0.2, 1), (3, 2.5, 40)],
    ids=["once-at-random-moments", "again-and-again"],
)
def test_ctrl_c_ends_framepipe_top_at_any_moment(
    tmp_path: Path, busy_cores: None, runs: int, earliest: float, burst: int
) -> None:
    video = make_test_video(tmp_path / "v.mp4", frames=3000, width=128, height=72, fps=30)
    rng = random.Random()
    with running_manager() as manager:
        manager.request(
            {
                "type": "init",
                "video_configuration": {
                    "type": "VideoConfiguration",
                    "video_reference": str(video.path),
                    "realtime_replay": True,
                },
                "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
            }
        )
        command = [sys.executable, "-m", "framepipe.cli", "top", "--interval", "0.2"]
        command += ["--port", str(manager.port)]
        codes = []
        for _ in range(runs):
            primary, secondary = pty.openpty()  # a terminal: the live view redraws in place
            drained = threading.Event()

            def drain(fd: int = primary, done: threading.Event = drained) -> None:
                # A terminal reads what is written: a pty nobody reads fills up (~18 KB, a few
                # seconds of redraws) and blocks the writer in write().
                with contextlib.suppress(OSError):
                    while select.select([fd], [], [], 10)[0] and os.read(fd, 65536):
                        pass
                done.set()

            terminal = threading.Thread(target=drain, daemon=True)
            terminal.start()
            try:
                code, _, _ = _interrupt_at_random(
                    command,
                    rng,
                    earliest,
                    4.0,
                    burst=burst,
                    cwd=tmp_path,
                    stdin=secondary,
                    stdout=secondary,
                )
                codes.append(code)
            finally:
                os.close(secondary)
                drained.wait(15)
                os.close(primary)
    assert codes.count(0) >= runs // 4, f"too few runs were interrupted in the live view: {codes}"
