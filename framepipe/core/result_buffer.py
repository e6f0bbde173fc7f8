"""A pipeline's result buffer in shared memory: written by the process that produces the
results, drained by the manager with no round trip to that process.

Each result is encoded once, where it is produced, as the bytes of the wire
(:func:`encode_entry`): the manager answers ``consume_result`` by splicing those bytes into
its reply (``orjson.Fragment``), leaving out the outputs' ``excluded_fields`` by slicing, never
by decoding and encoding again. The buffer keeps the reference's sink semantics: at most
``capacity`` entries (``results_buffer_size``) and ``max_bytes`` of them; when full, the
producer either waits for room (``hold``: a WAIT pipeline) or drops the oldest entry, and
counts it. The producer also publishes its pipeline's status report here
(:meth:`SharedResultBuffer.publish_report`), so that ``status`` is answered from this segment
too.

Layout (one segment, ``/fp-<manager pid>-res…``, created by the manager, which owns it)::

    0      magic "FPRES001", u32 version, u32 capacity, u64 data_size, u64 max_bytes (0: none)
    64     u64 head      next entry number to write        (producer)
    128    u64 tail      next entry number to read         (CAS by the consumer and the
                                                            producer when it drops the oldest)
    136    u64 received, consumed, dropped, held_ns, bytes_waiting, reserved (data bytes backed)
    256    u64 report_seq (odd while written), report_len, report_at_ns, report_wanted_ns,
           report_received (the results put when the report was taken)
    4096   capacity x (u64 offset, u64 length): entry ``n`` is in slot ``n % capacity``
    ...    the report area (REPORT_BYTES), then the data area (data_size bytes)

The entries are variable-sized records laid out one after another in the data area, wrapping
to its start; the area starts over at offset 0 whenever the buffer is empty, so what is
resident is what the results in flight needed (the pages beyond are punched out after a
while). An entry is published by storing ``head`` after its bytes and its slot are written: a
producer killed mid-write leaves nothing half-written visible. A reader copies an entry and
only then claims it by advancing ``tail`` from the number it read (compare-and-swap); if the
producer dropped that entry meanwhile (and may be overwriting its bytes), the swap fails and
the copy is thrown away. So no torn entry is ever served, without a lock either side can die
holding.

Pages of the data and report areas are reserved (``posix_fallocate``) before they are first
written, so a full /dev/shm is a full buffer (backpressure, or the oldest dropped), never a
SIGBUS.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from framepipe.core.shm import PAGE_SIZE, Segment
from framepipe.core.sinks import SinkStatistics
from framepipe.ext import _spsc
from framepipe.protocol.errors import OperationError, ShmExhaustedError

__all__ = [
    "REPORT_BYTES",
    "SharedResultBuffer",
    "decode_entry",
    "encode_entry",
    "entry_to_python",
    "excluded_prefixes",
]

log = logging.getLogger("framepipe.results")

_MAGIC = b"FPRES001"
_VERSION = 1
_HEADER_BYTES = 4096
_SLOT_BYTES = 16
# header fields (byte offsets)
_CAPACITY = 12
_DATA_SIZE = 16
_MAX_BYTES = 24
_HEAD = 64
_TAIL = 128
_RECEIVED = 136
_CONSUMED = 144
_DROPPED = 152
_HELD_NS = 160
_BYTES_WAITING = 168
_RESERVED = 176
_REPORT_SEQ = 256
_REPORT_LEN = 264
_REPORT_AT = 272
_REPORT_WANTED = 280
_REPORT_RECEIVED = 288

#: Room for the status report (sparse: only what a report uses is resident).
REPORT_BYTES = 1 << 20
#: The data area when the result buffer has no byte cap (sparse, virtual).
UNCAPPED_DATA_BYTES = 256 << 20
# The data area pages reserved at a time, and how long an empty buffer keeps pages beyond
# this floor before they are given back.
_RESERVE_STEP = 64 << 10
_KEEP_BYTES = 1 << 20
_PUNCH_AFTER_S = 5.0
# How often a producer waiting for room (and a local reader waiting for a result) looks again.
_POLL_S = 0.002
_U64 = (1 << 64) - 1

_ENTRY_HEAD = struct.Struct("<II")  # sources, frames_metadata bytes
_SOURCE_HEAD = struct.Struct("<iI")  # fields (-1: no output), output bytes
_FIELD = struct.Struct("<II")  # start, end of one '"key":value' in the output's bytes


def _round_up(n: int, step: int) -> int:
    return (n + step - 1) // step * step


# -- the entries ------------------------------------------------------------------------------


def encode_entry(outputs: Sequence[dict[str, bytes] | None], frames_metadata_json: bytes) -> bytes:
    """One entry as stored: ``outputs`` (per source: its fields, each already the JSON of its
    value, or None) and the JSON of the ``frames_metadata`` list."""
    parts = [_ENTRY_HEAD.pack(len(outputs), len(frames_metadata_json)), frames_metadata_json]
    for output in outputs:
        if output is None:
            parts.append(_SOURCE_HEAD.pack(-1, 0))
            continue
        pieces: list[bytes] = []
        spans: list[bytes] = []
        at = 1  # after "{"
        for key, value in output.items():
            pair = orjson.dumps(key) + b":" + value
            pieces.append(pair)
            spans.append(_FIELD.pack(at, at + len(pair)))
            at += len(pair) + 1  # and the comma
        body = b"{" + b",".join(pieces) + b"}"
        parts.append(_SOURCE_HEAD.pack(len(pieces), len(body)))
        parts.extend(spans)
        parts.append(body)
    return b"".join(parts)


def decode_entry(
    raw: bytes, excluded_prefixes: tuple[bytes, ...] = ()
) -> tuple[list[bytes | None], bytes]:
    """``(outputs, frames_metadata)`` of a stored entry as JSON bytes: one per source (None: no
    output), without the fields whose ``'"key":'`` is in ``excluded_prefixes``."""
    view = memoryview(raw)
    sources, meta_len = _ENTRY_HEAD.unpack_from(raw, 0)
    at = _ENTRY_HEAD.size
    meta = bytes(view[at : at + meta_len])
    at += meta_len
    outputs: list[bytes | None] = []
    for _ in range(sources):
        fields, size = _SOURCE_HEAD.unpack_from(raw, at)
        at += _SOURCE_HEAD.size
        if fields < 0:
            outputs.append(None)
            continue
        spans_at = at
        at += fields * _FIELD.size
        body = raw[at : at + size]
        if excluded_prefixes and fields:
            kept = []
            for i in range(fields):
                start, end = _FIELD.unpack_from(raw, spans_at + i * _FIELD.size)
                pair = body[start:end]
                if not pair.startswith(excluded_prefixes):
                    kept.append(pair)
            if len(kept) < fields:
                body = b"{" + b",".join(kept) + b"}"
        outputs.append(body)
        at += size
    return outputs, meta


def excluded_prefixes(excluded_fields: Iterable[str]) -> tuple[bytes, ...]:
    """What :func:`decode_entry` leaves out for these field names."""
    return tuple(orjson.dumps(str(name)) + b":" for name in excluded_fields)


def entry_to_python(raw: bytes, excluded_fields: Iterable[str] = ()) -> dict[str, Any]:
    """A stored entry as ``{"outputs", "frames_metadata"}`` of plain values (for readers in
    Python, and tests)."""
    outputs, meta = decode_entry(raw, excluded_prefixes(excluded_fields))
    return {
        "outputs": [None if o is None else orjson.loads(o) for o in outputs],
        "frames_metadata": orjson.loads(meta),
    }


# -- the buffer -------------------------------------------------------------------------------


class SharedResultBuffer:
    """The bounded result buffer of one pipeline, in shared memory (see the module docstring).

    One producer (the pipeline's process) and one consumer (the manager). ``put``, ``consume``,
    ``statistics`` and ``len`` behave as :class:`~framepipe.core.sinks.InMemoryBufferSink`'s.
    """

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.owner = segment.owner
        self._view = _spsc.SharedView(segment.buf)
        buf = segment.buf
        if bytes(buf[0:8]) != _MAGIC or struct.unpack_from("<I", buf, 8)[0] != _VERSION:
            self._view.release()
            raise OperationError(f"segment {segment.name} is not a framepipe result buffer")
        self.capacity = self._view.load_u32(_CAPACITY)
        self.data_size = self._view.load_u64(_DATA_SIZE)
        cap = self._view.load_u64(_MAX_BYTES)
        self.max_bytes: int | None = cap or None
        self._slots = _HEADER_BYTES
        self._report = self._slots + _round_up(self.capacity * _SLOT_BYTES, PAGE_SIZE)
        self._data = self._report + REPORT_BYTES
        if segment.size < self._data + self.data_size:
            self._view.release()
            raise OperationError(f"result buffer {segment.name} is truncated")
        self._closed = threading.Event()  # no producer of this process waits any more
        self._woken = threading.Event()
        self._report_reserved = 0
        self._empty_since: float | None = None
        self._released = False
        #: Called by ``put`` (the producer's thread) after the first entry, and after an entry
        #: put while a reader wants a fresher report: the producer's reporter then need not
        #: look for either on a short timer.
        self.on_report_due: Callable[[], None] | None = None

    # -- life -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, capacity: int, max_bytes: int | None = None, *, owner_pid: int | None = None
    ) -> SharedResultBuffer:
        """A new, empty buffer of ``capacity`` entries and ``max_bytes`` of them (None: no byte
        cap); only its header and slot table are backed until results come."""
        if capacity < 1:
            raise ValueError(f"results_buffer_size must be >= 1, got {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        # Entries wrap in the data area: twice the cap always holds the cap's worth, and the
        # entry that is bigger than the cap alone (kept alone, as in memory).
        data_size = UNCAPPED_DATA_BYTES if max_bytes is None else 2 * max_bytes + (1 << 20)
        data_size = _round_up(data_size, PAGE_SIZE)
        table = _HEADER_BYTES + _round_up(capacity * _SLOT_BYTES, PAGE_SIZE)
        segment = Segment.create(
            table + REPORT_BYTES + data_size, "res", owner_pid=owner_pid, reserve=table
        )
        try:
            buf = segment.buf
            struct.pack_into("<II", buf, 8, _VERSION, capacity)
            struct.pack_into("<QQ", buf, _DATA_SIZE, data_size, max_bytes or 0)
            buf[0:8] = _MAGIC  # last: an attacher that sees it sees the whole header
            return cls(segment)
        except BaseException:
            segment.close()
            segment.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> SharedResultBuffer:
        segment = Segment.attach(name)
        try:
            return cls(segment)
        except BaseException:
            segment.close()
            raise

    def release(self) -> None:
        """Unmap (idempotent); the segment stays for its other users."""
        if self._released:
            return
        self._released = True
        self._closed.set()
        self._view.release()
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()

    @property
    def released(self) -> bool:
        return self._released

    # -- the sink's interface, for the producer's pipeline ------------------------------------

    def close(self) -> None:
        """No producer of this process waits for room any more (entries stay readable)."""
        self._closed.set()
        self._woken.set()

    def wake(self) -> None:
        self._woken.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait until an entry is buffered (True), the timeout passes or :meth:`wake` (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._woken.clear()
        while not len(self):
            if self._woken.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(_POLL_S)
        return True

    def put(self, entry: Any, *, hold: bool = False, stop: threading.Event | None = None) -> bool:
        """Add ``entry`` (the stored bytes, or an object whose ``encode()`` gives them). Full:
        with ``hold``, wait for room (False if ``stop`` was set or :meth:`close` was called
        meanwhile: the entry was not added); else drop the oldest entries until it fits."""
        data: bytes = entry if isinstance(entry, bytes) else entry.encode()
        size = len(data)
        v = self._view
        if size > self.data_size:
            log.warning(
                "%s: a result of %d bytes is bigger than the whole result buffer (%d bytes): "
                "dropped",
                self.name,
                size,
                self.data_size,
            )
            v.fetch_add_u64(_RECEIVED, 1)
            v.fetch_add_u64(_DROPPED, 1)
            return True
        waited_from: int | None = None
        try:
            while True:
                head, tail = v.load_u64(_HEAD), v.load_u64(_TAIL)
                count = head - tail
                at = self._room(head, tail, count, size)
                if at is not None and self._backed(at + size):
                    self._write(head, at, data)
                    due = self.on_report_due
                    if due is not None and (head == 0 or self.report_wanted()):
                        due()
                    return True
                if hold:
                    if (stop is not None and stop.is_set()) or self._closed.is_set():
                        return False
                    if waited_from is None:
                        waited_from = time.monotonic_ns()
                    time.sleep(_POLL_S)
                    continue
                if count == 0:  # empty and still no room: /dev/shm is full
                    log.warning("%s: no shared memory for a result: dropped", self.name)
                    v.fetch_add_u64(_RECEIVED, 1)
                    v.fetch_add_u64(_DROPPED, 1)
                    return True
                _, length = self._slot(tail)
                if v.cas_u64(_TAIL, tail, tail + 1):
                    v.fetch_add_u64(_DROPPED, 1)
                    v.fetch_add_u64(_BYTES_WAITING, -length & _U64)
        finally:
            if waited_from is not None:
                v.fetch_add_u64(_HELD_NS, time.monotonic_ns() - waited_from)

    def _room(self, head: int, tail: int, count: int, size: int) -> int | None:
        """Where in the data area an entry of ``size`` bytes goes now, or None: full."""
        if count == 0:
            self._give_back_idle_pages()
            return 0
        if count >= self.capacity:
            return None
        if (
            self.max_bytes is not None
            and self._view.load_u64(_BYTES_WAITING) + size > self.max_bytes
        ):
            return None
        self._empty_since = None
        first, _ = self._slot(tail)
        last_at, last_len = self._slot(head - 1)
        end = last_at + last_len
        if end > first:  # the live bytes are [first, end)
            if end + size <= self.data_size:
                return end
            return 0 if size <= first else None
        return end if end + size <= first else None  # wrapped: live [first, size) + [0, end)

    def _backed(self, end: int) -> bool:
        """The data area's pages up to ``end`` are reserved (False: /dev/shm is full)."""
        reserved = self._view.load_u64(_RESERVED)
        if end <= reserved:
            return True
        grow_to = min(self.data_size, _round_up(end, _RESERVE_STEP))
        try:
            self.segment.reserve(self._data + reserved, grow_to - reserved)
        except ShmExhaustedError:
            return False
        self._view.store_u64(_RESERVED, grow_to)
        return True

    def _give_back_idle_pages(self) -> None:
        """An empty buffer holding more pages than the floor gives the rest back once it has
        been empty a while (a burst's pages do not stay resident)."""
        reserved = self._view.load_u64(_RESERVED)
        if reserved <= _KEEP_BYTES:
            return
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since < _PUNCH_AFTER_S:
            return
        self.segment.punch(self._data + _KEEP_BYTES, reserved - _KEEP_BYTES)
        self._view.store_u64(_RESERVED, _KEEP_BYTES)
        self._empty_since = None

    def _write(self, head: int, at: int, data: bytes) -> None:
        v = self._view
        start = self._data + at
        self.segment.buf[start : start + len(data)] = data
        slot = self._slots + (head % self.capacity) * _SLOT_BYTES
        v.store_u64(slot, at)
        v.store_u64(slot + 8, len(data))
        v.fetch_add_u64(_BYTES_WAITING, len(data))
        v.fetch_add_u64(_RECEIVED, 1)
        v.store_u64(_HEAD, head + 1)  # last: the entry is whole before anyone sees it

    def _slot(self, number: int) -> tuple[int, int]:
        slot = self._slots + (number % self.capacity) * _SLOT_BYTES
        return self._view.load_u64(slot), self._view.load_u64(slot + 8)

    # -- the consumer -----------------------------------------------------------------------

    def consume(self, max_entries: int = 1, max_bytes: int | None = None) -> list[bytes]:
        """Take up to ``max_entries`` stored entries, oldest first, and no more than fit in
        ``max_bytes`` (but always the first)."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        v = self._view
        buf = self.segment.buf
        taken: list[bytes] = []
        weight = 0
        # What was buffered when the consume began, no more: a producer refilling the room this
        # frees must not stretch one reply beyond the buffer's bounds.
        end = v.load_u64(_HEAD)
        while len(taken) < max_entries:
            tail = v.load_u64(_TAIL)
            if tail >= end:
                break
            at, length = self._slot(tail)
            if taken and max_bytes is not None and weight + length > max_bytes:
                break
            if at + length > self.data_size:
                if v.load_u64(_TAIL) != tail:
                    continue  # dropped and its slot reused under us: look again
                raise OperationError(f"result buffer {self.name}: entry {tail} is corrupt")
            data = bytes(buf[self._data + at : self._data + at + length])
            if v.cas_u64(_TAIL, tail, tail + 1):  # still ours: the copy is whole
                taken.append(data)
                weight += length
                v.fetch_add_u64(_BYTES_WAITING, -length & _U64)
        if taken:
            v.fetch_add_u64(_CONSUMED, len(taken))
        return taken

    def discard(self) -> int:
        """Drop every buffered entry (counted as dropped); returns how many there were."""
        v = self._view
        dropped = 0
        while True:
            tail = v.load_u64(_TAIL)
            if tail >= v.load_u64(_HEAD):
                return dropped
            _, length = self._slot(tail)
            if v.cas_u64(_TAIL, tail, tail + 1):
                dropped += 1
                v.fetch_add_u64(_DROPPED, 1)
                v.fetch_add_u64(_BYTES_WAITING, -length & _U64)

    def __len__(self) -> int:
        tail = self._view.load_u64(_TAIL)
        return max(0, self._view.load_u64(_HEAD) - tail)

    def bytes_waiting(self) -> int:
        """The bytes of the entries buffered now."""
        return self._view.load_u64(_BYTES_WAITING)

    def statistics(self) -> SinkStatistics:
        v = self._view
        return SinkStatistics(
            buffered=len(self),
            capacity=self.capacity,
            received=v.load_u64(_RECEIVED),
            consumed=v.load_u64(_CONSUMED),
            dropped=v.load_u64(_DROPPED),
            held_s=v.load_u64(_HELD_NS) / 1e9,
            bytes=v.load_u64(_BYTES_WAITING),
            max_bytes=self.max_bytes,
        )

    def resident_bytes(self) -> int:
        return self.segment.resident_bytes()

    # -- the status report ------------------------------------------------------------------

    def publish_report(self, data: bytes, received: int = 0) -> bool:
        """Publish the pipeline's latest report (the producer's; False if it does not fit),
        taken when ``received`` results had been put."""
        if len(data) > REPORT_BYTES:
            log.warning("%s: a report of %d bytes does not fit", self.name, len(data))
            return False
        need = _round_up(len(data), PAGE_SIZE)
        if need > self._report_reserved:
            try:
                self.segment.reserve(self._report, need)
            except ShmExhaustedError:
                return False
            self._report_reserved = need
        v = self._view
        seq = v.load_u64(_REPORT_SEQ)
        v.store_u64(_REPORT_SEQ, seq + 1)  # odd: being written
        self.segment.buf[self._report : self._report + len(data)] = data
        v.store_u64(_REPORT_LEN, len(data))
        v.store_u64(_REPORT_AT, time.monotonic_ns())
        v.store_u64(_REPORT_RECEIVED, received)
        v.store_u64(_REPORT_SEQ, seq + 2)
        return True

    def read_report(self) -> tuple[bytes, int] | None:
        """The latest published report and when it was published (``time.monotonic_ns()``);
        None if none was published (or its writer died writing it)."""
        v = self._view
        buf = self.segment.buf
        for attempt in range(200):
            before = v.load_u64(_REPORT_SEQ)
            if before == 0:
                return None
            if before % 2:
                time.sleep(0 if attempt < 100 else 0.0005)
                continue
            length = v.load_u64(_REPORT_LEN)
            at = v.load_u64(_REPORT_AT)
            data = bytes(buf[self._report : self._report + min(length, REPORT_BYTES)])
            if v.load_u64(_REPORT_SEQ) == before:
                return data, at
        return None

    def received(self) -> int:
        """Results put so far (dropped ones included)."""
        return self._view.load_u64(_RECEIVED)

    def report_received(self) -> int:
        """Results put when the latest report was taken."""
        return self._view.load_u64(_REPORT_RECEIVED)

    def report_published_ns(self) -> int:
        """When the latest report was published (``time.monotonic_ns()``; 0: none yet)."""
        return self._view.load_u64(_REPORT_AT)

    def report_age_s(self) -> float | None:
        """Seconds since the latest report was published (None: none yet)."""
        at = self._view.load_u64(_REPORT_AT)
        return None if at == 0 else max(0.0, (time.monotonic_ns() - at) / 1e9)

    def want_report(self) -> None:
        """Ask the producer for a fresher report (it publishes one at its next look)."""
        self._view.store_u64(_REPORT_WANTED, time.monotonic_ns())

    def report_wanted(self) -> bool:
        """A reader asked for a report newer than the one published."""
        v = self._view
        return v.load_u64(_REPORT_WANTED) > v.load_u64(_REPORT_AT)
