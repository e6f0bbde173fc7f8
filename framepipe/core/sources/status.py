"""The state of one video source, in shared memory: written where the source is, read anywhere.

A :class:`SourceStatus` is a small segment (``/fp-<owner>-st…``, a few tens of kB) created by
the process that owns the source's decoder, next to (and before) the source's frame ring. It
holds everything a reader of the source wants to know, so no process keeps a copy that must be
kept fresh:

* the stream state (``StreamState``) and the history of its changes and consumption events,
  in the reference's event shapes;
* what the stream is (size, fps, frame count) once it is open, and the name of its ring;
* the decoder's statistics (frames decoded and published, fps, decode latency, CPU, reconnects,
  restarts, a heartbeat and the time of the last frame, for stall detection);
* one entry per consumer: who it is, how it wants frames (filling strategy, ``max_fps``, its
  mode: running, muted or paused) and the frames the decoder dropped for it, by reason.

One writer per field: the decode process writes the state, the events and the statistics (the
owner writes them only while no decode process runs: before the first start, after an exit);
the owner allocates and frees consumer entries and writes the ring name; a consumer writes its
own mode. Counters and the state word are single aligned words; strings and the event log are
guarded by sequence numbers, so a reader never sees a torn message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import numpy as np

from framepipe.core._lifecycle import OwnedResource
from framepipe.core.shm import Segment
from framepipe.core.sources.entities import (
    SEVERITY_ERROR,
    SEVERITY_INFO,
    BufferFillingStrategy,
    DecoderBackendName,
    DropReason,
    StatusUpdate,
    StreamInfo,
    StreamState,
)
from framepipe.ext import _spsc
from framepipe.protocol.errors import OperationError

__all__ = [
    "ConsumerMode",
    "ConsumerSettings",
    "EventKind",
    "SourceEvent",
    "SourceStatistics",
    "SourceStatus",
]

_MAGIC = b"FPSRC001"
_VERSION = 2
EVENTS_KEPT = 64
_MESSAGE_BYTES = 224
_ERROR_BYTES = 480
_RING_NAME_BYTES = 96

_STATES = list(StreamState)
_STRATEGIES = list(BufferFillingStrategy)
_REASONS = list(DropReason)
_BACKENDS = list(DecoderBackendName)


class ConsumerMode(IntEnum):
    """What a consumer wants from the decoder right now (it sets this itself)."""

    RUNNING = 0
    MUTED = 1  # keep decoding (live sources stay fresh), deliver nothing
    PAUSED = 2  # files stop being read; live sources deliver nothing


class EventKind(IntEnum):
    SOURCE_STATE_UPDATE = 0
    VIDEO_CONSUMPTION_STARTED = 1
    VIDEO_CONSUMPTION_FINISHED = 2


_HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("max_consumers", "<u4"),
        ("state", "<u4"),
        ("backend", "<u4"),
        ("state_changes", "<u8"),
        ("decoder_pid", "<i8"),
        ("decoder_restarts", "<u8"),
        ("ring_name", f"S{_RING_NAME_BYTES}"),
        ("opened", "<u4"),
        ("width", "<u4"),
        ("height", "<u4"),
        ("pad0", "<u4"),
        ("fps", "<f8"),
        ("total_frames", "<i8"),
        ("codec", "S16"),
        ("decode_start_ns", "<i8"),
        ("frames_decoded", "<u8"),
        ("frames_published", "<u8"),
        ("dropped_no_consumer", "<u8"),
        ("reconnects", "<u8"),
        ("copies", "<u8"),
        ("measured_fps", "<f8"),
        ("decode_latency_ms", "<f8"),
        ("cpu_s", "<f8"),
        ("ring_slots", "<u4"),
        ("ring_occupancy", "<u4"),
        ("last_frame_mono_ns", "<i8"),
        ("heartbeat_mono_ns", "<i8"),
        ("error_seq", "<u8"),
        ("last_error", f"S{_ERROR_BYTES}"),
        ("event_count", "<u8"),
    ],
    align=True,
)
_HEADER_BYTES = 1024
_CONSUMER = np.dtype(
    [
        ("active", "<u4"),
        ("generation", "<u4"),
        ("pid", "<i8"),
        ("strategy", "<u4"),
        ("mode", "<u4"),
        ("max_fps", "<f8"),
        ("dropped", "<u8", (len(_REASONS),)),
        ("registered_ns", "<i8"),
        ("pixels", "<u4"),  # 0: the consumer reads its frames' metadata only, never a pixel
    ],
    align=True,
)
_CONSUMER_BYTES = 128
_EVENT = np.dtype(
    [
        ("t_ns", "<i8"),
        ("kind", "<u4"),
        ("previous", "<u4"),
        ("new", "<u4"),
        ("severity", "<u4"),
        ("seq", "<u8"),
        ("message", f"S{_MESSAGE_BYTES}"),
    ],
    align=True,
)
_EVENT_BYTES = 256
assert _HEADER.itemsize <= _HEADER_BYTES
assert _CONSUMER.itemsize <= _CONSUMER_BYTES
assert _EVENT.itemsize <= _EVENT_BYTES


def _offset(name: str) -> int:
    fields = _HEADER.fields
    assert fields is not None
    return int(fields[name][1])


_OFF_STATE = _offset("state")
_OFF_EVENT_COUNT = _offset("event_count")
_OFF_ERROR_SEQ = _offset("error_seq")
_OFF_OPENED = _offset("opened")


def _segment_size(max_consumers: int) -> int:
    return _HEADER_BYTES + max_consumers * _CONSUMER_BYTES + EVENTS_KEPT * _EVENT_BYTES


def _text(value: Any) -> str:
    """A fixed-width ``S`` field as text (trailing NULs dropped)."""
    raw = value[()] if isinstance(value, np.ndarray) else value
    return bytes(raw).rstrip(b"\0").decode("utf-8", "replace")


def _encode(text: str, size: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return data
    return data[: size - 3].decode("utf-8", "ignore").encode() + b"..."


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How one consumer wants its frames (an entry of the consumer table)."""

    index: int
    active: bool
    generation: int  # changes whenever the entry is given to a new consumer
    pid: int
    strategy: BufferFillingStrategy
    max_fps: float | None
    mode: ConsumerMode
    pixels: bool = True  # False: only the frames' metadata is read (no pixels are written)


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One entry of a source's history, before it is given a pipeline's source id."""

    t_ns: int
    kind: EventKind
    previous: StreamState
    new: StreamState
    severity: int
    message: str

    def to_update(self, source_id: int) -> StatusUpdate:
        """The reference's event (``video_source_status_updates`` entry)."""
        at = datetime.fromtimestamp(self.t_ns / 1e9)
        if self.kind is EventKind.SOURCE_STATE_UPDATE:
            payload: dict[str, Any] = {
                "previous_state": self.previous.value,
                "new_state": self.new.value,
                "source_id": source_id,
            }
            if self.message:
                payload["message"] = self.message
            return StatusUpdate(at, self.severity, "SOURCE_STATE_UPDATE", payload, "video_source")
        return StatusUpdate(
            at, self.severity, self.kind.name, {"source_id": source_id}, "video_source"
        )


