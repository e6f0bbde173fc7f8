"""Collecting one batch from several sources: the latest frame of each, within a timeout.

One source: the collector blocks on it directly (no extra thread, no extra hop). Several
sources: a small reader thread per source keeps a one-frame mailbox filled (LAZY: the next
frame, and it waits until the batch took it; EAGER: always the newest, older ones released
and counted), and the collector waits until every active source has a frame or
``batch_collection_timeout`` has passed since the first one arrived. A source without a
frame in the batch gives ``None`` in its place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from framepipe.core.pixels import FrameImage
from framepipe.core.ring import FrameRef
from framepipe.core.sources.entities import BufferConsumptionStrategy, FrameMetadata

_POLL_S = 0.05


@dataclass
class LeasedFrame:
    """A frame read in place from its ring slot; hand it back with ``release()`` after use."""

    image: FrameImage  # BGR array, or a 4:2:0 frame (as_bgr() makes BGR of it on demand)
    metadata: FrameMetadata
    slot: int
    seq: int
    lease: Any = None  # the data plane's Lease behind it
    ref: FrameRef | None = None  # where it is, for another process (an inference service)


class FrameSource(Protocol):
    """What the collector needs of a source subscription."""

    source_id: int

    @property
    def consumption_strategy(self) -> BufferConsumptionStrategy: ...

    @property
    def exhausted(self) -> bool:
        """True when the source is finished (ENDED/ERROR/terminated) and nothing is queued."""
        ...

    @property
    def delivering(self) -> bool:
        """True when frames can be expected now (running; not paused, muted or reconnecting)."""
        ...

    def take(self, timeout: float) -> LeasedFrame | None: ...

    def release(self, frame: LeasedFrame) -> None: ...


class _Reader(threading.Thread):
    def __init__(
        self, source: FrameSource, wake: threading.Condition, stop: threading.Event
    ) -> None:
        super().__init__(name=f"framepipe-mux-{source.source_id}", daemon=True)
        self.source = source
        self.mailbox: LeasedFrame | None = None
        self._wake = wake
        self._halt = stop
        self.eager = source.consumption_strategy is BufferConsumptionStrategy.EAGER

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.eager:
                with self._wake:
                    while self.mailbox is not None and not self._halt.is_set():
                        self._wake.wait(_POLL_S)
            if self._halt.is_set():
                break
            frame = self.source.take(_POLL_S)
            if frame is None:
                if self.source.exhausted:
                    with self._wake:
                        self._wake.notify_all()
                    if self.mailbox is None:
                        return
                continue
            with self._wake:
                older, self.mailbox = self.mailbox, frame
                self._wake.notify_all()
            if older is not None:
                self.source.release(older)

    def take_mailbox(self) -> LeasedFrame | None:
        frame, self.mailbox = self.mailbox, None
        return frame


class BatchCollector:
    """Yields batches (one entry per source, None where a source had no frame)."""

    def __init__(
        self, sources: Sequence[FrameSource], batch_collection_timeout: float | None
    ) -> None:
        self._sources = list(sources)
        self._timeout = batch_collection_timeout
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._readers: list[_Reader] = []
        if len(self._sources) > 1:
            self._readers = [_Reader(s, self._wake, self._stop) for s in self._sources]
            for reader in self._readers:
                reader.start()

    @property
    def exhausted(self) -> bool:
        if self._readers:
            return all(r.source.exhausted and r.mailbox is None for r in self._readers)
        return all(s.exhausted for s in self._sources)

    def collect(self, stop: threading.Event) -> list[LeasedFrame | None] | None:
        """The next batch; None once every source is exhausted or ``stop`` is set."""
        if not self._readers:
            source = self._sources[0]
            while not stop.is_set():
                frame = source.take(_POLL_S)
                if frame is not None:
                    return [frame]
                if source.exhausted:
                    return None
            return None
        first_at: float | None = None
        with self._wake:
            while not stop.is_set():
                ready = [r.mailbox is not None for r in self._readers]
                if any(ready) and first_at is None:
                    first_at = time.monotonic()
                waiting_for = [
                    r
                    for r, has in zip(self._readers, ready, strict=True)
                    if not has and r.source.delivering
                ]
                if any(ready) and not waiting_for:
                    break
                if first_at is not None and self._timeout is not None:
                    left = first_at + self._timeout - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(min(left, _POLL_S))
                    continue
                if not any(ready) and self.exhausted:
                    return None
                self._wake.wait(_POLL_S)
            if stop.is_set():
                return None
            batch = [r.take_mailbox() for r in self._readers]
            self._wake.notify_all()
        return batch

    def close(self) -> None:
        """Stop the readers and release the frames still in their mailboxes."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for reader in self._readers:
            reader.join(timeout=2.0)
            frame = reader.take_mailbox()
            if frame is not None:
                reader.source.release(frame)
