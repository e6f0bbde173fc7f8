"""The bounded result sink: where a pipeline's results wait for whoever reads them.

:class:`InMemoryBufferSink` is the reference's bounded buffer that clients drain with
``consume_result`` — one entry per processing step — and the only result buffer a pipeline has
(``Pipeline.results()`` reads it too). When it is full, a producer that must not lose results
(``hold=True``: a WAIT pipeline in the server, or a local reader iterating ``results()``) waits
for room; any other drops the oldest entry, and the drop is counted. Nothing is lost silently.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["InMemoryBufferSink", "SinkStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    buffered: int  # entries waiting now
    capacity: int
    received: int  # entries put (including those dropped)
    consumed: int  # entries taken by readers
    dropped: int  # oldest entries discarded to make room (never under hold)
    held_s: float  # time producers waited for room (backpressure)


class InMemoryBufferSink(Generic[T]):
    """A bounded, thread-safe FIFO of results (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"results_buffer_size must be >= 1, got {capacity}")
        self._capacity = capacity
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

    def put(self, entry: T, *, hold: bool = False, stop: threading.Event | None = None) -> bool:
        """Add ``entry``. Full: with ``hold``, wait for room (False if ``stop`` was set or the
        sink closed meanwhile: the entry was not added); else drop the oldest entry."""
        with self._cond:
            if hold and len(self._entries) >= self._capacity:
                started = time.monotonic_ns()
                while len(self._entries) >= self._capacity and not self._closed:
                    if stop is not None and stop.is_set():
                        break
                    self._cond.wait(0.1)
                self._held_ns += time.monotonic_ns() - started
                if len(self._entries) >= self._capacity:
                    return False
            self._received += 1
            if len(self._entries) >= self._capacity:
                self._entries.popleft()
                self._dropped += 1
            self._entries.append(entry)
            self._cond.notify_all()
            return True

    def consume(self, max_entries: int = 1) -> list[T]:
        """Pop up to ``max_entries`` entries, oldest first (an empty list when there are none)."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        with self._cond:
            count = min(max_entries, len(self._entries))
            taken = [self._entries.popleft() for _ in range(count)]
            self._consumed += count
            if count:
                self._cond.notify_all()
        return taken

    def discard(self) -> int:
        """Drop every buffered entry (counted as dropped): nobody will read them any more.
        Returns how many there were."""
        with self._cond:
            count = len(self._entries)
            self._entries.clear()
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
            )
