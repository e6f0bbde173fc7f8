"""Ctrl-C as a request that a command polls, not an exception raised wherever its main thread is.

Python raises ``KeyboardInterrupt`` between any two bytecodes of the main thread, including the
moment after ``threading.Condition.__enter__`` (Python code) has acquired its lock and before the
``with`` block that would release it is entered. The lock then stays held: a thread that needs it
(the pipeline's, putting a result in the sink that ``status()`` was reading) blocks for good, and
the command's teardown waits out every join timeout while Ctrl-C seems ignored. A command that
owns threads, decode processes and shared memory (``framepipe run``) therefore installs
:class:`CtrlC` before it starts anything: SIGINT only counts, and the command's own loop notices
the request at a point where nothing is half-done, then tears down in order.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType, TracebackType
from typing import Any, TypeVar

__all__ = ["CtrlC", "run_async"]

T = TypeVar("T")
_HELD = {signal.SIGINT}


class CtrlC:
    """While entered (in the main thread), SIGINT sets :attr:`requested` instead of raising.

    ``final``: once a Ctrl-C was requested, the command is ending: leaving the block ignores
    SIGINT for the rest of the process instead of restoring the previous handler, so that a
    user still pressing Ctrl-C does not interrupt the summary or the interpreter's exit.
    """

    def __init__(self, *, final: bool = False) -> None:
        self.final = final
        self.count = 0
        self._previous: Any = None
        self._installed = False

    @property
    def requested(self) -> bool:
        return self.count > 0

    def _on_sigint(self, _signo: int, _frame: FrameType | None) -> None:
        # Nothing here takes a lock: the handler runs on the main thread, which may hold it.
        self.count += 1

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            ending = self.final and self.requested
            signal.signal(signal.SIGINT, signal.SIG_IGN if ending else self._previous)
            self._installed = False


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())`` for a command that a Ctrl-C may end at any moment.

    The event loop is built and closed with SIGINT held back. A KeyboardInterrupt in the middle
    of either leaves a half-made loop, whose finaliser prints a traceback, and a coroutine that
    was never awaited. In between, asyncio's own handler is in place: the first Ctrl-C cancels
    ``main`` and the call raises KeyboardInterrupt. Once the loop is closed, SIGINT is ignored:
    the command is ending, and a Ctrl-C still pressed must not interrupt its exit.
    """
    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(main())

    async def released() -> T:
        # The runner's SIGINT handler is installed by now: a Ctrl-C held back meanwhile
        # arrives here and cancels this task, as any later one does.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        return await main()

    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    runner = asyncio.Runner()
    try:
        return runner.run(released())
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        try:
            runner.close()
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
