"""``framepipe serve`` as a child process, and the port it announces.

The one way the demo, the bench, ``perf/`` and the tests start a real server: a subprocess
(``python -m framepipe serve --port 0`` and any further arguments), its output read line by
line (kept in memory, and in a log file if asked), ready once it prints the address it listens
on (:func:`announced_address`), stopped with a signal and a timeout, its whole process tree
killed when that fails or when it never becomes ready.

Light on purpose: the standard library and psutil only, so that a command starting a server
does not load the data plane for it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import psutil

from framepipe.core.processes import kill_tree

# What ``framepipe serve`` prints once its control plane listens (``cli``'s announce), and the
# manager logs; a cluster front end (``--backend ray``) announces itself the same way.
_LISTENING = re.compile(r"stream manager listening on (\S+):(\d+)")


def announced_address(line: str) -> tuple[str, int] | None:
    """The ``(host, port)`` a line of ``framepipe serve``'s output announces, if it does."""
    match = _LISTENING.search(line)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def serve_command(*args: str) -> list[str]:
    """``python -m framepipe serve --port 0 ARGS``, with this interpreter (a later ``--port``
    in ``args`` wins)."""
    return [sys.executable, "-m", "framepipe", "serve", "--port", "0", *args]


class ServeProcess:
    """A running ``framepipe serve``; ready (``host``, ``port`` known) once constructed.

    ``args`` follow ``serve --port 0``; ``env`` is laid over this process's environment
    (``PYTHONUNBUFFERED=1`` is always set, so that the announcement comes at once);
    ``log_path`` receives the output (stdout and stderr together) as it comes, and
    :attr:`lines` keeps it (its last ``keep_lines`` lines, if given). ``ready_timeout_s=None``
    returns at once, without waiting for the announcement (:meth:`wait_ready` waits later). A
    server that exits
    or stays silent before it listens is killed, and :class:`RuntimeError` says so with the end
    of its output.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log_path: Path | None = None,
        append_log: bool = False,
        ready_timeout_s: float | None = 30.0,
        keep_lines: int | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # line-buffered: the log can be followed while the server runs
            self._log = open(log_path, "a" if append_log else "w", buffering=1)  # noqa: SIM115
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.host, self.port = "127.0.0.1", 0
        self.launched_at = time.monotonic()
        self.announced_at = 0.0
        self._ready = threading.Event()
        try:
            self.proc = subprocess.Popen(
                list(command) if command is not None else serve_command(*args),
                cwd=cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except BaseException:
            self._close_log()
            raise
        self._reader = threading.Thread(
            target=self._read, name="framepipe-serve-output", daemon=True
        )
        self._reader.start()
        if ready_timeout_s is not None:
            self.wait_ready(ready_timeout_s)

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        # Closed here, at EOF: when the server and every child that inherited its stdout (a
        # reaper outliving it) are gone; closing it under the reader's feet would fail it.
        with stdout:
            for line in stdout:
                self.lines.append(line.rstrip("\n"))
                if self._log is not None:
                    with contextlib.suppress(ValueError):  # closed by kill() meanwhile
                        self._log.write(line)
                address = announced_address(line)
                if address is not None and not self.port:
                    self.host, self.port = address
                    self.announced_at = time.monotonic()
                    self._ready.set()
        self._ready.set()
        self._close_log()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the announcement; kill the server and raise if it does not come."""
        if not self._ready.wait(timeout_s):
            self.kill()
            raise RuntimeError(
                f"framepipe serve did not announce its port in {timeout_s:g} s:\n{self.output()}"
            )
        if not self.port:
            self.kill()
            raise RuntimeError(f"framepipe serve exited before listening:\n{self.output()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def output(self, last: int = 200) -> str:
        """The last ``last`` lines of the server's output."""
        return "\n".join(list(self.lines)[-last:])

    def tree(self) -> list[psutil.Process]:
        """Every process below the server (those it started, and theirs)."""
        try:
            children: list[psutil.Process] = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        return children

    def stop(self, timeout_s: float = 30.0, *, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM: a clean shutdown, as an operator stops it) and wait for the
        exit status; a server still running after ``timeout_s`` is killed, and -9 returned."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL the server and every process below it."""
        kill_tree(self.proc)
        self._reader.join(5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(ValueError):
                self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.kill()
        elif self.proc.poll() is None:
            self.stop()


__all__ = ["ServeProcess", "announced_address", "serve_command"]
