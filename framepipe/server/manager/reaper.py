"""After the manager: unlink what its processes left in shared memory, even if it was killed.

The manager starts one reaper (``python -m framepipe.server.manager.reaper``) in a session of its
own, with a pipe on its standard input. When the manager ends, the pipe closes:

* a clean shutdown writes ``done`` first — the manager has unlinked its segments itself; the
  reaper sweeps once more and exits at once;
* a killed manager (SIGKILL, OOM killer) says nothing — its workers, decoders and services die
  with it (PR_SET_PDEATHSIG), and the reaper sweeps a few times over the next seconds, so
  every ``fp-`` segment and semaphore whose owner is dead is unlinked without waiting for a
  manager to start again (which sweeps too).

A sweep unlinks only entries whose owner process is dead (:func:`framepipe.core.shm.sweep_orphans`),
so segments still in use — by another manager on the same machine, or by a straggler that has
not died yet — are left alone until a later sweep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

__all__ = ["DONE", "Reaper", "main"]

log = logging.getLogger("framepipe.reaper")

DONE = b"done\n"
#: After a killed manager: sweep at these delays (seconds), for processes that die late.
SWEEPS_AFTER_KILL = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)


class Reaper:
    """The manager's handle on its reaper process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "framepipe.server.manager.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or kill of the manager's group does not reach it
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        """The manager is shutting down cleanly (its segments are unlinked)."""
        stdin = self._proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.write(DONE)
                stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5.0)


def _sweep() -> list[str]:
    from framepipe.core.shm import sweep_orphans

    return sweep_orphans()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    manager_pid = int(args[0]) if args else os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    said = b""
    with contextlib.suppress(OSError):
        said = sys.stdin.buffer.read()  # until the manager's end of the pipe closes
    if said == DONE:
        _sweep()
        return 0
    log.warning("the stream manager (pid %d) ended without shutting down: cleaning up", manager_pid)
    started = time.monotonic()
    removed: list[str] = []
    for delay in SWEEPS_AFTER_KILL:
        time.sleep(max(0.0, started + delay - time.monotonic()))
        removed += _sweep()
    if removed:
        log.warning("unlinked %d shared-memory entries the manager's processes left", len(removed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
