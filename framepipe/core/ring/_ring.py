"""FrameRing: fixed-size frame slots in one shared-memory segment, with per-consumer leases.

Public API (stable; other modules code against it)::

    FrameDescriptor(slot, seq, frame_id, source_id, pts, capture_ns, publish_ns)  # NamedTuple
    SlotHeader(seq, frame_id, source_id, pts, capture_ns, publish_ns)            # NamedTuple
    ConsumerState: FREE | ACTIVE | LEAVING | REGISTERING                                      # IntEnum
    ConsumerInfo(index, state, pid, received, delivered, dropped)                # frozen dataclass

    FrameRing.create(slots: int, shape: Sequence[int], dtype: DTypeLike = np.uint8,
                     max_consumers: int = 4, *, queue_depth: int = 2, tag: str = "ring",
                     owner_pid: int | None = None,
                     resident_slots: int | None = None,
                     layout: FrameLayout | None = None) -> FrameRing
    FrameRing.attach(name: str) -> FrameRing
    FrameRing.required_slots(queue_depth: int, consumers: int, leases_in_flight: int = 1) -> int
    FrameRing.segment_size(slots, shape, dtype=np.uint8, max_consumers=4, queue_depth=2) -> int
    FrameRing.resident_size(slots, shape, dtype=np.uint8, max_consumers=4, queue_depth=2,
                            resident_slots=1) -> int   # backed at creation (metadata + floor)

    ring.name, ring.slots, ring.shape, ring.dtype, ring.max_consumers, ring.queue_depth,
    ring.slot_nbytes, ring.nbytes, ring.owner, ring.segment
    ring.layout -> FrameLayout | None          # pixel format, size, colour range and matrix
                                               # of a video frame ring (None: plain arrays)

    # producer side (ONE producer process per ring)
    ring.try_acquire() -> int | None          # a free slot, now marked "being written"
    ring.acquire(timeout: float | None = None) -> int | None
    ring.writable(slot) -> np.ndarray         # writable view of the slot, no copy
    ring.publish(slot, *, frame_id: int, source_id: int = 0, pts: int = 0,
                 capture_ns: int | None = None) -> FrameDescriptor
    ring.abandon(slot) -> None                # give an acquired slot back unpublished
    ring.grant(consumer, slot) -> None        # hand a lease to a consumer (before enqueueing)

    # consumer side / anyone
    ring.view(descriptor: FrameDescriptor) -> np.ndarray   # read-only view; raises StaleFrameError
    ring.is_current(descriptor) -> bool       # slot still holds this frame (seq unchanged)
    ring.header(slot) -> SlotHeader
    ring.release(consumer, slot) -> bool      # True if the lease was held
    ring.release_all(consumer) -> int         # after a crash: exactly that consumer's leases
    ring.lease_count(slot) -> int             # the slot's refcount (sum of lease bytes)
    ring.leases_of(consumer) -> list[int]
    ring.free_slots() -> int
    ring.resident_slots() -> int              # slots this process knows are backed by pages
    ring.resident_bytes() -> int              # the segment's pages now (all processes)
    ring.set_residency(idle_s=..., growth=...)  # producer side: punch-out delay, RAM budget
    ring.trim(now=None) -> int                # producer side: punch out idle slots now
    ring.trim_if_due(now=None) -> int         # the same, at most about once a second

    # consumer table
    ring.register_consumer(pid: int | None = None) -> int      # index; OperationError when full
    ring.unregister_consumer(index) -> None   # consumer leaves; the producer reclaims the entry
    ring.consumer_info(index) -> ConsumerInfo
    ring.consumers() -> list[ConsumerInfo]
    ring.consumer_state(index) -> ConsumerState, ring.consumer_pid(index) -> int
    ring.reclaim_consumer(index) -> int       # producer side: empty its queue, free its leases
    ring.published -> int, ring.producer_done -> bool, ring.producer_pid -> int

    ring.close() / ring.unlink()              # idempotent; `with` closes (and unlinks if owner)

Slot lifecycle (docs/ARCHITECTURE.md, "Slot lifecycle"): a slot is free (no lease byte set, even
seq), being written (odd seq: ``acquire`` .. ``publish``), published (even seq), or leased (some
lease byte set). Leases live in a table with one byte per (slot, consumer); only the producer
sets a byte (before it hands the descriptor over) and only the consumer - or whoever reclaims a
dead consumer - clears it. No shared read-modify-write refcount exists, so a dead consumer's
leases are released exactly by zeroing its column (``release_all``). A slot is never rewritten
while any byte is set. Each consumer index also owns an SPSC descriptor queue and a one-deep
"latest" mailbox inside the segment (see ``_queues``).

Size a ring with :meth:`FrameRing.required_slots`: queue depth x consumers + leases in flight
+ 1, so that under WAIT the writer always finds a free slot.

Residency (docs/ARCHITECTURE.md, "Resident memory"): the slot count is a bound, not a cost. The
segment is sparse: at creation only the metadata and the first ``resident_slots`` slots are
reserved (posix_fallocate), nothing else is touched. The producer takes the lowest-numbered
free slot, so a slot just released is the next one written, the slots in use stay a warm
prefix and the pages resident are the frames in flight at their peak (most-recently-freed
first, as far as the producer can tell: it does not see releases, only free slots). When
that prefix must grow, the producer reserves the new slot's pages first - taking the bytes
from the RAM budget's :class:`~framepipe.core.growth.GrowthAccount` when its manager keeps
one - so a full /dev/shm or a refused grant is "no free slot" (backpressure: WAIT waits, a
DROP strategy drops and counts), never a SIGBUS. A free slot above the first
``resident_slots`` that nobody acquired for ``idle_s`` is punched out (MADV_REMOVE) and its
bytes go back to the budget. Only free slots are punched and only leased or being-written
slots are read or written, so no process touches a hole.

Segment layout: a 4 KiB header, the consumer table (64 B per consumer), the lease table
(``slots x lease_stride`` bytes), slot headers (64 B each), the consumer queues, and the
page-aligned slot data. Named semaphores ``<name>-p`` (producer wake-up) and ``<name>-c<i>``
(consumer i wake-up) belong to the ring and are unlinked with it.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from framepipe.core._lifecycle import OwnedResource
from framepipe.core.growth import GrowthAccount
from framepipe.core.pixels import ColourMatrix, ColourRange, FrameLayout, PixelFormat
from framepipe.core.shm import Segment
from framepipe.ext import _spsc
from framepipe.protocol.errors import FramepipeError, OperationError, ShmExhaustedError

__all__ = [
    "ConsumerInfo",
    "ConsumerState",
    "FrameDescriptor",
    "FrameRef",
    "FrameRing",
    "SlotHeader",
    "StaleFrameError",
]

_MAGIC = b"FPRING01"
_HEADER_SIZE = 4096
_MAX_NDIM = 8
_MAX_SLOTS = 0xFFFF
_MAX_CONSUMERS = 64
_CACHE_LINE = 64
_PAGE = 4096
#: A free slot nobody acquired for this long is punched out (its pages given back).
IDLE_PUNCH_S = 5.0

# header offsets
_H_VERSION = 8
_H_SLOTS = 12
_H_MAX_CONSUMERS = 16
_H_QUEUE_DEPTH = 20
_H_LEASE_STRIDE = 24
_H_NDIM = 28
_H_SHAPE = 32  # 8 x int64
_H_DTYPE = 96  # 16 bytes, numpy dtype.str
_H_SLOT_NBYTES = 112
_H_SLOT_STRIDE = 120
_H_CONSUMERS_OFF = 128
_H_LEASES_OFF = 136
_H_HEADERS_OFF = 144
_H_QUEUES_OFF = 152
_H_QUEUE_STRIDE = 160
_H_DATA_OFF = 168
_H_TOTAL = 176
_H_OWNER_PID = 184
# the frames' layout (framepipe.core.pixels.FrameLayout), all uint32; _H_LAYOUT is 0 when the
# ring was created without one (plain arrays), else 1
_H_LAYOUT = 192
_H_PIXEL_FORMAT = 196
_H_FRAME_WIDTH = 200
_H_FRAME_HEIGHT = 204
_H_COLOUR_RANGE = 208
_H_MATRIX = 212
_H_PRODUCER_PID = 256  # int64, own cache line
_H_PRODUCER_DONE = 264  # uint32: the producer closed (end of stream)
_H_PRODUCER_WAIT = 320  # uint32, producer "sleeping" flag, own cache line
_H_PUBLISHED = 384  # uint64 frames published, own cache line

# consumer table entry
_C_STATE = 0  # uint32
_C_PID = 8  # int64
_C_DELIVERED = 32  # uint64, written by the producer
_C_DROPPED = 40  # uint64, written by the producer
_C_REGISTERED_NS = 48  # int64

# slot header (int64 words): seq, frame_id, source_id, pts, capture_ns, publish_ns
_S_SEQ = 0
_SLOT_HEADER_SIZE = 64


class StaleFrameError(FramepipeError):
    """A descriptor's slot no longer holds that frame (its sequence number changed)."""


