"""Typed values of the video-source layer: states, strategies, frame metadata, events, reports.

Names and wire shapes follow the reference stream manager (``StreamState``,
``BufferFillingStrategy``, ``BufferConsumptionStrategy``, ``video_source_status_updates``
events, ``sources_metadata``) so its clients read framepipe's reports unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from framepipe.core.pixels import FrameLayout

# The strategy types are the wire's (one type each), re-exported for the sources layer.
from framepipe.protocol.strategies import BufferConsumptionStrategy as BufferConsumptionStrategy
from framepipe.protocol.strategies import BufferFillingStrategy as BufferFillingStrategy


class StreamState(StrEnum):
    """Life cycle of one video source (the reference's states, same names)."""

    NOT_STARTED = "NOT_STARTED"
    INITIALISING = "INITIALISING"
    RESTARTING = "RESTARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    MUTED = "MUTED"
    TERMINATING = "TERMINATING"
    ENDED = "ENDED"
    ERROR = "ERROR"

    @property
    def is_final(self) -> bool:
        return self in (StreamState.ENDED, StreamState.ERROR)


class DropReason(StrEnum):
    """Why a decoded frame never reached a consumer (each counted in the source report)."""

    BUFFER_FULL = "buffer_full"  # DROP_LATEST: the new frame was discarded
    DROP_OLDEST = "drop_oldest"  # DROP_OLDEST: an older buffered frame made room for a new one
    ADAPTIVE = "adaptive"  # ADAPTIVE_*: consumer slower than the stream's pace
    EAGER = "eager"  # EAGER consumption skipped older buffered frames
    MAX_FPS = "max_fps"  # max_fps limiting on a live stream
    MUTED = "muted"  # the consumer (or the source) was muted
    NO_CONSUMER = "no_consumer"  # decoded while nobody was subscribed


class SourceKind(StrEnum):
    FILE = "file"
    STREAM = "stream"
    WEBCAM = "webcam"


class DecoderBackendName(StrEnum):
    OPENCV = "opencv"
    PYAV = "pyav"


#: Severity levels of events, as Python's logging levels (the reference uses them too).
SEVERITY_DEBUG = 10
SEVERITY_INFO = 20
SEVERITY_WARNING = 30
SEVERITY_ERROR = 40


def _iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(frozen=True)
class StatusUpdate:
    """One event of a pipeline's history (``video_source_status_updates`` on the wire)."""

    timestamp: datetime
    severity: int
    event_type: str
    payload: dict[str, Any]
    context: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "timestamp": _iso(self.timestamp),
            "severity": self.severity,
            "event_type": self.event_type,
            "payload": dict(self.payload),
            "context": self.context,
        }


def state_update(
    source_id: int,
    previous: StreamState,
    new: StreamState,
    *,
    at: datetime | None = None,
    message: str = "",
) -> StatusUpdate:
    payload: dict[str, Any] = {
        "previous_state": previous.value,
        "new_state": new.value,
        "source_id": source_id,
    }
    if message:
        payload["message"] = message
    severity = SEVERITY_ERROR if new is StreamState.ERROR else SEVERITY_INFO
    return StatusUpdate(
        at or datetime.now(), severity, "SOURCE_STATE_UPDATE", payload, "video_source"
    )


@dataclass(frozen=True)
class FrameMetadata:
    """What is known about one delivered frame (the frame itself stays in its ring slot).

    ``frame_id`` counts the frames decoded from the source, from 1 (gaps mean drops);
    ``capture_ns`` is the wall clock (``time.time_ns()``) when the decoder returned the frame;
    ``pts`` the stream's presentation time in seconds (None when the stream has none);
    ``frame_timestamp`` is the capture time for live sources and decode start + pts for files.
    """

    frame_id: int
    frame_timestamp: datetime
    source_id: int
    capture_ns: int
    pts: float | None
    width: int
    height: int
    fps: float | None = None
    measured_fps: float | None = None
    comes_from_video_file: bool = False
    publish_ns: int = 0
    total_frames: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "frame_timestamp": _iso(self.frame_timestamp),
            "frame_id": self.frame_id,
            "source_id": self.source_id,
        }


@dataclass(frozen=True)
class StreamInfo:
    """What a decode backend learnt when it opened the source."""

    width: int
    height: int
    fps: float | None
    total_frames: int | None
    codec: str = ""
    #: how the decoder stores frames in the ring (None: BGR, the stream's size)
    layout: FrameLayout | None = None


@dataclass(frozen=True)
class SourceProperties:
    """``sources_metadata[].source_properties`` of the reference's status report."""

    width: int
    height: int
    total_frames: int | None
    is_file: bool
    fps: float | None
    is_reconnectable: bool | None
    timestamp_created: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "total_frames": self.total_frames,
            "is_file": self.is_file,
            "fps": self.fps,
            "is_reconnectable": self.is_reconnectable,
            "timestamp_created": _iso(self.timestamp_created),
        }


@dataclass(frozen=True)
class SourceReport:
    """The typed state of one source as seen by one pipeline."""

    source_id: int
    reference: str  # credentials masked
    kind: SourceKind
    state: StreamState
    backend: str
    properties: SourceProperties | None
    declared_fps: float | None
    measured_fps: float
    frames_decoded: int
    frames_delivered: int
    frames_dropped: dict[str, int]
    reconnects: int
    last_error: str | None
    decode_latency_ms: float
    ring_slots: int
    ring_occupancy: int
    shm_bytes: int
    buffer_size: int
    buffer_filling_strategy: BufferFillingStrategy
    buffer_consumption_strategy: BufferConsumptionStrategy
    shared_with: int  # other consumers of the same decoder
    decoder_cpu_s: float = 0.0  # CPU time of the decode process(es)
    decoder_restarts: int = 0  # decode processes that died and were replaced (live sources)
    last_frame_mono_ns: int = 0  # CLOCK_MONOTONIC of the last decoded frame (0: none yet)
    heartbeat_mono_ns: int = 0  # CLOCK_MONOTONIC of the decode loop's last sign of life
    decoder_pid: int = 0

    def to_wire_metadata(self) -> dict[str, Any]:
        """The reference's ``sources_metadata`` entry."""
        return {
            "source_properties": self.properties.to_wire() if self.properties else None,
            "source_reference": self.reference,
            "buffer_size": self.buffer_size,
            "state": self.state.value,
            "buffer_filling_strategy": self.buffer_filling_strategy.value,
            "buffer_consumption_strategy": self.buffer_consumption_strategy.value,
            "source_id": self.source_id,
        }

    def to_wire_statistics(self) -> dict[str, Any]:
        """framepipe's extra per-source statistics."""
        return {
            "source_id": self.source_id,
            "source_reference": self.reference,
            "kind": self.kind.value,
            "state": self.state.value,
            "backend": self.backend,
            "declared_fps": self.declared_fps,
            "measured_fps": self.measured_fps,
            "frames_decoded": self.frames_decoded,
            "frames_delivered": self.frames_delivered,
            "frames_dropped": dict(self.frames_dropped),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "decode_latency_ms": self.decode_latency_ms,
            "ring_slots": self.ring_slots,
            "ring_occupancy": self.ring_occupancy,
            "shm_bytes": self.shm_bytes,
            "shared_with": self.shared_with,
            "decoder_cpu_s": self.decoder_cpu_s,
            "decoder_restarts": self.decoder_restarts,
            "decoder_pid": self.decoder_pid,
        }
