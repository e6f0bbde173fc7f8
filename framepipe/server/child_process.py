"""The manager's side of one child process with a control pipe: start, read, kill, reap.

One supervisor for the manager's children that talk over a ``multiprocessing`` pipe (the
pipeline workers, :mod:`framepipe.server.worker.handle`, and the inference services,
:mod:`framepipe.server.inference.supervisor`)::

    process, conn = await start_child(start_fn, options)   # off the loop; cancel-safe
    child = ChildProcess(process, conn, loop)              # subclass: _deliver, _on_closed
    child.send(message); child.kill()
    code = await child.reap(timeout)                       # join, kill when overdue, collect

:func:`start_child` runs the blocking start in a thread; if the task awaiting it is cancelled
meanwhile, the process it then starts has no owner, and is killed as soon as it exists
(:func:`end_orphan`). A small thread per child blocks in ``Connection.recv()`` and hands each
message, then the end of the pipe, to the event loop; the loop never blocks on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TypeVar

__all__ = ["ChildProcess", "end_orphan", "start_child"]

log = logging.getLogger("framepipe.manager")

Options = TypeVar("Options")
Started = tuple[BaseProcess, Connection]


async def start_child(start: Callable[[Options], Started], options: Options) -> Started:
    """``start(options)`` in a thread (it forks or spawns, and hands over ``options``); returns
    the process and the manager's end of its pipe. Cancelled, it ends the orphan it starts."""
    started = asyncio.get_running_loop().run_in_executor(None, start, options)
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(end_orphan)  # nobody will own it: end it once started
        raise


def end_orphan(started: asyncio.Future[Started]) -> None:
    """Kill a child whose starter was cancelled, close its pipe, and collect it in the
    background (a done-callback of the start)."""
    if started.cancelled() or started.exception() is not None:
        return
    process, conn = started.result()
    process.kill()
    conn.close()
    threading.Thread(target=process.join, args=(10,), daemon=True).start()


class ChildProcess:
    """One child process, its pipe, and the thread that reads the pipe.

    Subclasses say what a message means (:meth:`_deliver`) and what the end of the pipe means
    (:meth:`_on_closed`); both run on the event loop. ``kind`` names the child in logs.
    """

    #: How long :meth:`reap` waits for a child it has just killed.
    kill_wait_s = 10.0

    def __init__(
        self, process: BaseProcess, conn: Connection, loop: asyncio.AbstractEventLoop, kind: str
    ) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid or 0
        self.kind = kind
        self._loop = loop
        self._reaped = False
        self._exitcode: int | None = None
        self._reader = threading.Thread(
            target=self._read_forever, name=f"{kind}-{self.pid}-reader", daemon=True
        )
        self._reader.start()

    # ---- the reader thread -------------------------------------------------------------------

    def _read_forever(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unpicklable message: report and keep reading
                log.exception("%s %d sent a message that could not be read", self.kind, self.pid)
                continue
            self._call_in_loop(self._deliver, message)
        self._call_in_loop(self._on_closed)

    def _call_in_loop(self, func: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(func, *args)

    def _deliver(self, message: object) -> None:
        """A message from the child (on the loop)."""

    def _on_closed(self) -> None:
        """The pipe's end of file: the child exited or closed it (on the loop)."""

    # ---- the process -------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self._reaped and self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        """How the process ended (negative: the signal that killed it); None while it runs."""
        return self._exitcode if self._reaped else self.process.exitcode

    def send(self, message: object) -> bool:
        """Send ``message`` down the pipe; False if the pipe is gone."""
        try:
            self.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL the child (works on a stopped process too)."""
        with contextlib.suppress(ProcessLookupError, ValueError):
            self.process.kill()

    def _overdue(self, timeout: float) -> None:
        """The child did not exit within ``timeout`` of :meth:`reap`; it is killed next."""

    async def reap(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the child to exit, then kill it; collect it and close its
        pipe (idempotent). Its exit code."""
        if self._reaped:
            return self._exitcode
        loop = asyncio.get_running_loop()
        if self.process.is_alive():
            await loop.run_in_executor(None, self.process.join, timeout)
        if self.process.is_alive():
            self._overdue(timeout)
            self.kill()
            await loop.run_in_executor(None, self.process.join, self.kill_wait_s)
        self._exitcode = self.process.exitcode
        self._reaped = True
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ValueError):
            self.process.close()
        return self._exitcode