class FrameDescriptor(NamedTuple):
    """What crosses a queue: where a frame is and which frame it is (never the pixels)."""

    slot: int
    seq: int
    frame_id: int
    source_id: int
    pts: int
    capture_ns: int  # wall clock (time.time_ns) when the frame was decoded
    publish_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns) when it was published


class FrameRef(NamedTuple):
    """Where a published frame is, for a process that does not hold the ring's descriptor
    queue (an inference service): the ring's name, the slot, and the sequence number the
    frame was published with (a reader checks it still matches: :meth:`FrameRing.view`)."""

    ring: str
    slot: int
    seq: int


class SlotHeader(NamedTuple):
    seq: int
    frame_id: int
    source_id: int
    pts: int
    capture_ns: int
    publish_ns: int


class ConsumerState(IntEnum):
    FREE = 0
    ACTIVE = 1
    LEAVING = 2
    REGISTERING = 3  # claimed, pid not yet written: the producer neither feeds nor reaps it


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    index: int
    state: ConsumerState
    pid: int
    received: int  # descriptors the consumer took
    delivered: int  # descriptors the producer handed to it
    dropped: int  # frames the producer did not give it, or replaced before it took them


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class _Geometry:
    slots: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    max_consumers: int
    queue_depth: int
    lease_stride: int
    slot_nbytes: int
    slot_stride: int
    consumers_off: int
    leases_off: int
    headers_off: int
    queues_off: int
    queue_stride: int
    data_off: int
    total: int

    @classmethod
    def compute(
        cls,
        slots: int,
        shape: Sequence[int],
        dtype: DTypeLike,
        max_consumers: int,
        queue_depth: int,
    ) -> _Geometry:
        if not isinstance(slots, int) or not 1 <= slots <= _MAX_SLOTS:
            raise ValueError(f"slots must be an int in [1, {_MAX_SLOTS}], got {slots!r}")
        if not isinstance(max_consumers, int) or not 1 <= max_consumers <= _MAX_CONSUMERS:
            raise ValueError(
                f"max_consumers must be an int in [1, {_MAX_CONSUMERS}], got {max_consumers!r}"
            )
        if not isinstance(queue_depth, int) or not 1 <= queue_depth <= 1 << 20:
            raise ValueError(f"queue_depth must be an int >= 1, got {queue_depth!r}")
        shape_t = tuple(int(d) for d in shape)
        if not 1 <= len(shape_t) <= _MAX_NDIM or any(d <= 0 for d in shape_t):
            raise ValueError(f"shape must be 1-{_MAX_NDIM} positive dimensions, got {shape!r}")
        dt = np.dtype(dtype)
        if dt.hasobject or dt.fields is not None or dt.itemsize == 0 or len(dt.str) > 16:
            raise ValueError(f"dtype must be a plain numeric dtype, got {dt!r}")
        slot_nbytes = int(np.prod(shape_t)) * dt.itemsize
        slot_stride = _round_up(slot_nbytes, _PAGE)
        lease_stride = _round_up(max_consumers, 8)
        consumers_off = _HEADER_SIZE
        leases_off = _round_up(consumers_off + max_consumers * _CACHE_LINE, _CACHE_LINE)
        headers_off = _round_up(leases_off + slots * lease_stride, _CACHE_LINE)
        queues_off = headers_off + slots * _SLOT_HEADER_SIZE
        queue_stride = int(_spsc.queue_region_size(queue_depth))
        data_off = _round_up(queues_off + max_consumers * queue_stride, _PAGE)
        total = data_off + slots * slot_stride
        return cls(
            slots=slots,
            shape=shape_t,
            dtype=dt,
            max_consumers=max_consumers,
            queue_depth=queue_depth,
            lease_stride=lease_stride,
            slot_nbytes=slot_nbytes,
            slot_stride=slot_stride,
            consumers_off=consumers_off,
            leases_off=leases_off,
            headers_off=headers_off,
            queues_off=queues_off,
            queue_stride=queue_stride,
            data_off=data_off,
            total=total,
        )


