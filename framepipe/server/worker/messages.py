"""Typed messages between the manager and a pipeline worker (over a duplex pipe).

The wire's ``init`` payload is turned into a :class:`PipelineConfig` at the TCP edge, and from
there on only typed values travel: a command per request, tagged with the request id of the TCP
request that caused it (so a reply can never be matched to the wrong request — the reference
took replies from a shared queue, in order, and could hand one client another's answer), and a
typed reply. Frames never travel here; a worker reads them in place from the rings its
:class:`~framepipe.core.sources.SourceTicket` s name.

Nothing heavy is imported at module level: the manager imports this at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from framepipe.errors import ErrorType, FramepipeError, InternalError, InvalidPayloadError
from framepipe.protocol.envelope import ResultEntry
from framepipe.protocol.payloads import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    InitialisePipelinePayload,
)

if TYPE_CHECKING:
    from framepipe.core.pipeline import PipelineReport, PipelineState
    from framepipe.core.processing.spec import ModelSpec, ProcessingSpec
    from framepipe.core.sources import SourceTicket, SubscriptionRequest
    from framepipe.server.webrtc.config import WebRTCConfig


@dataclass(frozen=True)
class PipelineConfig:
    """What a pipeline is made of, from an ``init`` payload (validated, typed)."""

    video_reference: str | int | tuple[str | int, ...]
    processing: ProcessingSpec
    max_fps: float | None = None
    filling_strategy: BufferFillingStrategy | None = None
    consumption_strategy: BufferConsumptionStrategy | None = None
    video_source_properties: dict[str, Any] | None = None
    batch_collection_timeout: float | None = None
    decoding_buffer_size: int = 64
    results_buffer_size: int = 64
    realtime_replay: bool = False
    consumption_timeout: float | None = None
    # The result buffer's byte cap (the server's FRAMEPIPE_MAX_RESULTS_MB; None: none).
    results_max_bytes: int | None = None

    @classmethod
    def from_payload(cls, payload: InitialisePipelinePayload) -> PipelineConfig:
        """The config of an ``init`` payload (InvalidPayloadError naming what is wrong)."""
        from framepipe.core.processing import processing_spec_from_wire

        video = payload.video_configuration
        reference = video.video_reference
        try:
            processing = processing_spec_from_wire(payload.raw_processing_configuration)
        except InvalidPayloadError as exc:  # e.g. a workflow step framepipe cannot run
            raise InvalidPayloadError(exc.message, public_message=exc.message) from None
        return cls(
            video_reference=tuple(reference) if isinstance(reference, list) else reference,
            processing=processing,
            max_fps=video.max_fps,
            filling_strategy=video.source_buffer_filling_strategy,
            consumption_strategy=video.source_buffer_consumption_strategy,
            video_source_properties=video.video_source_properties,
            batch_collection_timeout=video.batch_collection_timeout,
            decoding_buffer_size=payload.decoding_buffer_size,
            results_buffer_size=payload.sink_configuration.results_buffer_size,
            realtime_replay=bool(video.realtime_replay),
            consumption_timeout=payload.consumption_timeout,
        )

    def source_requests(self) -> list[SubscriptionRequest]:
        from framepipe.core.pipeline import source_requests
        from framepipe.core.processing.processor import build_processor

        reference = self.video_reference
        return source_requests(
            list(reference) if isinstance(reference, tuple) else reference,
            max_fps=self.max_fps,
            source_buffer_filling_strategy=self.filling_strategy,
            source_buffer_consumption_strategy=self.consumption_strategy,
            video_source_properties=self.video_source_properties,
            batch_collection_timeout=self.batch_collection_timeout,
            decoding_buffer_size=self.decoding_buffer_size,
            realtime_replay=self.realtime_replay,
            pixels=build_processor(self.processing).reads_pixels,
        )

    @property
    def model(self) -> ModelSpec | None:
        """The model the pipeline's processing needs (None: none)."""
        from framepipe.core.processing.processor import build_processor

        return build_processor(self.processing).model


# -- manager → worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class StartPipeline:
    config: PipelineConfig
    sources: tuple[SourceTicket, ...]
    # Where the model runs: an inference service (``ServiceAddress``), or None for an engine in
    # the worker itself.
    inference: Any = None
    begun_at: datetime | None = None  # when the manager began creating the pipeline
    # The pipeline's result buffer in shared memory (the manager's; None: in the worker's
    # memory, read with Consume). The worker publishes its status report there too.
    results_segment: str | None = None


@dataclass(frozen=True)
class StartWebRTCPipeline:
    """Start a pipeline whose source is a WebRTC peer's video track: the worker holds the peer
    connection, its frames go into a ring the worker owns, the answer goes back in the reply
    (:class:`WebRTCAnswer`)."""

    config: PipelineConfig
    webrtc: WebRTCConfig
    inference: Any = None  # as in StartPipeline
    begun_at: datetime | None = None


@dataclass(frozen=True)
class GetStatus:
    pass


@dataclass(frozen=True)
class Mute:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Consume:
    excluded_fields: tuple[str, ...] = ()
    max_entries: int = 1
    max_bytes: int | None = None  # the reply's entries, at least one (FRAMEPIPE_MAX_REPLY_MB)


@dataclass(frozen=True)
class Stop:
    """End the pipeline (the worker then exits)."""


WorkerCommand = StartPipeline | StartWebRTCPipeline | GetStatus | Mute | Resume | Consume | Stop


@dataclass(frozen=True)
class WorkerRequest:
    request_id: str
    command: WorkerCommand


# -- worker → manager ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerFailure:
    """A failure as the worker saw it; the manager raises it again as the matching error class."""

    error_type: ErrorType
    error_class: str
    message: str
    public_message: str | None

    @classmethod
    def from_exception(cls, exc: BaseException) -> WorkerFailure:
        if isinstance(exc, FramepipeError):
            return cls(exc.error_type, exc.error_class, exc.message, exc.explicit_public_message)
        return cls(
            ErrorType.INTERNAL_ERROR,
            type(exc).__name__,
            f"The pipeline worker failed: {type(exc).__name__}: {exc}",
            None,
        )


@dataclass(frozen=True)
class StatusReply:
    report: PipelineReport

    @property
    def state(self) -> PipelineState:
        return self.report.state


@dataclass(frozen=True)
class ConsumeReply:
    entries: tuple[ResultEntry, ...]
    buffered: int  # entries left after this consume


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class WebRTCAnswer:
    """The worker's SDP answer to a peer's offer."""

    sdp: str
    type: str = "answer"


ReplyBody = StatusReply | ConsumeReply | Done | WebRTCAnswer


@dataclass(frozen=True)
class WorkerReply:
    request_id: str
    body: ReplyBody | None = None
    failure: WorkerFailure | None = None


@dataclass(frozen=True)
class WorkerReady:
    """Sent once, when the worker's imports are done and it takes commands."""

    pid: int
    warmup_s: float
    unavailable: tuple[str, ...] = field(default_factory=tuple)


def expect(reply: ReplyBody | None, kind: type[Any]) -> Any:
    """``reply`` when it is a ``kind`` (a worker answering the wrong kind is a bug, reported
    clearly instead of an AttributeError later)."""
    if not isinstance(reply, kind):
        raise InternalError(
            f"the pipeline worker answered {type(reply).__name__}, expected {kind.__name__}"
        )
    return reply
