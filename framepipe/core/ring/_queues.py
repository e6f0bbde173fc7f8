"""Descriptor queues, fan-out with backpressure, and leasing consumers over a FrameRing.

Public API (stable; other modules code against it)::

    DescriptorQueue.create(capacity: int, tag: str = "q") -> DescriptorQueue   # standalone SPSC
    DescriptorQueue.attach(name: str) -> DescriptorQueue
        .name, .capacity, .try_put(d) -> bool, .put(d, timeout=None) -> bool,
        .try_get() -> FrameDescriptor | None, .get(timeout=None) -> FrameDescriptor | None,
        .qsize(), .empty(), .full(), .close(), .unlink(), context manager

    FrameProducer(ring: FrameRing, strategy: BufferFillingStrategy | str = BufferFillingStrategy.WAIT, *,
                  reap_interval: float = 0.2)     # ONE producer per ring, used from one thread
        .acquire(timeout: float | None = None) -> int | None      # free slot index or None
        .writable(slot) -> np.ndarray                             # write the frame here
        .publish(slot, *, frame_id: int, source_id: int = 0, pts: int = 0,
                 capture_ns: int | None = None, timeout: float | None = None) -> FrameDescriptor
        .abandon(slot) -> None
        .send(frame: np.ndarray, *, frame_id, source_id=0, pts=0, capture_ns=None,
              timeout=None) -> FrameDescriptor | None             # acquire + copy + publish
        .reap() -> int                                            # reclaim dead/leaving consumers
        .set_consumer_strategy(index, strategy | None)            # per-consumer override
        (publish(..., consumers=[indices]) hands the frame only to those consumers)
        .statistics() -> ProducerStatistics
        .close()                                                  # end of stream; idempotent

    FrameConsumer(ring: FrameRing | str, *, eager: bool = False, index: int | None = None)
                                  # a name: attach and own it; index: adopt a consumer that
                                  # another process registered for this one (register_consumer(pid))
        .index -> int, .ring -> FrameRing
        .lease(timeout: float | None = None) -> Lease | None       # None: timeout or stream over
        .release(lease) -> None, .release_all() -> int
        .finished -> bool                                          # producer closed and drained
        .last_wake_ns -> int                                       # last semaphore wake-up
        .statistics() -> ConsumerStatistics
        .close()                                                   # releases, unregisters
    Lease: .descriptor, .array (read-only view, no copy), .slot, .frame_id, .release(),
           context manager (releases on exit)

    ProducerStatistics, ConsumerDeliveryStatistics, ConsumerStatistics   (frozen dataclasses)

How a frame moves: the producer acquires a free slot (all lease bytes 0, even seq), writes the
pixels in place, publishes (seq even again, header stamped), then for every ACTIVE consumer sets
that consumer's lease byte and hands it the descriptor. The consumer reads the slot in place and
releases (clears its byte). A slot is reused only when every byte is clear.

Backpressure — the filling strategy (what happens when a consumer is slower than the producer):

* ``WAIT``: the producer blocks (GIL released, sleeping on a semaphore) until the consumer's
  queue has room and until a slot is free; every frame reaches every consumer. ``timeout``
  bounds the wait; a frame that could not be handed to a consumer in time is counted as
  ``dropped_timeout`` for that consumer.
* ``DROP_LATEST``: a consumer whose queue is full does not get the new frame
  (``dropped_queue_full``); with no free slot, ``acquire`` returns None (``dropped_no_slot``).
* ``DROP_OLDEST``: each consumer has a one-deep "latest" mailbox; the producer swaps the new
  frame in atomically and, if the consumer never took the previous one, clears that lease
  and counts it (``dropped_replaced``). The consumer always gets the freshest frame and the
  producer never pops from a queue it does not consume (single-producer rules hold).
* ``ADAPTIVE_DROP_OLDEST`` / ``ADAPTIVE_DROP_LATEST`` behave as their base strategy here;
  the adaptive policy (when to start dropping) belongs to the sources layer.

A consumer with ``eager=True`` drains its queue on each ``lease`` and keeps only the newest
descriptor, releasing the older ones (counted as ``skipped``) - the EAGER consumption strategy.

Dead consumers: the producer checks the pids of its consumers every ``reap_interval`` s and
on every wait slice; a dead (or zombie) consumer's queue and mailbox are emptied and its
leases released (``FrameRing.reclaim_consumer``), so the ring keeps flowing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from framepipe.core._lifecycle import Closing, OwnedResource
from framepipe.core.processes import pid_alive
from framepipe.core.ring._ring import (
    _C_DELIVERED,
    _C_DROPPED,
    ConsumerState,
    FrameDescriptor,
    FrameRing,
    StaleFrameError,
)
from framepipe.core.shm import Segment
from framepipe.ext import _spsc
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from framepipe.protocol.strategies import BufferFillingStrategy

__all__ = [
    "ConsumerDeliveryStatistics",
    "ConsumerStatistics",
    "DescriptorQueue",
    "FrameConsumer",
    "FrameProducer",
    "Lease",
    "ProducerStatistics",
]

_WAIT_SLICE_S = 0.05  # longest sleep before the producer re-checks consumer liveness
_IDLE_SLICE_S = 0.5  # longest sleep before a consumer re-checks that the producer lives


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


# -- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerDeliveryStatistics:
    """What the producer did for one consumer."""

    index: int
    pid: int
    delivered: int
    dropped: int
    queued: int  # descriptors waiting in its queue (+1 if its mailbox is full)
    leases: int  # slots it holds now


@dataclass(frozen=True, slots=True)
class ProducerStatistics:
    strategy: BufferFillingStrategy
    published: int  # frames published into the ring
    delivered: int  # descriptors handed to consumers (sum over consumers)
    dropped_queue_full: int  # DROP_LATEST: not given to a consumer whose queue was full
    dropped_replaced: int  # DROP_OLDEST: replaced in the mailbox before the consumer took it
    dropped_no_slot: int  # DROP_*: no free slot, frame not produced (acquire returned None)
    dropped_timeout: int  # WAIT: no room for a consumer within the timeout
    wait_seconds: float  # time blocked waiting for room or a slot
    consumers_reclaimed: int  # dead or leaving consumers whose entries were freed
    leases_reclaimed: int  # leases released on their behalf
    consumers: tuple[ConsumerDeliveryStatistics, ...]

    @property
    def dropped(self) -> int:
        return (
            self.dropped_queue_full
            + self.dropped_replaced
            + self.dropped_no_slot
            + self.dropped_timeout
        )


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    index: int
    received: int  # descriptors taken from the queue / mailbox
    released: int
    skipped: int  # eager consumption: older frames released unread
    stale: int  # descriptors whose slot had been reused (should stay 0)
    dropped: int  # frames the producer dropped for this consumer
    held: int  # leases held now


# -- standalone descriptor queue -----------------------------------------------------------------

_Q_MAGIC = b"FPQUEUE1"
_Q_PRODUCER_FLAG = 64
_Q_REGION = 128


class DescriptorQueue(OwnedResource):
    """A standalone SPSC queue of FrameDescriptors in its own segment (one producer process,
    one consumer process). Rings embed one such queue per consumer; use this one for other
    descriptor streams."""

    def __init__(self, segment: Segment, capacity: int, *, initialise: bool) -> None:
        self.segment = segment
        self.owner = segment.owner
        self.name = segment.name
        self.capacity = capacity
        self._closed = False
        self._unlinked = False
        self._view = _spsc.SharedView(segment.buf)
        self._sems: list[_spsc.NamedSemaphore] = []
        try:
            csem = _spsc.NamedSemaphore(f"{self.name}-c", initialise)
            self._sems.append(csem)
            psem = _spsc.NamedSemaphore(f"{self.name}-p", initialise)
            self._sems.append(psem)
        except BaseException:
            for sem in self._sems:
                sem.close()
                if initialise:
                    _spsc.NamedSemaphore.unlink(sem.name)
            self._view.release()
            raise
        self._cw = _spsc.Waker(self._view, _Q_REGION + 128, csem)
        self._pw = _spsc.Waker(self._view, _Q_PRODUCER_FLAG, psem)
        self._q = _spsc.SpscQueue(self._view, _Q_REGION, capacity, self._cw, self._pw, initialise)

    @classmethod
    def create(cls, capacity: int, tag: str = "q") -> DescriptorQueue:
        size = _Q_REGION + int(_spsc.queue_region_size(capacity))
        segment = Segment.create(size, tag)
        try:
            segment.buf[8:12] = capacity.to_bytes(4, "little")
            queue = cls(segment, capacity, initialise=True)
            segment.buf[0:8] = _Q_MAGIC
            return queue
        except BaseException:
            segment.close()
            segment.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> DescriptorQueue:
        segment = Segment.attach(name)
        try:
            if bytes(segment.buf[0:8]) != _Q_MAGIC:
                raise OperationError(f"segment {name} is not a framepipe DescriptorQueue")
            capacity = int.from_bytes(segment.buf[8:12], "little")
            return cls(segment, capacity, initialise=False)
        except BaseException:
            segment.close()
            raise

    def try_put(self, d: FrameDescriptor) -> bool:
        return bool(self._q.try_put(*d))

    def put(self, d: FrameDescriptor, timeout: float | None = None) -> bool:
        return bool(self._q.put(*d, timeout=timeout))

    def try_get(self) -> FrameDescriptor | None:
        t = self._q.try_get()
        return None if t is None else FrameDescriptor(*t[:7])

    def get(self, timeout: float | None = None) -> FrameDescriptor | None:
        deadline = _deadline(timeout)
        while True:
            t = self._q.get(_remaining(deadline))
            if t is not None:
                return FrameDescriptor(*t[:7])
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                return None

    def qsize(self) -> int:
        return int(self._q.qsize())

    def empty(self) -> bool:
        return bool(self._q.empty())

    def full(self) -> bool:
        return bool(self._q.full())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.close()
        self._cw.close()
        self._pw.close()
        self._view.release()
        for sem in self._sems:
            sem.close()
        self.segment.close()

    def unlink(self) -> None:
        if self._unlinked:
            return
        self._unlinked = True
        self.segment.unlink()
        for suffix in ("-c", "-p"):
            with contextlib.suppress(OSError):
                _spsc.NamedSemaphore.unlink(self.name + suffix)


# -- producer ------------------------------------------------------------------------------------


_C_MODES = {
    BufferFillingStrategy.WAIT: _spsc.MODE_WAIT,
    BufferFillingStrategy.DROP_LATEST: _spsc.MODE_DROP_LATEST,
    BufferFillingStrategy.DROP_OLDEST: _spsc.MODE_MAILBOX,
}


class FrameProducer(Closing):
    """The single writer of a FrameRing: fans every frame out to the ring's live consumers."""

    def __init__(
        self,
        ring: FrameRing,
        strategy: BufferFillingStrategy | str = BufferFillingStrategy.WAIT,
        *,
        reap_interval: float = 0.2,
    ) -> None:
        self.ring = ring
        self.strategy = BufferFillingStrategy.parse(strategy)
        self._mode = self.strategy.base
        self._reap_interval = reap_interval
        self._next_reap = 0.0
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._dropped_queue_full = 0
        self._dropped_replaced = 0
        self._dropped_no_slot = 0
        self._dropped_timeout = 0
        self._wait_ns = 0
        self._consumers_reclaimed = 0
        self._leases_reclaimed = 0
        self._reclaimed_during_wait: set[int] = set()
        self._queues = ring._queues
        self._core = ring._core
        self._cmode = _C_MODES[self._mode]
        self._view = ring._view
        self._centry = [ring._centry(i) for i in range(ring.max_consumers)]
        # fan-out of one source to consumers with different strategies (set_consumer_strategy)
        self._modes = bytearray([self._cmode]) * ring.max_consumers
        self._all_mask = (1 << min(ring.max_consumers, 64)) - 1
        self._uniform = True
        self._any_wait = self._mode is BufferFillingStrategy.WAIT
        ring._set_producer(os.getpid())

    def set_consumer_strategy(
        self, index: int, strategy: BufferFillingStrategy | str | None
    ) -> None:
        """Give consumer ``index`` its own strategy (consumers of one source with different
        needs); None returns it to the producer's. ``acquire`` waits for a slot when any
        consumer's strategy is WAIT."""
        self.ring._centry(index)  # range check
        base = self._mode if strategy is None else BufferFillingStrategy.parse(strategy).base
        self._modes[index] = _C_MODES[base]
        self._uniform = all(m == self._cmode for m in self._modes)
        self._any_wait = any(m == _spsc.MODE_WAIT for m in self._modes)

    # -- consumers ----------------------------------------------------------------------------

    def reap(self) -> int:
        """Reclaim consumers that left or died (their queues emptied, leases released)."""
        self._next_reap = time.monotonic() + self._reap_interval
        reclaimed = 0
        ring = self.ring
        for index in range(ring.max_consumers):
            state = ring.consumer_state(index)
            if state == ConsumerState.LEAVING or (
                state == ConsumerState.ACTIVE and not pid_alive(ring.consumer_pid(index))
            ):
                self._leases_reclaimed += ring.reclaim_consumer(index)
                self._consumers_reclaimed += 1
                self._reclaimed_during_wait.add(index)
                reclaimed += 1
        return reclaimed

    def _bump(self, index: int, field: int) -> None:
        off = self._centry[index] + field
        self._view.store_u64(off, self._view.load_u64(off) + 1)

    # -- producing ----------------------------------------------------------------------------

    def acquire(
        self, timeout: float | None = None, *, on_wait: Callable[[], None] | None = None
    ) -> int | None:
        """A free slot to write into. Under WAIT, waits up to ``timeout`` (None = forever)
        while reclaiming dead consumers; under the DROP strategies never waits: None means
        the frame is dropped (counted as ``dropped_no_slot``). ``on_wait`` is called between
        wait slices (a decoder beats its heartbeat and reads its commands there; an exception
        it raises ends the wait)."""
        ring = self.ring
        slot = ring.try_acquire()
        if slot is not None:
            return slot
        self.reap()
        slot = ring.try_acquire()
        if slot is not None:
            return slot
        if not self._any_wait:
            self._dropped_no_slot += 1
            return None
        deadline = _deadline(timeout)
        started = time.monotonic_ns()
        try:
            while True:
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return None
                step = _WAIT_SLICE_S if remaining is None else min(remaining, _WAIT_SLICE_S)
                slot = ring.acquire(step)
                if slot is not None:
                    return slot
                self.reap()
                if on_wait is not None:
                    on_wait()
        finally:
            self._wait_ns += time.monotonic_ns() - started

    def writable(self, slot: int) -> NDArray[Any]:
        return self.ring.writable(slot)

    def abandon(self, slot: int) -> None:
        self.ring.abandon(slot)

    def publish(
        self,
        slot: int,
        *,
        frame_id: int,
        source_id: int = 0,
        pts: int = 0,
        capture_ns: int | None = None,
        timeout: float | None = None,
        consumers: Iterable[int] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> FrameDescriptor:
        """Publish the frame written into ``slot`` and hand it to every live consumer under
        the strategy. ``timeout`` bounds the total WAIT time for this frame. ``consumers``
        (optional) restricts delivery to those consumer indices. ``on_wait``: as for
        :meth:`acquire`."""
        if self._closed:
            raise OperationError(f"producer of ring {self.ring.name} is closed")
        if time.monotonic() >= self._next_reap:
            self.reap()
        if capture_ns is None:
            capture_ns = time.time_ns()
        if consumers is None and self._uniform:
            result = self._core.publish(slot, frame_id, source_id, pts, capture_ns, self._cmode)
        else:
            mask = self._all_mask
            if consumers is not None:
                mask = 0
                for index in consumers:
                    mask |= 1 << index
            result = self._core.publish_each(
                slot, frame_id, source_id, pts, capture_ns, self._modes, mask
            )
        seq, publish_ns, delivered, dropped_full, replaced, wait_mask = result
        if seq < 0:
            raise OperationError(
                f"slot {slot} of ring {self.ring.name} was not acquired for writing"
            )
        self._published += 1
        self._delivered += delivered
        self._dropped_queue_full += dropped_full
        self._dropped_replaced += replaced
        d = FrameDescriptor(slot, seq, frame_id, source_id, pts, capture_ns, publish_ns)
        if wait_mask:
            self._wait_for(wait_mask, d, timeout, on_wait)
        return d

    def _wait_for(
        self,
        wait_mask: int,
        d: FrameDescriptor,
        timeout: float | None,
        on_wait: Callable[[], None] | None,
    ) -> None:
        """WAIT: hand ``d`` to the consumers whose queues were full (their leases are already
        granted), blocking until each has room, the timeout passes, or it goes away."""
        deadline = _deadline(timeout)
        self._reclaimed_during_wait.clear()
        for index in range(self.ring.max_consumers):
            if not (wait_mask >> index) & 1:
                continue
            if self._wait_put(index, d, _remaining(deadline), on_wait):
                self._delivered += 1
                self._bump(index, _C_DELIVERED)
                continue
            if index in self._reclaimed_during_wait:
                continue  # gone: its leases were released, no drop to count
            # never seen by the consumer: taking the grant back is safe
            self.ring.release(index, d.slot)
            self._dropped_timeout += 1
            self._bump(index, _C_DROPPED)

    def _wait_put(
        self,
        index: int,
        d: FrameDescriptor,
        timeout: float | None,
        on_wait: Callable[[], None] | None,
    ) -> bool:
        """Block (GIL released) until consumer ``index`` has room; False on timeout or if
        the consumer went away (it is reclaimed then)."""
        queue = self._queues[index]
        deadline = _deadline(timeout)
        started = time.monotonic_ns()
        try:
            while True:
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return False
                if index in self._reclaimed_during_wait:
                    # reclaimed (its grant is gone); the index may already serve a new consumer
                    return False
                step = _WAIT_SLICE_S if remaining is None else min(remaining, _WAIT_SLICE_S)
                if queue.put(*d, timeout=step):
                    return True
                self.reap()
                if on_wait is not None:
                    on_wait()
        finally:
            self._wait_ns += time.monotonic_ns() - started

    def send(
        self,
        frame: NDArray[Any],
        *,
        frame_id: int,
        source_id: int = 0,
        pts: int = 0,
        capture_ns: int | None = None,
        timeout: float | None = None,
    ) -> FrameDescriptor | None:
        """Copy ``frame`` into a free slot and publish it (None: dropped, or WAIT timed out)."""
        if frame.shape != self.ring.shape:
            raise InvalidPayloadError(
                f"frame shape {frame.shape} does not match ring shape {self.ring.shape}"
            )
        slot = self.acquire(timeout)
        if slot is None:
            return None
        try:
            np.copyto(self.ring.writable(slot), frame, casting="same_kind")
        except BaseException:
            self.ring.abandon(slot)
            raise
        return self.publish(
            slot,
            frame_id=frame_id,
            source_id=source_id,
            pts=pts,
            capture_ns=capture_ns,
            timeout=timeout,
        )

    # -- status -------------------------------------------------------------------------------

    def statistics(self) -> ProducerStatistics:
        ring = self.ring
        per = []
        for info in ring.consumers():
            if info.state != ConsumerState.ACTIVE:
                continue
            queue = self._queues[info.index]
            per.append(
                ConsumerDeliveryStatistics(
                    index=info.index,
                    pid=info.pid,
                    delivered=info.delivered,
                    dropped=info.dropped,
                    queued=int(queue.qsize()) + int(queue.has_mailbox()),
                    leases=len(ring.leases_of(info.index)),
                )
            )
        return ProducerStatistics(
            strategy=self.strategy,
            published=self._published,
            delivered=self._delivered,
            dropped_queue_full=self._dropped_queue_full,
            dropped_replaced=self._dropped_replaced,
            dropped_no_slot=self._dropped_no_slot,
            dropped_timeout=self._dropped_timeout,
            wait_seconds=self._wait_ns / 1e9,
            consumers_reclaimed=self._consumers_reclaimed,
            leases_reclaimed=self._leases_reclaimed,
            consumers=tuple(per),
        )

    def close(self) -> None:
        """End of stream: consumers drain what is queued, then ``lease`` returns None."""
        if self._closed:
            return
        self._closed = True
        if not self.ring.closed:
            self.ring._mark_producer_done()


# -- consumer ------------------------------------------------------------------------------------


class Lease:
    """One consumer's hold on one published frame; the slot is not reused until released."""

    __slots__ = ("_consumer", "array", "descriptor", "released")

    def __init__(
        self, consumer: FrameConsumer, descriptor: FrameDescriptor, array: NDArray[Any]
    ) -> None:
        self._consumer = consumer
        self.descriptor = descriptor
        self.array = array
        self.released = False

    @property
    def slot(self) -> int:
        return self.descriptor.slot

    @property
    def frame_id(self) -> int:
        return self.descriptor.frame_id

    def release(self) -> None:
        """Give the slot back (idempotent). ``array`` must not be used afterwards."""
        self._consumer.release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Lease slot={self.slot} frame_id={self.frame_id} {state}>"


class FrameConsumer(Closing):
    """One reader of a FrameRing (one per process and ring): leases frames in order."""

    def __init__(
        self, ring: FrameRing | str, *, eager: bool = False, index: int | None = None
    ) -> None:
        self._owns_ring = isinstance(ring, str)
        self.ring = FrameRing.attach(ring) if isinstance(ring, str) else ring
        self.eager = eager
        try:
            self.index = self.ring.register_consumer() if index is None else self._adopt(index)
        except BaseException:
            if self._owns_ring:
                self.ring.close()
            raise
        self._queue = self.ring._queues[self.index]
        self._view = self.ring._view
        self._arrays = self.ring._readonly
        self._held: dict[int, Lease] = {}
        self._released = 0
        self._skipped = 0
        self._stale = 0
        self._closed = False

    def _adopt(self, index: int) -> int:
        """Take over consumer ``index``, registered for this process by another one (a
        process that hands out consumers of a ring it does not read, e.g. a shared decoder's
        owner)."""
        info = self.ring.consumer_info(index)
        if info.state is not ConsumerState.ACTIVE or info.pid != os.getpid():
            raise OperationError(
                f"consumer {index} of ring {self.ring.name} is not registered for this process "
                f"(state {info.state.name}, pid {info.pid})"
            )
        return index

    def _drain_older(self, d: FrameDescriptor) -> FrameDescriptor:
        """EAGER: keep the newest descriptor, release the older ones unread."""
        queue = self._queue
        while (newer := queue.take(0)) is not None:
            self._skipped += 1
            self.ring.release(self.index, d.slot)
            self._released += 1
            d = newer
        return d

    def lease(self, timeout: float | None = None) -> Lease | None:
        """The next frame (eager: the newest one), waiting up to ``timeout`` s (None = until
        one comes or the stream ends). None on timeout or when the producer is finished."""
        if self._closed:
            raise OperationError("consumer is closed")
        queue = self._queue
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        step = _IDLE_SLICE_S if timeout is None else min(max(0.0, timeout), _IDLE_SLICE_S)
        while True:
            d: FrameDescriptor | None = queue.take(step)
            if d is not None:
                # the hot path right after a wake-up: keep it short
                if self.eager:
                    d = self._drain_older(d)
                slot = d[0]
                if queue.last_flags & 2:  # slot reused under us: impossible while leased
                    self._stale += 1
                    self.ring.release(self.index, slot)
                    continue
                lease = Lease(self, d, self._arrays[slot])
                self._held[slot] = lease
                return lease
            if self.finished:
                return None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                step = min(remaining, _IDLE_SLICE_S)

    @property
    def last_wake_ns(self) -> int:
        """CLOCK_MONOTONIC ns at which ``lease`` last woke from sleeping on the semaphore
        (0: never slept) - for latency measurements."""
        return int(self._queue.last_wake_ns)

    @property
    def finished(self) -> bool:
        """The producer closed (or died) and nothing is left for this consumer."""
        ring = self.ring
        if self._queue.qsize() or self._queue.has_mailbox():
            return False
        if ring.producer_done:
            return True
        pid = ring.producer_pid
        return pid != 0 and not pid_alive(pid)

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        self._held.pop(lease.slot, None)
        if not self._closed:
            self.ring.release(self.index, lease.slot)
            self._released += 1

    def release_all(self) -> int:
        for lease in list(self._held.values()):
            lease.released = True
        self._held.clear()
        n = self.ring.release_all(self.index)
        self._released += n
        return n

    def statistics(self) -> ConsumerStatistics:
        info = self.ring.consumer_info(self.index)
        return ConsumerStatistics(
            index=self.index,
            received=int(self._queue.taken),
            released=self._released,
            skipped=self._skipped,
            stale=self._stale,
            dropped=info.dropped,
            held=len(self._held),
        )

    def close(self) -> None:
        """Release every lease and leave the ring (idempotent)."""
        if self._closed:
            return
        if not self.ring.closed:
            while self._queue.try_get() is not None:  # what was handed to us: give it back
                pass
            self.release_all()
            self.ring.unregister_consumer(self.index)
        self._closed = True
        if self._owns_ring:
            self.ring.close()


__all__ += ["StaleFrameError"]