class FrameRing(OwnedResource):
    """N fixed-shape frame slots in one shared segment, with leases, queues and mailboxes."""

    def __init__(self, segment: Segment, geometry: _Geometry, *, initialise: bool) -> None:
        self.segment = segment
        self.name = segment.name
        self.owner = segment.owner
        self._g = geometry
        self._layout = _read_layout(segment.buf)
        self._closed = False
        self._unlinked = False
        self._sems: list[_spsc.NamedSemaphore] = []
        # Residency, as this process (the producer) knows it: which slots are backed, when
        # each was last acquired, how many low slots are never punched (the admitted floor).
        self._resident = bytearray(geometry.slots)
        self._last_used = array("d", bytes(8 * geometry.slots))
        self._keep = 0
        self._idle_s = IDLE_PUNCH_S
        self._next_trim = 0.0
        self._growth: GrowthAccount | None = None
        self._growth_checked = False
        self._growth_owned = False  # attached here (closed with the ring)
        self._growth_refused = 0
        buf = segment.buf
        self._view = _spsc.SharedView(buf)
        try:
            self._setup(geometry, buf, initialise)
        except BaseException:
            self._close_handles()
            if initialise:
                with contextlib.suppress(OSError):
                    self._unlink_names()
            raise

    def _setup(self, geometry: _Geometry, buf: memoryview, initialise: bool) -> None:
        self._producer_sem = self._open_sem(f"{self.name}-p", create=initialise)
        self._consumer_sems = [
            self._open_sem(f"{self.name}-c{i}", create=initialise)
            for i in range(geometry.max_consumers)
        ]
        self._producer_waker = _spsc.Waker(self._view, _H_PRODUCER_WAIT, self._producer_sem)
        self._leases = _spsc.LeaseTable(
            self._view,
            geometry.leases_off,
            geometry.slots,
            geometry.max_consumers,
            geometry.lease_stride,
            geometry.headers_off + _S_SEQ,
            _SLOT_HEADER_SIZE,
        )
        self._headers: NDArray[np.int64] = np.ndarray(
            (geometry.slots, _SLOT_HEADER_SIZE // 8), np.int64, buf, geometry.headers_off
        )
        self._queues: list[_spsc.SpscQueue] = []
        self._consumer_wakers: list[_spsc.Waker] = []
        for i in range(geometry.max_consumers):
            qoff = geometry.queues_off + i * geometry.queue_stride
            waker = _spsc.Waker(self._view, qoff + 128, self._consumer_sems[i])
            self._consumer_wakers.append(waker)
            self._queues.append(
                _spsc.SpscQueue(
                    self._view,
                    qoff,
                    geometry.queue_depth,
                    waker,
                    self._producer_waker,
                    initialise=initialise,
                    headers_offset=geometry.headers_off,
                    header_stride=_SLOT_HEADER_SIZE,
                    nslots=geometry.slots,
                )
            )
            self._queues[-1].set_descriptor_type(FrameDescriptor)
        self._core = _spsc.RingCore(
            self._view,
            self._queues,
            geometry.slots,
            geometry.consumers_off,
            geometry.leases_off,
            geometry.lease_stride,
            geometry.headers_off,
            _H_PUBLISHED,
        )
        self._writable = [
            np.ndarray(
                geometry.shape, geometry.dtype, buf, geometry.data_off + s * geometry.slot_stride
            )
            for s in range(geometry.slots)
        ]
        self._readonly = []
        for arr in self._writable:
            ro = arr.view()
            ro.flags.writeable = False
            self._readonly.append(ro)

    def _open_sem(self, name: str, *, create: bool) -> _spsc.NamedSemaphore:
        sem = _spsc.NamedSemaphore(name, create)
        self._sems.append(sem)
        return sem

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def required_slots(queue_depth: int, consumers: int, leases_in_flight: int = 1) -> int:
        """Slots so that the writer never waits for a slot under WAIT: depth x consumers +
        leases each consumer may hold while it works + 1 being written."""
        return queue_depth * consumers + leases_in_flight * consumers + 1

    @staticmethod
    def segment_size(
        slots: int,
        shape: Sequence[int],
        dtype: DTypeLike = np.uint8,
        max_consumers: int = 4,
        queue_depth: int = 2,
    ) -> int:
        """Bytes of shared memory a ring of this geometry takes (for RAM budgets)."""
        return _Geometry.compute(slots, shape, dtype, max_consumers, queue_depth).total

    @staticmethod
    def resident_size(
        slots: int,
        shape: Sequence[int],
        dtype: DTypeLike = np.uint8,
        max_consumers: int = 4,
        queue_depth: int = 2,
        resident_slots: int = 1,
    ) -> int:
        """Bytes a new ring of this geometry has backed at creation: its metadata and its
        first ``resident_slots`` slots (the floor of its resident set)."""
        g = _Geometry.compute(slots, shape, dtype, max_consumers, queue_depth)
        return g.data_off + min(max(0, resident_slots), g.slots) * g.slot_stride

    @classmethod
    def create(
        cls,
        slots: int,
        shape: Sequence[int],
        dtype: DTypeLike = np.uint8,
        max_consumers: int = 4,
        *,
        queue_depth: int = 2,
        tag: str = "ring",
        owner_pid: int | None = None,
        resident_slots: int | None = None,
        layout: FrameLayout | None = None,
    ) -> FrameRing:
        """A new ring; ``resident_slots``: slots backed from the start and never punched out
        (the resident set the pipeline was admitted for; default 1), the rest reserved as
        the producer needs them. ``layout``: what the slots hold, when they hold video frames
        (recorded in the header for every reader); the slot's shape must be
        ``layout.slot_shape``, uint8."""
        g = _Geometry.compute(slots, shape, dtype, max_consumers, queue_depth)
        if layout is not None and (layout.slot_shape != g.shape or g.dtype != np.uint8):
            raise ValueError(
                f"a ring of {layout.width}x{layout.height} {layout.pixel_format.name} frames "
                f"has uint8 slots of shape {layout.slot_shape}, got {g.dtype} {g.shape}"
            )
        keep = 1 if resident_slots is None else resident_slots
        if not isinstance(keep, int) or keep < 0:
            raise ValueError(f"resident_slots must be an int >= 0, got {resident_slots!r}")
        keep = min(keep, g.slots)
        segment = Segment.create(
            g.total, tag, owner_pid=owner_pid, reserve=g.data_off + keep * g.slot_stride
        )
        try:
            _write_header(segment.buf, g, segment_owner=os.getpid(), layout=layout)
            ring = cls(segment, g, initialise=True)
        except BaseException:
            segment.close()
            segment.unlink()
            raise
        ring._resident[:keep] = b"\x01" * keep
        ring._keep = keep
        return ring

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        segment = Segment.attach(name)
        try:
            g = _read_header(segment.buf, name, segment.size)
            ring = cls(segment, g, initialise=False)
        except BaseException:
            segment.close()
            raise
        # What is backed beyond the metadata is the floor the creator reserved (a prefix of
        # the slots; or what a former producer grew it to): kept, never punched from here.
        backed = segment.resident_bytes() - g.data_off
        keep = max(0, min(g.slots, backed // g.slot_stride))
        ring._resident[:keep] = b"\x01" * keep
        ring._keep = keep
        return ring

    # -- geometry -----------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return self._g.slots

    @property
    def shape(self) -> tuple[int, ...]:
        return self._g.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._g.dtype

    @property
    def max_consumers(self) -> int:
        return self._g.max_consumers

    @property
    def queue_depth(self) -> int:
        return self._g.queue_depth

    @property
    def slot_nbytes(self) -> int:
        return self._g.slot_nbytes

    @property
    def layout(self) -> FrameLayout | None:
        """The frames' pixel format, size, colour range and matrix (None: plain arrays)."""
        return self._layout

    @property
    def nbytes(self) -> int:
        return self._g.total

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side ------------------------------------------------------------------------

    def try_acquire(self) -> int | None:
        """The lowest-numbered free slot, backed by pages, marked as being written (odd seq);
        None if every slot is busy, or a slot must be reserved and the RAM budget or
        /dev/shm refuses it (backpressure, counted in ``growth_refused``)."""
        slot = int(self._leases.find_free(0))
        if slot < 0:
            return None
        if not self._resident[slot]:
            slot = self._resident_or_grow(slot)
            if slot < 0:
                return None
        now = time.monotonic()
        self._last_used[slot] = now
        if now >= self._next_trim:
            self.trim(now)
        off = self._g.headers_off + slot * _SLOT_HEADER_SIZE + _S_SEQ
        self._view.store_u64(off, self._view.load_u64(off) + 1)
        return slot

    def acquire(self, timeout: float | None = None) -> int | None:
        """Wait (sleeping, GIL released) up to ``timeout`` s for a free slot; None on timeout."""
        slot = self.try_acquire()
        if slot is not None or timeout == 0:
            return slot
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._producer_waker.prepare()
            slot = self.try_acquire()
            if slot is not None:
                self._producer_waker.cancel()
                return slot
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._producer_waker.cancel()
                return None
            self._producer_waker.sleep(remaining)

    # -- residency (producer side) ------------------------------------------------------------

    def _resident_or_grow(self, lowest: int) -> int:
        """``lowest`` is free but not backed: a free backed slot above it, else ``lowest``
        once its pages are reserved, else -1."""
        resident = self._resident
        is_free = self._leases.is_free
        for slot in range(lowest + 1, self._g.slots):
            if resident[slot] and is_free(slot):
                return slot
        return lowest if self._grow(lowest) else -1

    def _grow(self, slot: int) -> bool:
        nbytes = self._g.slot_stride
        growth = self._growth_account()
        if growth is not None and not growth.take(nbytes):
            self._growth_refused += 1
            return False
        added = 0
        try:
            added = self.segment.reserve(self._g.data_off + slot * nbytes, nbytes)
        except ShmExhaustedError:
            self._growth_refused += 1
            return False
        finally:
            if growth is not None and added < nbytes:  # (partly) backed already, or refused
                growth.give(nbytes - added)
        self._resident[slot] = 1
        return True

    def _growth_account(self) -> GrowthAccount | None:
        if not self._growth_checked:
            self._growth_checked = True
            self._growth = GrowthAccount.for_segment(self.name)
            self._growth_owned = self._growth is not None
        return self._growth

    def set_residency(
        self,
        *,
        idle_s: float | None = None,
        growth: GrowthAccount | None = None,
    ) -> None:
        """Producer side: punch out a free slot after ``idle_s`` unused; take growth from
        ``growth`` (default: the account of the ring's owner, if it keeps one)."""
        if idle_s is not None:
            if idle_s < 0:
                raise ValueError(f"idle_s must be >= 0, got {idle_s!r}")
            self._idle_s = idle_s
            self._next_trim = 0.0
        if growth is not None:
            if self._growth_owned and self._growth is not None:
                self._growth.close()
            self._growth, self._growth_checked, self._growth_owned = growth, True, False

    def trim(self, now: float | None = None) -> int:
        """Punch out the free slots above the floor unused for ``idle_s``; how many.
        Producer side only: nobody else may take a slot between the check and the punch."""
        now = time.monotonic() if now is None else now
        self._next_trim = now + min(1.0, max(0.05, self._idle_s / 2))
        g = self._g
        resident, last_used, is_free = self._resident, self._last_used, self._leases.is_free
        punched = 0
        for slot in range(self._keep, g.slots):
            if resident[slot] and now - last_used[slot] >= self._idle_s and is_free(slot):
                self.segment.punch(g.data_off + slot * g.slot_stride, g.slot_stride)
                resident[slot] = 0
                punched += 1
        if punched:
            growth = self._growth_account()
            if growth is not None:
                growth.give(punched * g.slot_stride)
        return punched

    def trim_if_due(self, now: float | None = None) -> int:
        """:meth:`trim` if its time has come (a producer that is not acquiring slots: paused,
        or waiting for room, calls this so idle pages are still given back)."""
        now = time.monotonic() if now is None else now
        return self.trim(now) if now >= self._next_trim else 0

    def resident_slots(self) -> int:
        """Slots this process knows are backed (the producer's view)."""
        return sum(self._resident)

    def resident_bytes(self) -> int:
        """Bytes of the ring's segment backed by pages now, metadata included."""
        return self.segment.resident_bytes()

    @property
    def growth_refused(self) -> int:
        """Times this producer needed one more slot and the budget or /dev/shm refused it."""
        return self._growth_refused

    def writable(self, slot: int) -> NDArray[Any]:
        """The slot's pixels, writable, in place (valid between acquire and publish)."""
        return self._writable[slot]

    def publish(
        self,
        slot: int,
        *,
        frame_id: int,
        source_id: int = 0,
        pts: int = 0,
        capture_ns: int | None = None,
    ) -> FrameDescriptor:
        """Stamp the slot header and make the frame visible (even seq); returns its descriptor.

        This does not hand the frame to anyone: :class:`~framepipe.core.ring.FrameProducer`
        grants leases and enqueues descriptors."""
        if capture_ns is None:
            capture_ns = time.time_ns()
        seq, publish_ns = self._core.stamp(slot, frame_id, source_id, pts, capture_ns)
        if seq < 0:
            raise OperationError(f"slot {slot} of ring {self.name} was not acquired for writing")
        return FrameDescriptor(slot, seq, frame_id, source_id, pts, capture_ns, publish_ns)

    def abandon(self, slot: int) -> None:
        """Return an acquired, unpublished slot (its seq becomes even; no consumer saw it)."""
        off = self._g.headers_off + slot * _SLOT_HEADER_SIZE + _S_SEQ
        seq = int(self._view.load_u64(off))
        if seq % 2 == 1:
            self._view.store_u64(off, seq + 1)
            self._producer_waker.wake()

    def grant(self, consumer: int, slot: int) -> None:
        self._leases.grant(consumer, slot)

    # -- leases -------------------------------------------------------------------------------

    def release(self, consumer: int, slot: int) -> bool:
        held = bool(self._leases.release(consumer, slot))
        if held:
            self._producer_waker.wake()
        return held

    def release_all(self, consumer: int) -> int:
        n = int(self._leases.release_all(consumer))
        if n:
            self._producer_waker.wake()
        return n

    def lease_count(self, slot: int) -> int:
        return int(self._leases.count(slot))

    def leases_of(self, consumer: int) -> list[int]:
        return list(self._leases.leases_of(consumer))

    def holds(self, consumer: int, slot: int) -> bool:
        return bool(self._leases.held(consumer, slot))

    def free_slots(self) -> int:
        return int(self._leases.free_count())

    # -- reading ------------------------------------------------------------------------------

    def header(self, slot: int) -> SlotHeader:
        if not 0 <= slot < self._g.slots:
            raise IndexError(f"slot {slot} out of range [0, {self._g.slots})")
        seq = int(self._view.load_u64(self._g.headers_off + slot * _SLOT_HEADER_SIZE))
        h = self._headers[slot]
        return SlotHeader(seq, int(h[1]), int(h[2]), int(h[3]), int(h[4]), int(h[5]))

    def is_current(self, descriptor: FrameDescriptor | FrameRef) -> bool:
        """The slot still holds this frame (its sequence number is the published one)."""
        off = self._g.headers_off + descriptor.slot * _SLOT_HEADER_SIZE
        return int(self._view.load_u64(off)) == descriptor.seq

    def view(self, descriptor: FrameDescriptor | FrameRef) -> NDArray[Any]:
        """Read-only view of the frame in its slot (no copy). Valid while a lease is held."""
        if not 0 <= descriptor.slot < self._g.slots:
            raise IndexError(f"slot {descriptor.slot} out of range [0, {self._g.slots})")
        if not self.is_current(descriptor):
            which = (
                f"frame {descriptor.frame_id} (seq {descriptor.seq})"
                if isinstance(descriptor, FrameDescriptor)
                else f"the frame of seq {descriptor.seq}"
            )
            raise StaleFrameError(
                f"slot {descriptor.slot} of ring {self.name} was reused: {which} is gone"
            )
        return self._readonly[descriptor.slot]

    # -- consumer table -----------------------------------------------------------------------

    def _centry(self, index: int) -> int:
        if not 0 <= index < self._g.max_consumers:
            raise IndexError(f"consumer {index} out of range [0, {self._g.max_consumers})")
        return self._g.consumers_off + index * _CACHE_LINE

    def register_consumer(self, pid: int | None = None, index: int | None = None) -> int:
        """Claim a free consumer index for ``pid`` (default: this process); ``index``: that
        entry and no other (OperationError if it is not free)."""
        pid = os.getpid() if pid is None else pid
        candidates = range(self._g.max_consumers) if index is None else (index,)
        for index in candidates:
            off = self._centry(index)
            if self._view.cas_u32(off + _C_STATE, ConsumerState.FREE, ConsumerState.REGISTERING):
                self._view.store_i64(off + _C_PID, pid)
                self._queues[index].reset_taken()
                self._view.store_i64(off + _C_REGISTERED_NS, time.monotonic_ns())
                self._view.store_u32(off + _C_STATE, ConsumerState.ACTIVE)
                return index
        if len(candidates) == 1:
            raise OperationError(f"consumer {candidates[0]} of ring {self.name} is not free")
        raise OperationError(
            f"ring {self.name} already has {self._g.max_consumers} consumers (max_consumers); "
            "create the ring with a larger max_consumers"
        )

    def unregister_consumer(self, index: int) -> None:
        """Leave: mark the entry LEAVING; the producer empties its queue and frees the entry.
        (The consumer releases its leases first; leftovers are reclaimed by the producer.)"""
        off = self._centry(index)
        self._view.cas_u32(off + _C_STATE, ConsumerState.ACTIVE, ConsumerState.LEAVING)
        self._producer_waker.wake()

    def consumer_state(self, index: int) -> ConsumerState:
        return ConsumerState(self._view.load_u32(self._centry(index) + _C_STATE))

    def consumer_pid(self, index: int) -> int:
        return int(self._view.load_i64(self._centry(index) + _C_PID))

    def consumer_info(self, index: int) -> ConsumerInfo:
        off = self._centry(index)
        return ConsumerInfo(
            index=index,
            state=ConsumerState(self._view.load_u32(off + _C_STATE)),
            pid=int(self._view.load_i64(off + _C_PID)),
            received=int(self._queues[index].taken),
            delivered=int(self._view.load_u64(off + _C_DELIVERED)),
            dropped=int(self._view.load_u64(off + _C_DROPPED)),
        )

    def consumers(self) -> list[ConsumerInfo]:
        return [self.consumer_info(i) for i in range(self._g.max_consumers)]

    def reclaim_consumer(self, index: int) -> int:
        """Producer side (or anyone once the producer is gone): empty consumer ``index``'s
        queue and mailbox, release all its leases and free the entry. Returns leases freed."""
        off = self._centry(index)
        self._queues[index].reset()
        freed = self.release_all(index)
        self._view.store_u64(off + _C_DELIVERED, 0)
        self._view.store_u64(off + _C_DROPPED, 0)
        self._view.store_i64(off + _C_PID, 0)
        self._view.store_u32(off + _C_STATE, ConsumerState.FREE)
        return freed

    def _count(self, index: int, field: int, n: int = 1) -> None:
        off = self._centry(index) + field
        self._view.store_u64(off, self._view.load_u64(off) + n)

    # -- producer status ----------------------------------------------------------------------

    @property
    def published(self) -> int:
        return int(self._view.load_u64(_H_PUBLISHED))

    @property
    def producer_done(self) -> bool:
        """The producer closed: no more frames will come (end of stream)."""
        return bool(self._view.load_u32(_H_PRODUCER_DONE))

    def _set_producer(self, pid: int) -> None:
        self._view.store_i64(_H_PRODUCER_PID, pid)
        self._view.store_u32(_H_PRODUCER_DONE, 0)

    def _mark_producer_done(self) -> None:
        self._view.store_u32(_H_PRODUCER_DONE, 1)
        for i in range(self._g.max_consumers):
            self._queues[i].wake_consumer()

    @property
    def producer_pid(self) -> int:
        return int(self._view.load_i64(_H_PRODUCER_PID))

    # -- lifecycle ----------------------------------------------------------------------------

    def _close_handles(self) -> None:
        growth, self._growth = self._growth, None
        if growth is not None and self._growth_owned:
            growth.close()
        if hasattr(self, "_core"):
            self._core.close()
        for q in getattr(self, "_queues", []):
            q.close()
        for w in getattr(self, "_consumer_wakers", []):
            w.close()
        if hasattr(self, "_producer_waker"):
            self._producer_waker.close()
        if hasattr(self, "_leases"):
            self._leases.close()
        self._queues = []
        self._consumer_wakers = []
        self._writable = []
        self._readonly = []
        self._headers = np.zeros((0, 8), np.int64)
        self._view.release()
        for sem in self._sems:
            sem.close()

    def _unlink_names(self) -> None:
        for name in [f"{self.name}-p"] + [
            f"{self.name}-c{i}" for i in range(self._g.max_consumers)
        ]:
            _spsc.NamedSemaphore.unlink(name)

    def close(self) -> None:
        """Unmap and close the semaphores (idempotent). Views handed out stay valid memory."""
        if self._closed:
            return
        self._closed = True
        self._close_handles()
        self.segment.close()

    def unlink(self) -> None:
        """Remove the segment and semaphore names (idempotent; owner's job)."""
        if self._unlinked:
            return
        self._unlinked = True
        self.segment.unlink()
        with contextlib.suppress(OSError):
            self._unlink_names()

    def __repr__(self) -> str:
        return (
            f"<FrameRing {self.name} slots={self.slots} shape={self.shape} "
            f"dtype={self.dtype} consumers<={self.max_consumers}>"
        )


def _write_header(
    buf: memoryview, g: _Geometry, *, segment_owner: int, layout: FrameLayout | None = None
) -> None:
    hdr = np.ndarray((_HEADER_SIZE,), np.uint8, buf, 0)
    hdr[:] = 0
    del hdr
    u32 = np.ndarray((_HEADER_SIZE // 4,), np.uint32, buf, 0)
    i64 = np.ndarray((_HEADER_SIZE // 8,), np.int64, buf, 0)
    u32[_H_VERSION // 4] = 1
    u32[_H_SLOTS // 4] = g.slots
    u32[_H_MAX_CONSUMERS // 4] = g.max_consumers
    u32[_H_QUEUE_DEPTH // 4] = g.queue_depth
    u32[_H_LEASE_STRIDE // 4] = g.lease_stride
    u32[_H_NDIM // 4] = len(g.shape)
    for i, d in enumerate(g.shape):
        i64[_H_SHAPE // 8 + i] = d
    dtype_str = g.dtype.str.encode()
    buf[_H_DTYPE : _H_DTYPE + len(dtype_str)] = dtype_str
    for off, value in (
        (_H_SLOT_NBYTES, g.slot_nbytes),
        (_H_SLOT_STRIDE, g.slot_stride),
        (_H_CONSUMERS_OFF, g.consumers_off),
        (_H_LEASES_OFF, g.leases_off),
        (_H_HEADERS_OFF, g.headers_off),
        (_H_QUEUES_OFF, g.queues_off),
        (_H_QUEUE_STRIDE, g.queue_stride),
        (_H_DATA_OFF, g.data_off),
        (_H_TOTAL, g.total),
        (_H_OWNER_PID, segment_owner),
    ):
        i64[off // 8] = value
    if layout is not None:
        for off, field in (
            (_H_LAYOUT, 1),
            (_H_PIXEL_FORMAT, int(layout.pixel_format)),
            (_H_FRAME_WIDTH, layout.width),
            (_H_FRAME_HEIGHT, layout.height),
            (_H_COLOUR_RANGE, int(layout.colour_range)),
            (_H_MATRIX, int(layout.matrix)),
        ):
            u32[off // 4] = field
    del u32, i64
    # the rest of the metadata area starts zeroed (fallocate), the magic goes last
    buf[0:8] = _MAGIC


def _read_header(buf: memoryview, name: str, size: int) -> _Geometry:
    if size < _HEADER_SIZE or bytes(buf[0:8]) != _MAGIC:
        raise OperationError(f"segment {name} is not a framepipe FrameRing (bad magic)")
    u32 = np.ndarray((_HEADER_SIZE // 4,), np.uint32, buf, 0)
    i64 = np.ndarray((_HEADER_SIZE // 8,), np.int64, buf, 0)
    try:
        if int(u32[_H_VERSION // 4]) != 1:
            raise OperationError(f"ring {name} has layout version {int(u32[_H_VERSION // 4])}")
        ndim = int(u32[_H_NDIM // 4])
        shape = [int(i64[_H_SHAPE // 8 + i]) for i in range(ndim)]
        dtype_str = bytes(buf[_H_DTYPE : _H_DTYPE + 16]).rstrip(b"\0").decode()
        g = _Geometry.compute(
            int(u32[_H_SLOTS // 4]),
            shape,
            np.dtype(dtype_str),
            int(u32[_H_MAX_CONSUMERS // 4]),
            int(u32[_H_QUEUE_DEPTH // 4]),
        )
        if g.total != int(i64[_H_TOTAL // 8]) or g.total > size:
            raise OperationError(f"ring {name}: header geometry does not match the segment")
        return g
    finally:
        del u32, i64


def _read_layout(buf: memoryview) -> FrameLayout | None:
    u32 = np.ndarray((_HEADER_SIZE // 4,), np.uint32, buf, 0)
    try:
        if not int(u32[_H_LAYOUT // 4]):
            return None
        return FrameLayout(
            PixelFormat(int(u32[_H_PIXEL_FORMAT // 4])),
            int(u32[_H_FRAME_WIDTH // 4]),
            int(u32[_H_FRAME_HEIGHT // 4]),
            ColourRange(int(u32[_H_COLOUR_RANGE // 4])),
            ColourMatrix(int(u32[_H_MATRIX // 4])),
        )
    finally:
        del u32