@dataclass(frozen=True, slots=True)
class SourceStatistics:
    """A reading of the decoder's statistics."""

    state: StreamState
    info: StreamInfo | None
    backend: DecoderBackendName
    decode_start_ns: int
    frames_decoded: int
    frames_published: int
    dropped_no_consumer: int
    reconnects: int
    decoder_restarts: int
    copies: int
    measured_fps: float
    decode_latency_ms: float
    cpu_s: float
    ring_slots: int
    ring_occupancy: int
    last_frame_mono_ns: int
    heartbeat_mono_ns: int
    decoder_pid: int
    last_error: str | None


class SourceStatus(OwnedResource):
    """One source's state block in shared memory (see the module docstring)."""

    def __init__(self, segment: Segment, max_consumers: int) -> None:
        self.segment = segment
        self.name = segment.name
        self.owner = segment.owner
        self.max_consumers = max_consumers
        self._closed = False
        self._unlinked = False
        buf = segment.buf
        self._atomic = _spsc.SharedView(buf)
        self._h: Any = np.ndarray((), _HEADER, buf, 0)
        self._c: Any = np.ndarray(
            (max_consumers,), _CONSUMER, buf, _HEADER_BYTES, (_CONSUMER_BYTES,)
        )
        self._e: Any = np.ndarray(
            (EVENTS_KEPT,),
            _EVENT,
            buf,
            _HEADER_BYTES + max_consumers * _CONSUMER_BYTES,
            (_EVENT_BYTES,),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, max_consumers: int, *, owner_pid: int | None = None) -> SourceStatus:
        if not 1 <= max_consumers <= 64:
            raise ValueError(f"max_consumers must be within 1..64, got {max_consumers}")
        segment = Segment.create(_segment_size(max_consumers), "st", owner_pid=owner_pid)
        try:
            status = cls(segment, max_consumers)
            h = status._h
            h["version"] = _VERSION
            h["max_consumers"] = max_consumers
            h["total_frames"] = -1
            h["state"] = _STATES.index(StreamState.NOT_STARTED)
            h["magic"] = _MAGIC  # last: a reader that sees it sees a whole header
            return status
        except BaseException:
            segment.close()
            segment.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> SourceStatus:
        segment = Segment.attach(name)
        try:
            head: Any = np.ndarray((), _HEADER, segment.buf, 0)
            if head["magic"][()] != _MAGIC or int(head["version"]) != _VERSION:
                raise OperationError(f"segment {name} is not a framepipe source status block")
            max_consumers = int(head["max_consumers"])
            del head
            if segment.size < _segment_size(max_consumers):
                raise OperationError(f"source status block {name} is truncated")
            return cls(segment, max_consumers)
        except BaseException:
            segment.close()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        del self._h, self._c, self._e
        self._atomic.release()
        self.segment.close()

    def unlink(self) -> None:
        if self._unlinked:
            return
        self._unlinked = True
        self.segment.unlink()

    # -- state and events ---------------------------------------------------------------------

    @property
    def state(self) -> StreamState:
        return _STATES[int(self._atomic.load_u32(_OFF_STATE))]

    def set_state(self, new: StreamState, message: str = "") -> None:
        """Change the state and record the change (no event when it does not change)."""
        previous = self.state
        if previous is new:
            return
        if new is StreamState.ERROR and message:
            self.set_error(message)
        self._atomic.store_u32(_OFF_STATE, _STATES.index(new))
        self._h["state_changes"] += 1
        severity = SEVERITY_ERROR if new is StreamState.ERROR else SEVERITY_INFO
        self._append(EventKind.SOURCE_STATE_UPDATE, previous, new, severity, message)

    def add_event(self, kind: EventKind, message: str = "") -> None:
        state = self.state
        self._append(kind, state, state, SEVERITY_INFO, message)

    def _append(
        self,
        kind: EventKind,
        previous: StreamState,
        new: StreamState,
        severity: int,
        message: str,
    ) -> None:
        count = int(self._atomic.load_u64(_OFF_EVENT_COUNT))
        entry = self._e[count % EVENTS_KEPT]
        entry["seq"] = 0  # being written
        entry["t_ns"] = time.time_ns()
        entry["kind"] = kind
        entry["previous"] = _STATES.index(previous)
        entry["new"] = _STATES.index(new)
        entry["severity"] = severity
        entry["message"] = _encode(message, _MESSAGE_BYTES)
        entry["seq"] = count + 1
        self._atomic.store_u64(_OFF_EVENT_COUNT, count + 1)

    def events(self) -> list[SourceEvent]:
        """The kept history (the newest ``EVENTS_KEPT`` entries), oldest first."""
        count = int(self._atomic.load_u64(_OFF_EVENT_COUNT))
        first = max(0, count - EVENTS_KEPT)
        out = []
        for n in range(first, count):
            entry = self._e[n % EVENTS_KEPT].copy()
            if int(entry["seq"]) != n + 1:
                continue  # overwritten (or being written) while we read
            out.append(
                SourceEvent(
                    t_ns=int(entry["t_ns"]),
                    kind=EventKind(int(entry["kind"])),
                    previous=_STATES[int(entry["previous"])],
                    new=_STATES[int(entry["new"])],
                    severity=int(entry["severity"]),
                    message=_text(entry["message"]),
                )
            )
        return out

    @property
    def last_error(self) -> str | None:
        for _ in range(100):
            seq = int(self._atomic.load_u64(_OFF_ERROR_SEQ))
            if seq % 2:
                continue
            text = _text(self._h["last_error"])
            if int(self._atomic.load_u64(_OFF_ERROR_SEQ)) == seq:
                return text or None
        return None

    def set_error(self, message: str) -> None:
        seq = int(self._atomic.load_u64(_OFF_ERROR_SEQ))
        self._atomic.store_u64(_OFF_ERROR_SEQ, seq + 1)
        self._h["last_error"] = _encode(message, _ERROR_BYTES)
        self._atomic.store_u64(_OFF_ERROR_SEQ, seq + 2)

    # -- the stream ---------------------------------------------------------------------------

    def set_info(self, info: StreamInfo, backend: DecoderBackendName, decode_start_ns: int) -> None:
        """What the decoder learnt when it first opened the stream (later opens keep it)."""
        h = self._h
        h["width"] = info.width
        h["height"] = info.height
        h["fps"] = info.fps if info.fps else 0.0
        h["total_frames"] = info.total_frames if info.total_frames is not None else -1
        h["codec"] = _encode(info.codec, 16)
        h["backend"] = _BACKENDS.index(backend)
        if not int(h["decode_start_ns"]):
            h["decode_start_ns"] = decode_start_ns
        self._atomic.store_u32(_OFF_OPENED, 1)

    @property
    def info(self) -> StreamInfo | None:
        if not self._atomic.load_u32(_OFF_OPENED):
            return None
        h = self._h
        total = int(h["total_frames"])
        fps = float(h["fps"])
        return StreamInfo(
            width=int(h["width"]),
            height=int(h["height"]),
            fps=fps or None,
            total_frames=total if total >= 0 else None,
            codec=_text(h["codec"]),
        )

    @property
    def decode_start_ns(self) -> int:
        return int(self._h["decode_start_ns"])

    @property
    def ring_name(self) -> str | None:
        return _text(self._h["ring_name"]) or None

    def set_ring_name(self, name: str) -> None:
        if len(name.encode()) >= _RING_NAME_BYTES:
            raise ValueError(f"ring name {name!r} is too long")
        self._h["ring_name"] = name.encode()

    # -- decoder statistics (written by the decode process) -----------------------------------

    def frame_decoded(self, mono_ns: int) -> None:
        h = self._h
        h["frames_decoded"] += 1
        h["last_frame_mono_ns"] = mono_ns
        h["heartbeat_mono_ns"] = mono_ns

    def frame_published(self) -> None:
        self._h["frames_published"] += 1

    def heartbeat(self, mono_ns: int | None = None) -> None:
        self._h["heartbeat_mono_ns"] = time.monotonic_ns() if mono_ns is None else mono_ns

    def count_no_consumer(self) -> None:
        self._h["dropped_no_consumer"] += 1

    def count_reconnect(self) -> None:
        self._h["reconnects"] += 1

    def count_decoder_restart(self) -> None:
        self._h["decoder_restarts"] += 1

    def set_decoder_pid(self, pid: int) -> None:
        self._h["decoder_pid"] = pid

    def update_statistics(
        self,
        *,
        measured_fps: float,
        decode_latency_ms: float,
        cpu_s: float,
        ring_slots: int,
        ring_occupancy: int,
        copies: int,
    ) -> None:
        h = self._h
        h["measured_fps"] = measured_fps
        h["decode_latency_ms"] = decode_latency_ms
        h["cpu_s"] = cpu_s
        h["ring_slots"] = ring_slots
        h["ring_occupancy"] = ring_occupancy
        h["copies"] = copies

    @property
    def frames_published(self) -> int:
        return int(self._h["frames_published"])

    @property
    def frames_decoded(self) -> int:
        return int(self._h["frames_decoded"])

    @property
    def cpu_s(self) -> float:
        return float(self._h["cpu_s"])

    @property
    def measured_fps(self) -> float:
        """The decoder's measured rate (one field; :meth:`statistics` reads them all)."""
        return float(self._h["measured_fps"])

    def statistics(self) -> SourceStatistics:
        h = self._h.copy()
        return SourceStatistics(
            state=self.state,
            info=self.info,
            backend=_BACKENDS[int(h["backend"])],
            decode_start_ns=int(h["decode_start_ns"]),
            frames_decoded=int(h["frames_decoded"]),
            frames_published=int(h["frames_published"]),
            dropped_no_consumer=int(h["dropped_no_consumer"]),
            reconnects=int(h["reconnects"]),
            decoder_restarts=int(h["decoder_restarts"]),
            copies=int(h["copies"]),
            measured_fps=float(h["measured_fps"]),
            decode_latency_ms=float(h["decode_latency_ms"]),
            cpu_s=float(h["cpu_s"]),
            ring_slots=int(h["ring_slots"]),
            ring_occupancy=int(h["ring_occupancy"]),
            last_frame_mono_ns=int(h["last_frame_mono_ns"]),
            heartbeat_mono_ns=int(h["heartbeat_mono_ns"]),
            decoder_pid=int(h["decoder_pid"]),
            last_error=self.last_error,
        )

    # -- consumers ----------------------------------------------------------------------------

    def claim_consumer(
        self,
        pid: int,
        strategy: BufferFillingStrategy,
        max_fps: float | None,
        *,
        mode: ConsumerMode = ConsumerMode.RUNNING,
        usable: Any = None,
        pixels: bool = True,
    ) -> int:
        """Give a free entry to a consumer (the owner's job); returns its index.

        ``usable(index) -> bool`` can veto an entry (the owner's ring may still be reclaiming
        that index from a consumer that left).
        """
        for index in range(self.max_consumers):
            entry = self._c[index]
            if int(entry["active"]) or (usable is not None and not usable(index)):
                continue
            entry["pid"] = pid
            entry["strategy"] = _STRATEGIES.index(strategy)
            entry["max_fps"] = max_fps if max_fps else 0.0
            entry["mode"] = int(mode)
            entry["pixels"] = int(pixels)
            entry["dropped"] = 0
            entry["registered_ns"] = time.monotonic_ns()
            entry["generation"] += 1
            entry["active"] = 1
            return index
        raise OperationError(
            f"source status {self.name} already has {self.max_consumers} consumers"
        )

    def free_consumer(self, index: int) -> None:
        entry = self._c[index]
        entry["active"] = 0
        entry["generation"] += 1

    def consumer(self, index: int) -> ConsumerSettings:
        entry = self._c[index].copy()
        max_fps = float(entry["max_fps"])
        return ConsumerSettings(
            index=index,
            active=bool(entry["active"]),
            generation=int(entry["generation"]),
            pid=int(entry["pid"]),
            strategy=_STRATEGIES[int(entry["strategy"])],
            max_fps=max_fps or None,
            mode=ConsumerMode(int(entry["mode"])),
            pixels=bool(entry["pixels"]),
        )

    def consumers(self) -> list[ConsumerSettings]:
        return [self.consumer(i) for i in range(self.max_consumers)]

    def active_consumers(self) -> int:
        return int(np.count_nonzero(self._c["active"]))

    def generations(self) -> Any:
        """Every entry's generation at once (a decoder checks these per frame: cheap)."""
        return self._c["generation"].copy()

    def modes(self) -> Any:
        return self._c["mode"].copy()

    def set_mode(self, index: int, mode: ConsumerMode) -> None:
        self._c[index]["mode"] = int(mode)

    def count_drop(self, index: int, reason: DropReason, n: int = 1) -> None:
        self._c[index]["dropped"][_REASONS.index(reason)] += n

    def drops(self, index: int) -> dict[str, int]:
        counts = self._c[index]["dropped"].copy()
        return {reason.value: int(n) for reason, n in zip(_REASONS, counts, strict=True) if n}
