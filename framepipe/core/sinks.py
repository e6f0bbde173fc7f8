"""The bounded result sink: where a pipeline's results wait for whoever reads them.

:class:`InMemoryBufferSink` is the reference's bounded buffer that clients drain with
``consume_result`` — one entry per processing step — and the only result buffer a pipeline has
(``Pipeline.results()`` reads it too). When it is full, a producer that must not lose results
(``hold=True``: a WAIT pipeline in the server, or a local reader iterating ``results()``) waits
for room; any other drops the oldest entry, and the drop is counted. Nothing is lost silently.

The sink is bounded twice: in entries (``results_buffer_size``) and in bytes (``max_bytes``,
each entry weighed once, when it is put, by ``size_of``): a pipeline whose results are big
images holds fewer of them, never gigabytes. An entry bigger than ``max_bytes`` alone is
kept alone. :meth:`InMemoryBufferSink.consume` takes what fits in a byte budget too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["InMemoryBufferSink", "ResultSink", "SinkStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    buffered: int  # entries waiting now
    capacity: int
    received: int  # entries put (including those dropped)
    consumed: int  # entries taken by readers
    dropped: int  # oldest entries discarded to make room (never under hold)
    held_s: float  # time producers waited for room (backpressure)
    bytes: int = 0  # weight of the entries waiting now
    max_bytes: int | None = None


class ResultSink(Protocol):
    """What a pipeline puts its results into: this module's in-memory buffer, or a shared one
    (:class:`~framepipe.core.result_buffer.SharedResultBuffer`, drained by the manager)."""

    @property
    def capacity(self) -> int: ...

    def put(
        self, entry: Any, *, hold: bool = False, stop: threading.Event | None = None
    ) -> bool: ...

    def consume(self, max_entries: int = 1, max_bytes: int | None = None) -> list[Any]: ...

    def discard(self) -> int: ...

    def wait(self, timeout: float | None) -> bool: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...

    def statistics(self) -> SinkStatistics: ...


class InMemoryBufferSink(Generic[T]):
    """A bounded, thread-safe FIFO of results (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        *,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"results_buffer_size must be >= 1, got {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._bytes = 0
        self._sizes: deque[int] = deque()
        self._entries: deque[T] = deque()
        self._cond = threading.Condition()
        self._received = 0
        self._consumed = 0
        self._dropped = 0
        self._held_ns = 0
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    def _full(self, size: int) -> bool:
        """No room for one more entry of ``size`` bytes (an empty sink always has room)."""
        if not self._entries:
            return False
        if len(self._entries) >= self._capacity:
            return True
        return self._max_bytes is not None and self._bytes + size > self._max_bytes

    def _pop(self) -> T:
        self._bytes -= self._sizes.popleft()
        return self._entries.popleft()

    def put(self, entry: T, *, hold: bool = False, stop: threading.Event | None = None) -> bool:
        """Add ``entry``. Full: with ``hold``, wait for room (False if ``stop`` was set or the
        sink closed meanwhile: the entry was not added); else drop the oldest entries until it
        fits."""
        size = self._size_of(entry) if self._size_of is not None else 0
        with self._cond:
            if hold and self._full(size):
                started = time.monotonic_ns()
                while self._full(size) and not self._closed:
                    if stop is not None and stop.is_set():
                        break
                    self._cond.wait(0.1)
                self._held_ns += time.monotonic_ns() - started
                if self._full(size):
                    return False
            self._received += 1
            while self._full(size):
                self._pop()
                self._dropped += 1
            self._entries.append(entry)
            self._sizes.append(size)
            self._bytes += size
            self._cond.notify_all()
            return True

    def consume(self, max_entries: int = 1, max_bytes: int | None = None) -> list[T]:
        """Pop up to ``max_entries`` entries, oldest first (an empty list when there are none),
        and no more than fit in ``max_bytes`` — but always the first, whatever its size."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        with self._cond:
            taken: list[T] = []
            weight = 0
            while self._entries and len(taken) < max_entries:
                size = self._sizes[0]
                if taken and max_bytes is not None and weight + size > max_bytes:
                    break
                weight += size
                taken.append(self._pop())
            self._consumed += len(taken)
            if taken:
                self._cond.notify_all()
        return taken

    def discard(self) -> int:
        """Drop every buffered entry (counted as dropped): nobody will read them any more.
        Returns how many there were."""
        with self._cond:
            count = len(self._entries)
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0
            self._dropped += count
            self._cond.notify_all()
        return count

    def wait(self, timeout: float | None) -> bool:
        """Wait until an entry is buffered (True), the timeout passes or the sink is woken by
        :meth:`wake` (False)."""
        with self._cond:
            if self._entries:
                return True
            self._cond.wait(timeout)
            return bool(self._entries)

    def wake(self) -> None:
        """Wake every waiter (the producer stopped: a reader should look again)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """No producer waits any more (entries stay consumable)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def statistics(self) -> SinkStatistics:
        with self._cond:
            return SinkStatistics(
                buffered=len(self._entries),
                capacity=self._capacity,
                received=self._received,
                consumed=self._consumed,
                dropped=self._dropped,
                held_s=self._held_ns / 1e9,
                bytes=self._bytes,
                max_bytes=self._max_bytes,
            )
