"""Typed bodies of the HTTP gateway: what the OpenAPI schema describes and what the routes send.

The response shapes are the reference gateway's (``CommandResponse``, ``ListPipelinesResponse``,
``InferencePipelineStatusResponse``, ``ConsumePipelineResponse``,
``InitializeWebRTCPipelineResponse``: ``status`` + ``context`` + the command's fields). The
status report is typed after the reference's report and framepipe's ``framepipe`` extension;
every object in it is open (``additionalProperties``), so a field the manager adds later
passes through instead of breaking the gateway.

Request bodies of ``initialise`` and ``initialise_webrtc`` are the protocol's own payload
models (:mod:`framepipe.protocol.payloads`): one schema for the wire and for HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from framepipe.client.responses import CommandContext, ConsumedEntry
from framepipe.gateway.streams import EndReason
from framepipe.protocol.commands import MAX_ENTRIES_LIMIT

MaxEntries = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_ENTRIES_LIMIT,
        description="framepipe extension: pop up to this many results, oldest first, "
        "returned in `entries` (without it, one result, as the reference does)",
    ),
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- requests ------------------------------------------------------------------------------


class ConsumeResultsPayload(BaseModel):
    """Body of ``consume`` (the reference sends it with a GET)."""

    model_config = ConfigDict(extra="ignore")

    excluded_fields: list[str] = Field(
        default_factory=list, description="keys to leave out of each output (e.g. `image`)"
    )
    max_entries: MaxEntries | None = None


# --- responses -----------------------------------------------------------------------------


class CommandResponse(BaseModel):
    status: Literal["success"] = Field(description="Operation status")
    context: CommandContext = Field(description="Context of the command")


class ListPipelinesResponse(CommandResponse):
    pipelines: list[str] = Field(description="ids of the active pipelines")


class StatusUpdate(_Open):
    timestamp: str | None = None
    severity: int | None = None
    event_type: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    context: str | None = None


class LatencyReport(_Open):
    """Mean latencies of a source's recent frames, in seconds."""

    source_id: int | None = None
    frame_decoding_latency: float | None = None
    inference_latency: float | None = None
    e2e_latency: float | None = None


class SourceProperties(_Open):
    width: int | None = None
    height: int | None = None
    total_frames: int | None = None
    is_file: bool | None = None
    fps: float | None = None
    is_reconnectable: bool | None = None
    timestamp_created: str | None = None


class SourceMetadata(_Open):
    source_properties: SourceProperties | None = None
    source_reference: str | int | None = None
    buffer_size: int | None = None
    state: str | None = Field(default=None, description="NOT_STARTED, RUNNING, ENDED, ERROR, ...")
    buffer_filling_strategy: str | None = None
    buffer_consumption_strategy: str | None = None
    source_id: int | None = None


class SourceStatistics(_Open):
    """framepipe's per-source figures."""

    source_id: int | None = None
    source_reference: str | int | None = None
    kind: str | None = None
    state: str | None = None
    backend: str | None = None
    declared_fps: float | None = None
    measured_fps: float | None = None
    frames_decoded: int | None = None
    frames_delivered: int | None = None
    frames_dropped: dict[str, int] = Field(
        default_factory=dict, description="dropped frames by reason"
    )
    reconnects: int | None = None
    last_error: str | None = None
    decode_latency_ms: float | None = None


class LatencyPercentiles(_Open):
    source_id: int | None = None
    e2e_p50: float | None = Field(default=None, description="milliseconds")
    e2e_p99: float | None = Field(default=None, description="milliseconds")
    samples: int | None = None


class FramepipeStatistics(_Open):
    """framepipe's extension of the report (absent from the reference's)."""

    state: str | None = None
    uptime_s: float | None = None
    results_produced: int | None = None
    results_dropped: int | None = Field(
        default=None, description="results the full sink discarded (DROP strategies)"
    )
    processing_errors: int | None = None
    last_processing_error: str | None = None
    latency_ms: list[LatencyPercentiles] = Field(default_factory=list)
    sources: list[SourceStatistics] = Field(default_factory=list)


class StatusReport(_Open):
    video_source_status_updates: list[StatusUpdate] = Field(default_factory=list)
    latency_reports: list[LatencyReport] = Field(default_factory=list)
    inference_throughput: float | None = None
    sources_metadata: list[SourceMetadata] = Field(default_factory=list)
    completion_statistics: dict[str, Any] | None = None
    framepipe: FramepipeStatistics | None = None


class InferencePipelineStatusResponse(CommandResponse):
    report: StatusReport


class FrameMetadata(BaseModel):
    frame_timestamp: str = Field(description="ISO-8601, as the manager sends it")
    frame_id: int
    source_id: int | None


class ResultEntry(BaseModel):
    """One processing step: one output per video source (null for a source without a frame
    in that step), aligned with ``frames_metadata``."""

    outputs: list[dict[str, Any] | None]
    frames_metadata: list[FrameMetadata | None]

    @classmethod
    def from_consumed(cls, entry: ConsumedEntry) -> ResultEntry:
        return cls(
            outputs=entry.outputs,
            frames_metadata=[
                None
                if meta is None
                else FrameMetadata(
                    frame_timestamp=meta.frame_timestamp.isoformat(),
                    frame_id=meta.frame_id,
                    source_id=meta.source_id,
                )
                for meta in entry.frames_metadata
            ],
        )


class ConsumePipelineResponse(CommandResponse):
    """``outputs``/``frames_metadata``: the oldest result (empty lists when there was none).
    ``entries``: with ``max_entries`` only, every result popped, oldest first."""

    outputs: list[dict[str, Any] | None]
    frames_metadata: list[FrameMetadata | None]
    entries: list[ResultEntry] | None = None


class InitializeWebRTCPipelineResponse(CommandResponse):
    sdp: str
    type: str


ErrorType = Literal[
    "invalid_payload",
    "authorisation_error",
    "not_found",
    "operation_error",
    "internal_error",
    "capacity_error",
    "connectivity_error",
    "protocol_error",
    "payload_too_large",
    "method_not_allowed",
]


class ErrorResponse(BaseModel):
    """Every failure the gateway answers, whatever its status code."""

    status: Literal["failure"] = "failure"
    error_type: ErrorType = Field(
        description="the manager's error_type (invalid_payload, authorisation_error, "
        "not_found, operation_error, internal_error); capacity_error for an operation_error "
        "that is a lack of capacity (RAM budget, shared memory); or the gateway's own: "
        "connectivity_error (manager unreachable), protocol_error (malformed answer), "
        "payload_too_large, method_not_allowed"
    )
    error_class: str | None = Field(default=None, description="the error's class on the manager")
    message: str = Field(description="what went wrong, one line")
    hint: str | None = Field(default=None, description="what to do about it")
    pipeline_id: str | None = None
    request_id: str | None = Field(default=None, description="the manager's request id")


class HealthResponse(BaseModel):
    status: Literal["alive"] = "alive"


class ReadinessResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    message: str | None = None


# --- stream events (Server-Sent Events data) -------------------------------------------------


class StreamDropped(BaseModel):
    """``event: dropped``: this reader fell behind and lost its oldest results."""

    dropped: int = Field(description="results lost just before the next event")
    dropped_total: int = Field(description="results this reader lost since it connected")


class StreamEnd(BaseModel):
    """``event: end``: the last event of a stream."""

    reason: EndReason
    message: str
    results: int = Field(description="results delivered to this reader")
    dropped_total: int
    error: ErrorResponse | None = None
