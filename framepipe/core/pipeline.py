"""The public ``Pipeline``: video sources → processing (a shared model) → results.

    with Pipeline("video.mp4", model="centerface") as pipeline:
        for result in pipeline.results():
            print(result.frames_metadata[0].frame_id, result.outputs[0]["predictions"])

A pipeline reads one source per ``video_reference`` (decode processes write the frames into
shared-memory rings; the pipeline leases them in place), collects a batch — a frame of each
source within ``batch_collection_timeout`` — and hands it to its :class:`Processor`. When the
processor needs a model, the batch's frames go to an inference engine shared by every pipeline
on that model (in this process, or an inference service in the stream manager), up to
``max_in_flight`` batches at once so that one pipeline keeps several inference runs busy; the
results come back in frame order. A batch's frames stay leased until its result is composed.

Results go to ``on_prediction`` and into the pipeline's one bounded result buffer
(:class:`~framepipe.core.sinks.InMemoryBufferSink`), which ``results()`` and the stream
manager's ``consume_result`` drain. A pipeline ends only when it has nothing left to give:
after its sources end it processes every frame still queued for it, then it is FINISHED (FAILED
when every source failed), and its buffered results stay readable.

``status()`` returns a typed :class:`PipelineReport`; ``to_wire()`` has the reference stream
manager's status-report keys plus framepipe's statistics.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn, Protocol

import numpy as np
import orjson

from framepipe.core.histogram import (
    FRAME_AGE_BUCKETS_S,
    INFERENCE_LATENCY_BUCKETS_S,
    Histogram,
    HistogramSnapshot,
)
from framepipe.core.inference import (
    ChannelState,
    Inference,
    InferenceChannel,
    SubmittedFrame,
    local_engine,
)
from framepipe.core.pixels import FrameImage, as_bgr
from framepipe.core.processing.processor import FrameCallback, FrameTap, Processor, build_processor
from framepipe.core.processing.spec import ModelSpec, ProcessingSpec
from framepipe.core.result_buffer import encode_entry
from framepipe.core.sinks import InMemoryBufferSink, ResultSink, SinkStatistics
from framepipe.core.sources.entities import (
    SEVERITY_ERROR,
    SEVERITY_INFO,
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    FrameMetadata,
    SourceReport,
    StatusUpdate,
    StreamState,
)
from framepipe.core.sources.hub import SourceHub, SubscriptionRequest
from framepipe.core.sources.multiplexer import BatchCollector, LeasedFrame
from framepipe.core.sources.reference import parse_reference
from framepipe.core.sources.sizing import MAX_IN_FLIGHT
from framepipe.core.sources.subscription import Subscription
from framepipe.protocol.errors import (
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
)

__all__ = [
    "DEFAULT_DECODING_BUFFER_SIZE",
    "DEFAULT_RESULTS_BUFFER_SIZE",
    "CompletionReport",
    "LatencyReport",
    "Pipeline",
    "PipelineReport",
    "PipelineResult",
    "PipelineState",
    "SourceHistograms",
    "Sources",
    "frame_metadata_to_wire",
    "source_requests",
]

logger = logging.getLogger(__name__)

DEFAULT_DECODING_BUFFER_SIZE = 64
DEFAULT_RESULTS_BUFFER_SIZE = 64
#: The result buffer's byte cap (FRAMEPIPE_MAX_RESULTS_MB in the server): 64 results of a 1080p
#: image output fit; bigger ones are fewer.
DEFAULT_RESULTS_MAX_BYTES = 64 * 1024 * 1024
_LATENCY_WINDOW = 256
#: The latency figures of a status report cover the last _LATENCY_WINDOW results, and of those
#: only the ones completed within this many seconds of the latest: what a pipeline does now,
#: not its start-up (at 5 fps, 256 results span 51 s).
_LATENCY_HORIZON_S = 10.0
_EVENTS_KEPT = 512
_DRAIN_ON_STOP_S = 5.0
_OPEN_TIMEOUT_S = 30.0  # how long start() waits for a file's decode process to open it
_OPEN_POLL_S = 0.01

Output = dict[str, Any] | None
VideoReference = str | int | os.PathLike[str]  # a path, a URL or a webcam index
OnPrediction = Callable[[list[Output], list[FrameMetadata | None]], None]


class Sources(Protocol):
    """Where a pipeline's sources come from: a :class:`SourceHub` (decoders owned by this
    process), or the tickets a stream manager handed to its worker."""

    def subscribe(self, request: SubscriptionRequest) -> Subscription: ...

    def close(self) -> None: ...


class PipelineState(StrEnum):
    NOT_STARTED = "NOT_STARTED"
    RUNNING = "RUNNING"
    MUTED = "MUTED"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"  # every source ended and every frame was processed
    FAILED = "FAILED"  # every source failed, or processing could not go on
    TERMINATED = "TERMINATED"

    @property
    def is_final(self) -> bool:
        return self in (PipelineState.FINISHED, PipelineState.FAILED, PipelineState.TERMINATED)


def frame_metadata_to_wire(frame: FrameMetadata) -> dict[str, Any]:
    """The reference's ``frames_metadata`` entry: ISO timestamp, frame id, source id."""
    return {
        "frame_timestamp": frame.frame_timestamp.isoformat(),
        "frame_id": int(frame.frame_id),
        "source_id": None if frame.source_id is None else int(frame.source_id),
    }


def _fallback(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars of types orjson does not know
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot serialise a {type(value).__name__} in a prediction output")


def _encode_json(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(value, default=_fallback, option=_SIZE_OPTIONS)


def _jsonable(output: dict[str, Any], excluded: set[str]) -> dict[str, Any]:
    if excluded:
        output = {k: v for k, v in output.items() if k not in excluded}
    try:
        return orjson.loads(orjson.dumps(output))  # type: ignore[no-any-return]
    except TypeError:
        options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        return orjson.loads(orjson.dumps(output, default=_fallback, option=options))  # type: ignore[no-any-return]


_SIZE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def approx_wire_bytes(value: object) -> int:
    """About how many bytes ``value`` takes as JSON, without encoding it: strings by their
    length (a base64 image is nearly all of a big result), containers by their items, an
    array as numbers; what the result buffer and a ``consume_result`` reply are bounded by."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, bytes | bytearray | memoryview):
            total += 2 + 4 * len(item)
        elif (nbytes := getattr(item, "nbytes", None)) is not None:
            total += 4 * int(nbytes)  # an array written as numbers
        else:
            total += 8
    return total


@dataclass(frozen=True)
class PipelineResult:
    """One processing step: one output and one metadata entry per source (None: no frame)."""

    outputs: list[Output]
    frames_metadata: list[FrameMetadata | None]

    def wire_bytes(self) -> int:
        """About the size of :meth:`to_wire`'s JSON: the outputs encoded once by orjson (a few
        µs), or weighed by :func:`approx_wire_bytes` when they hold what orjson cannot encode."""
        try:
            size = len(orjson.dumps(self.outputs, option=_SIZE_OPTIONS))
        except TypeError:
            size = approx_wire_bytes(self.outputs)
        return size + 100 * len(self.frames_metadata)

    def encode(self) -> bytes:
        """The entry as a shared result buffer stores it (each output field encoded once, as
        the wire's JSON; see :func:`framepipe.core.result_buffer.encode_entry`)."""
        outputs = [
            None if o is None else {str(k): _encode_json(v) for k, v in o.items()}
            for o in self.outputs
        ]
        metadata = orjson.dumps(
            [None if m is None else frame_metadata_to_wire(m) for m in self.frames_metadata]
        )
        return encode_entry(outputs, metadata)

    def to_wire(self, excluded_fields: Iterable[str] = ()) -> dict[str, Any]:
        """``{"outputs", "frames_metadata"}`` as ``consume_result`` returns them (JSON values;
        ``excluded_fields`` left out of each output)."""
        excluded = set(excluded_fields)
        return {
            "outputs": [None if o is None else _jsonable(o, excluded) for o in self.outputs],
            "frames_metadata": [
                None if m is None else frame_metadata_to_wire(m) for m in self.frames_metadata
            ],
        }


@dataclass(frozen=True)
class LatencyReport:
    """Mean latencies (seconds) of one source's recent frames, as the reference reports them:
    its last 256 results, of those the ones within 10 s of the latest (``samples`` of them).

    ``frame_decoding_latency``: capture → processing start; ``inference_latency``: processing
    start → result; ``e2e_latency``: capture → result handed out.
    """

    source_id: int
    frame_decoding_latency: float | None
    inference_latency: float | None
    e2e_latency: float | None
    e2e_latency_p50_ms: float | None
    e2e_latency_p99_ms: float | None
    samples: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "frame_decoding_latency": self.frame_decoding_latency,
            "inference_latency": self.inference_latency,
            "e2e_latency": self.e2e_latency,
        }


@dataclass(frozen=True)
class SourceCompletion:
    source_id: int
    completed_frames: int
    last_completed_at_monotonic: float | None
    last_frame_id: int | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "completed_frames": self.completed_frames,
            "last_completed_at_monotonic": self.last_completed_at_monotonic,
            "last_frame_id": self.last_frame_id,
        }


@dataclass(frozen=True)
class CompletionReport:
    """The reference's ``completion_statistics``: frames completed per source."""

    sampled_at_monotonic: float
    sources: list[SourceCompletion]

    def to_wire(self) -> dict[str, Any]:
        return {
            "sampled_at_monotonic": self.sampled_at_monotonic,
            "sources": [s.to_wire() for s in self.sources],
        }


@dataclass(frozen=True)
class SourceHistograms:
    """One source's latency histograms since the pipeline started (fixed buckets, counts that
    only grow: what a monitoring system scrapes), next to the recent windows of
    :class:`LatencyReport`.

    ``inference_latency_s``: processing start → result composed; ``frame_age_s``: capture →
    result handed out.
    """

    source_id: int
    inference_latency_s: HistogramSnapshot
    frame_age_s: HistogramSnapshot


@dataclass(frozen=True)
class PipelineReport:
    """Typed status of a pipeline; ``to_wire()`` is the reference's ``report`` object."""

    state: PipelineState
    status_updates: list[StatusUpdate]
    latency_reports: list[LatencyReport]
    inference_throughput: float
    sources: list[SourceReport]
    completion: CompletionReport
    results: SinkStatistics
    results_produced: int
    processing_errors: int
    last_processing_error: str | None
    frames_failed: dict[str, int]
    failure: str | None
    model: str | None
    uptime_s: float
    pid: int  # the process running the pipeline
    inference: ChannelState | None = None  # where the model runs: counts, service gaps
    histograms: list[SourceHistograms] = field(default_factory=list)
    # More of framepipe's report, by whoever runs the pipeline (e.g. "webrtc": the peer's side).
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def results_dropped(self) -> int:
        """Results the buffer discarded to make room (the sink's own count)."""
        return self.results.dropped

    def to_wire(self) -> dict[str, Any]:
        results = self.results
        return {
            "video_source_status_updates": [u.to_wire() for u in self.status_updates],
            "latency_reports": [r.to_wire() for r in self.latency_reports],
            "inference_throughput": self.inference_throughput,
            "sources_metadata": [s.to_wire_metadata() for s in self.sources],
            "completion_statistics": self.completion.to_wire(),
            "framepipe": {
                "state": self.state.value,
                "finished": self.state.is_final,
                "failure": self.failure,
                "model": self.model,
                "pid": self.pid,
                "uptime_s": self.uptime_s,
                "results_produced": self.results_produced,
                "results_dropped": results.dropped,
                "results": {
                    "produced": self.results_produced,
                    "buffered": results.buffered,
                    "capacity": results.capacity,
                    "consumed": results.consumed,
                    "dropped": results.dropped,
                    "held_s": results.held_s,
                },
                "processing_errors": self.processing_errors,
                "last_processing_error": self.last_processing_error,
                "inference": _inference_to_wire(self.inference),
                "frames_failed": dict(self.frames_failed),
                "latency_ms": [
                    {
                        "source_id": r.source_id,
                        "e2e_p50": r.e2e_latency_p50_ms,
                        "e2e_p99": r.e2e_latency_p99_ms,
                        "samples": r.samples,
                    }
                    for r in self.latency_reports
                ],
                "sources": [s.to_wire_statistics() for s in self.sources],
                **self.extensions,
            },
        }


def _inference_to_wire(state: ChannelState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "connected": state.connected,
        "submitted": state.submitted,
        "completed": state.completed,
        "failed": state.failed,
        "in_flight": state.in_flight,
        "gap_count": state.gap_count,
        "gaps": [
            {
                "started_at": datetime.fromtimestamp(gap.started_at).isoformat(),
                "ended_at": (
                    datetime.fromtimestamp(gap.ended_at).isoformat()
                    if gap.ended_at is not None
                    else None
                ),
                "reason": gap.reason,
            }
            for gap in state.gaps
        ],
    }


@dataclass
class _Latencies:
    decoding: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    inference: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    e2e: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    done_at: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    inference_histogram: Histogram = field(
        default_factory=lambda: Histogram(INFERENCE_LATENCY_BUCKETS_S)
    )
    age_histogram: Histogram = field(default_factory=lambda: Histogram(FRAME_AGE_BUCKETS_S))
    completed: int = 0
    last_completed_at: float | None = None
    last_frame_id: int | None = None


@dataclass
class _Job:
    """One batch in processing."""

    seq: int
    batch: list[LeasedFrame | None]
    started_ns: int


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) * 1000.0


def _recent_count(lat: _Latencies) -> int:
    """How many of the newest results (``lat.done_at``) completed within _LATENCY_HORIZON_S
    of the latest one."""
    done_at = lat.done_at
    if not done_at:
        return 0
    newest, keep = done_at[-1], 0
    for at in reversed(done_at):
        if newest - at > _LATENCY_HORIZON_S:
            break
        keep += 1
    return keep


def _newest(values: deque[float], count: int) -> list[float]:
    return list(itertools.islice(values, len(values) - count, None))


def _strategy(value: object, enum: type[Any], name: str) -> Any:
    if value is None or isinstance(value, enum):
        return value
    try:
        return enum(str(value).upper())
    except ValueError:
        choices = ", ".join(m.value for m in enum)
        raise InvalidPayloadError(f"{name} {value!r} is not one of {choices}") from None


def _source_error_event(update: StatusUpdate, reference: str) -> StatusUpdate:
    """The reference's ``INFERENCE_ERROR`` that follows a source going to ERROR."""
    payload = update.payload
    never_opened = payload.get("previous_state") in (
        StreamState.INITIALISING.value,
        StreamState.NOT_STARTED.value,
    )
    if never_opened:
        error_type = "SourceConnectionError"
        message = f"Cannot connect to video source under reference: {reference}"
    else:
        error_type = "SourceError"
        message = str(payload.get("message") or f"video source {reference} failed")
    return StatusUpdate(
        update.timestamp + timedelta(microseconds=1),
        SEVERITY_ERROR,
        "INFERENCE_ERROR",
        {"error_type": error_type, "error_message": message, "error_context": "inference_thread"},
        "inference_pipeline",
    )


def _processing_processor(
    model: str | ModelSpec | None, processing: ProcessingSpec | Processor | None
) -> Processor:
    if model is not None and processing is not None:
        raise InvalidPayloadError("give either model or processing, not both")
    if isinstance(processing, Processor):
        return processing
    return build_processor(processing if processing is not None else model)


def source_requests(
    video_reference: VideoReference | Sequence[VideoReference],
    *,
    max_fps: float | None = None,
    source_buffer_filling_strategy: BufferFillingStrategy | str | None = None,
    source_buffer_consumption_strategy: BufferConsumptionStrategy | str | None = None,
    video_source_properties: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    batch_collection_timeout: float | None = None,
    decoding_buffer_size: int | None = DEFAULT_DECODING_BUFFER_SIZE,
    realtime_replay: bool = False,
    decoder: DecoderBackendName | str | None = None,
    pixels: bool = True,
) -> list[SubscriptionRequest]:
    """What a pipeline asks of each of its sources (one per video reference), validated:
    an InvalidPayloadError names a wrong setting; a missing file is a request whose source
    will be reported in ERROR (as the reference reports a dead camera). ``pixels`` False:
    the pipeline's processing reads only its frames' metadata and size."""
    references = [
        os.fspath(r) if isinstance(r, os.PathLike) else r  # a pathlib.Path is a path too
        for r in (
            video_reference if isinstance(video_reference, list | tuple) else [video_reference]
        )
    ]
    if not references:
        raise InvalidPayloadError("video_reference list is empty")
    if max_fps is not None and (
        isinstance(max_fps, bool) or not isinstance(max_fps, int | float) or not max_fps > 0
    ):
        raise InvalidPayloadError(f"max_fps must be a positive number, got {max_fps!r}")
    if decoding_buffer_size is None:
        decoding_buffer_size = DEFAULT_DECODING_BUFFER_SIZE
    if decoding_buffer_size < 1:
        raise InvalidPayloadError(f"decoding_buffer_size must be >= 1, got {decoding_buffer_size}")
    if batch_collection_timeout is not None and batch_collection_timeout < 0:
        raise InvalidPayloadError(
            f"batch_collection_timeout must be >= 0, got {batch_collection_timeout}"
        )
    filling = _strategy(
        source_buffer_filling_strategy, BufferFillingStrategy, "source_buffer_filling_strategy"
    )
    consumption = _strategy(
        source_buffer_consumption_strategy,
        BufferConsumptionStrategy,
        "source_buffer_consumption_strategy",
    )
    backend = None
    if decoder is not None:
        try:
            backend = DecoderBackendName(str(getattr(decoder, "value", decoder)).lower())
        except ValueError:
            raise InvalidPayloadError(f"decoder {decoder!r} is not one of opencv, pyav") from None
    if isinstance(video_source_properties, list | tuple):
        if len(video_source_properties) != len(references):
            raise InvalidPayloadError(
                f"video_source_properties has {len(video_source_properties)} entries "
                f"for {len(references)} video references"
            )
        properties = [dict(p or {}) for p in video_source_properties]
    else:
        single: dict[str, Any] = (
            dict(video_source_properties) if isinstance(video_source_properties, dict) else {}
        )
        properties = [dict(single) for _ in references]
    requests = []
    for source_id, (reference, props) in enumerate(zip(references, properties, strict=True)):
        try:
            parsed = parse_reference(reference)
            missing: str | None = None
        except NotFoundError as exc:  # reported as a source in ERROR, like a dead camera
            parsed = None
            missing = exc.message
        requests.append(
            SubscriptionRequest(
                source_id=source_id,
                reference=parsed,
                raw_reference=str(reference),
                not_found=missing,
                max_fps=float(max_fps) if max_fps is not None else None,
                filling_strategy=filling,
                consumption_strategy=consumption,
                buffer_size=decoding_buffer_size,
                video_source_properties=props,
                backend=backend,
                realtime=bool(realtime_replay),
                pixels=pixels,
            )
        )
    return requests


class Pipeline:
    """Sources → processing → ``on_prediction`` / ``results()``. See the module docstring.

    ``model``: a registered model's name or a :class:`ModelSpec` (thresholds, class filter);
    ``processing``: any :data:`ProcessingSpec` (a workflow) or :class:`Processor` instead; with
    neither, frames pass through with their metadata. ``on_frame(frame, output, metadata)``:
    shown every frame in place, right after its output was composed (a
    :class:`~framepipe.core.processing.processor.FrameTap`; the frame is valid only during the
    call — draw on a copy, e.g. with ``annotate``). ``inference``: where models run (default:
    this process's shared engines). ``hub``: where sources come from (default: decode processes
    of this pipeline's own). ``hold_results``: whether a full result buffer holds processing back
    (True), drops its oldest entry (False), or holds only while a ``results()`` iterator is open
    (None, the default). ``results_sink``: where results go instead of this process's memory
    (a stream manager's shared result buffer, which the manager drains; ``results()`` is then
    not available).

    ``fail_loudly`` (default: when the pipeline owns its sources, i.e. no ``hub`` was given — the
    Python API): ``start()`` raises a :class:`~framepipe.errors.NotFoundError` for a path that
    does not exist and an :class:`~framepipe.errors.OperationError` for a file no decoder can
    open, and a pipeline that fails later (every source failed, or processing broke) ends
    ``results()`` with its exception after the results it produced; ``join()`` and leaving the
    ``with`` block raise it too (once). A stream manager's worker passes its own ``hub`` and
    reports failures in the status instead, as the reference does.
    """

    def __init__(
        self,
        video_reference: VideoReference | Sequence[VideoReference],
        *,
        model: str | ModelSpec | None = None,
        processing: ProcessingSpec | Processor | None = None,
        on_prediction: OnPrediction | None = None,
        on_frame: FrameCallback | None = None,
        max_fps: float | None = None,
        source_buffer_filling_strategy: BufferFillingStrategy | str | None = None,
        source_buffer_consumption_strategy: BufferConsumptionStrategy | str | None = None,
        video_source_properties: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        batch_collection_timeout: float | None = None,
        decoding_buffer_size: int | None = DEFAULT_DECODING_BUFFER_SIZE,
        results_buffer_size: int = DEFAULT_RESULTS_BUFFER_SIZE,
        results_max_bytes: int | None = DEFAULT_RESULTS_MAX_BYTES,
        realtime_replay: bool = False,
        decoder: DecoderBackendName | str | None = None,
        hub: Sources | None = None,
        inference: Inference | None = None,
        hold_results: bool | None = None,
        results_sink: ResultSink | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        name: str = "",
        fail_loudly: bool | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise InvalidPayloadError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if results_buffer_size < 1:
            raise InvalidPayloadError(
                f"results_buffer_size must be >= 1, got {results_buffer_size}"
            )
        self._processor = _processing_processor(model, processing)
        if on_frame is not None:
            self._processor = FrameTap(self._processor, on_frame)
        self._requests = source_requests(
            video_reference,
            max_fps=max_fps,
            source_buffer_filling_strategy=source_buffer_filling_strategy,
            source_buffer_consumption_strategy=source_buffer_consumption_strategy,
            video_source_properties=video_source_properties,
            batch_collection_timeout=batch_collection_timeout,
            decoding_buffer_size=decoding_buffer_size,
            realtime_replay=realtime_replay,
            decoder=decoder,
            pixels=self._processor.reads_pixels,
        )
        self._name = name
        self._on_prediction = on_prediction
        self._batch_collection_timeout = batch_collection_timeout
        self._own_hub = hub is None
        self._hub: Sources = hub if hub is not None else SourceHub(share=False)
        self._inference = inference
        self._channel: InferenceChannel | None = None
        self._final_inference: ChannelState | None = None  # the channel's, once it closed
        self._subscriptions: list[Subscription] = []
        self._shared_sink = results_sink is not None
        self._sink: ResultSink = (
            results_sink
            if results_sink is not None
            else InMemoryBufferSink(
                results_buffer_size, max_bytes=results_max_bytes, size_of=PipelineResult.wire_bytes
            )
        )
        self._hold_results = hold_results
        self._fail_loudly = hub is None if fail_loudly is None else fail_loudly
        self._error: FramepipeError | None = None  # why it FAILED, once it has
        self._error_raised = False
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._flight = threading.Condition()
        self._seq = itertools.count(1)
        self._readers = 0  # results() iterators open now
        self._results_produced = 0
        self._processing_errors = 0
        self._last_processing_error: str | None = None
        self._frames_failed: dict[str, int] = {}
        self._failure: str | None = None
        self._events: deque[StatusUpdate] = deque(maxlen=_EVENTS_KEPT)
        self._latencies = {r.source_id: _Latencies() for r in self._requests}
        self._throughput: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._stats_lock = threading.Lock()  # status() reads what the processing threads write
        self._state = PipelineState.NOT_STARTED
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._closed_reports: list[SourceReport] = []  # the sources' last reports once closed
        self._closed_events: list[StatusUpdate] = []

    # -- life cycle -------------------------------------------------------------------------

    @property
    def requests(self) -> list[SubscriptionRequest]:
        """What this pipeline asks of each of its sources (one per video reference)."""
        return list(self._requests)

    @property
    def processor(self) -> Processor:
        return self._processor

    @property
    def sink(self) -> ResultSink:
        """The pipeline's result buffer (what ``consume_result`` and ``results()`` drain)."""
        return self._sink

    def start(self, *, begun_at: datetime | None = None) -> Pipeline:
        """Start the sources and the processing (returns immediately). ``begun_at``: when the
        pipeline's life began, if earlier than now (a stream manager admits its sources first)."""
        with self._lock:
            if self._state is not PipelineState.NOT_STARTED:
                raise OperationError(f"pipeline already started (state {self._state.value})")
            if self._fail_loudly:
                missing = next((r.not_found for r in self._requests if r.not_found), None)
                if missing is not None:
                    self._refuse(NotFoundError(missing))
            self._started_at = time.monotonic()
            self._events.append(
                StatusUpdate(
                    begun_at or datetime.now(),
                    SEVERITY_INFO,
                    "INFERENCE_THREAD_STARTED",
                    {},
                    "inference_pipeline",
                )
            )
            try:
                if self._processor.model is not None:
                    inference = self._inference if self._inference is not None else local_engine()
                    self._channel = inference.open_channel(self._processor.model, self._name)
                for request in self._requests:
                    self._subscriptions.append(self._hub.subscribe(request))
                if self._fail_loudly:
                    self._check_files_open()
            except BaseException as exc:
                self._close_sources()
                self._close_channel()
                if isinstance(exc, FramepipeError) and self._fail_loudly:
                    self._refuse(exc)
                raise
            self._state = PipelineState.RUNNING
            self._thread = threading.Thread(
                target=self._run, name="framepipe-pipeline", daemon=True
            )
            self._thread.start()
        return self

    def _check_files_open(self, timeout: float = _OPEN_TIMEOUT_S) -> None:
        """Wait until each file source has opened or failed to (its decode process tried);
        an OperationError names the first that failed. Live sources are not waited for: they
        retry until the stream comes."""
        deadline = time.monotonic() + timeout
        for request, subscription in zip(self._requests, self._subscriptions, strict=False):
            if request.reference is None or not request.reference.is_file:
                continue
            while (
                subscription.state in (StreamState.NOT_STARTED, StreamState.INITIALISING)
                and time.monotonic() < deadline
            ):
                time.sleep(_OPEN_POLL_S)
            if subscription.state is StreamState.ERROR:
                cause = subscription.report().last_error
                raise OperationError(
                    cause or f"video_reference {request.reference.masked!r} could not be opened"
                )

    def _refuse(self, error: FramepipeError) -> NoReturn:
        """start() failed loudly: the pipeline is FAILED with that cause, and owns nothing."""
        self._state, self._failure = PipelineState.FAILED, error.message
        self._error, self._error_raised = error, True
        if self._own_hub:
            self._hub.close()
        raise error

    def mute(self) -> None:
        """Keep decoding but drop every frame (live sources stay connected and fresh)."""
        self._set_mode(PipelineState.MUTED)

    def pause(self) -> None:
        """Stop reading files; live sources keep their connection but deliver nothing."""
        self._set_mode(PipelineState.PAUSED)

    def resume(self) -> None:
        self._set_mode(PipelineState.RUNNING)

    def _set_mode(self, mode: PipelineState) -> None:
        with self._lock:
            if self._state in (PipelineState.NOT_STARTED, PipelineState.TERMINATED):
                raise OperationError(
                    f"cannot {mode.value.lower()} a pipeline that is {self._state.value}"
                )
            if self._state.is_final:
                return
            for subscription in self._subscriptions:
                if mode is PipelineState.MUTED:
                    subscription.mute()
                elif mode is PipelineState.PAUSED:
                    subscription.pause()
                else:
                    subscription.resume()
            self._state = mode

    def terminate(self, timeout: float = 10.0) -> None:
        """Stop processing and every source; release every slot and segment. Idempotent.
        Results already buffered stay readable."""
        with self._lock:
            if self._state is PipelineState.TERMINATED:
                return
            self._stop.set()
            thread = self._thread
        self._sink.close()  # a producer waiting for room gives up
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._close_sources()
            if self._own_hub:
                self._hub.close()
            self._close_channel()
            self._state = PipelineState.TERMINATED
        self._sink.wake()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until processing has stopped (finished or terminated); True if it has. A
        pipeline that fails loudly raises its failure here once it has stopped FAILED."""
        thread = self._thread
        if thread is None:
            return self._state is not PipelineState.NOT_STARTED
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._raise_failure()
        return True

    @property
    def error(self) -> FramepipeError | None:
        """Why the pipeline FAILED (None while it has not)."""
        return self._error

    def _raise_failure(self) -> None:
        if self._fail_loudly and self._error is not None:
            self._error_raised = True
            raise self._error

    @property
    def finished(self) -> bool:
        """Nothing more will be produced: finished, failed or terminated."""
        return self._state.is_final

    @property
    def state(self) -> PipelineState:
        return self._state

    def __enter__(self) -> Pipeline:
        if self._state is PipelineState.NOT_STARTED:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.terminate()
        if exc_type is None and not self._error_raised:
            self._raise_failure()  # an on_prediction user learns of the failure here

    # -- results ----------------------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[PipelineResult]:
        """Results in order until the pipeline has nothing more; ``timeout`` bounds each wait.

        From this call until the iterator is exhausted or closed, a full result buffer holds the
        processing back, so every result reaches the reader (``on_prediction`` sees every result
        either way).
        """
        if self._state is PipelineState.NOT_STARTED:
            raise OperationError("pipeline not started: call start() before results()")
        if self._shared_sink:
            raise OperationError(
                "this pipeline's results go to a shared result buffer: read them from there"
            )
        return _ResultReader(self, timeout)

    def _add_reader(self, n: int) -> None:
        with self._lock:
            self._readers += n
        self._sink.wake()

    def _next_result(self, timeout: float | None) -> PipelineResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            taken: list[PipelineResult] = self._sink.consume(1)  # in memory: see results()
            if taken:
                return taken[0]
            if self._processing_done():
                taken = self._sink.consume(1)
                return taken[0] if taken else None
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                return None
            self._sink.wait(left)

    def _processing_done(self) -> bool:
        thread = self._thread
        return self._state is PipelineState.TERMINATED or (
            thread is not None and not thread.is_alive()
        )

    def _hold(self) -> bool:
        if self._hold_results is not None:
            return self._hold_results
        return self._readers > 0

    # -- processing -------------------------------------------------------------------------

    def _event(
        self, event_type: str, payload: dict[str, Any] | None = None, severity: int = SEVERITY_INFO
    ) -> None:
        self._events.append(
            StatusUpdate(datetime.now(), severity, event_type, payload or {}, "inference_pipeline")
        )

    def _processing_error(self, exc: BaseException, frames: int) -> None:
        reason = getattr(exc, "reason", None) or "processing_error"
        with self._stats_lock:
            self._processing_errors += 1
            self._last_processing_error = f"{type(exc).__name__}: {exc}"
            self._frames_failed[reason] = self._frames_failed.get(reason, 0) + frames
        self._event(
            "INFERENCE_ERROR",
            {
                "error_type": type(exc).__name__,
                "error_message": str(exc),
                "error_context": "inference_thread",
            },
            SEVERITY_ERROR,
        )

    def _run(self) -> None:
        collector = BatchCollector(self._subscriptions, self._batch_collection_timeout)
        crashed: BaseException | None = None
        try:
            while not self._stop.is_set():
                # Room first, then the frames: a live source's batch is taken when it can go
                # to inference at once, so it is the freshest one (not one that waited here).
                if not self._take_flight_slot():
                    break
                batch = collector.collect(self._stop)
                if batch is None or not any(frame is not None for frame in batch):
                    self._land()
                    if batch is None:
                        break
                    continue
                job = _Job(next(self._seq), batch, time.time_ns())
                channel = self._channel
                if channel is None:
                    self._complete(job, None)
                    continue
                try:
                    channel.submit(
                        [None if f is None else SubmittedFrame(f.image, f.ref) for f in batch],
                        functools.partial(self._inferred, job),
                    )
                except Exception as exc:
                    self._complete(job, exc)
            self._wait_in_flight()
        except Exception as exc:  # a broken pipeline must not hang: report it
            logger.exception("pipeline processing loop failed")
            crashed = exc
            self._processing_error(exc, 0)
        finally:
            collector.close()
            self._event("INFERENCE_THREAD_FINISHED")
            with self._lock:
                if self._state is not PipelineState.TERMINATED and not self._stop.is_set():
                    self._state, self._failure = self._final_state(crashed)
                    if self._state is PipelineState.FAILED:
                        failure = self._failure or "failed"
                        self._error = InternalError(failure) if crashed else OperationError(failure)
                    # Nothing more to read or run: give the sources and the model's channel
                    # back now; the results stay.
                    self._close_sources()
                    self._close_channel()
            self._sink.wake()

    def _final_state(self, crashed: BaseException | None) -> tuple[PipelineState, str | None]:
        if crashed is not None:
            return PipelineState.FAILED, f"processing failed: {type(crashed).__name__}: {crashed}"
        states = [s.state for s in self._subscriptions]
        if states and all(state is StreamState.ERROR for state in states):
            errors = [s.report().last_error or "failed" for s in self._subscriptions]
            return PipelineState.FAILED, "every video source failed: " + "; ".join(errors)
        return PipelineState.FINISHED, None

    def _take_flight_slot(self) -> bool:
        with self._flight:
            while self._in_flight >= self._max_in_flight:
                if self._stop.is_set():
                    return False
                self._flight.wait(0.1)
            self._in_flight += 1
            return True

    def _land(self) -> None:
        with self._flight:
            self._in_flight -= 1
            self._flight.notify_all()

    def _wait_in_flight(self) -> None:
        """Every batch in flight completes (bounded once the pipeline is stopping)."""
        deadline: float | None = None
        with self._flight:
            while self._in_flight:
                if self._stop.is_set():
                    if deadline is None:
                        deadline = time.monotonic() + _DRAIN_ON_STOP_S
                    elif time.monotonic() > deadline:
                        logger.warning("%d batches still in inference at stop", self._in_flight)
                        return
                self._flight.wait(0.1)

    def _inferred(self, job: _Job, outcome: Any) -> None:
        """The channel's callback, on its delivery thread, in submission order: the batch is
        completed there (a result held back under WAIT delays this channel only; the engine
        goes on with the others)."""
        self._complete(job, outcome)

    @staticmethod
    def _release(batch: Sequence[LeasedFrame | None]) -> None:
        """Give the batch's slots back (safe after the sources closed: a no-op then)."""
        for frame in batch:
            if frame is not None and frame.lease is not None:
                frame.lease.release()

    def _complete(self, job: _Job, outcome: Any) -> None:
        """Compose one batch's outputs, release its frames, hand the result out (in order)."""
        batch = job.batch
        metadata = [f.metadata if f is not None else None for f in batch]
        outputs: list[Output] | None = None
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            frames: list[FrameImage | None] = [f.image if f is not None else None for f in batch]
            if not self._processor.reads_native_frames:
                # User code gets BGR arrays, whatever the ring holds.
                frames = [None if f is None else as_bgr(f) for f in frames]
            outputs = self._processor.compose(frames, metadata, outcome)
            if len(outputs) != len(batch):
                raise InternalProcessorError(
                    f"the processor returned {len(outputs)} outputs for a batch of {len(batch)} sources"
                )
        except Exception as exc:
            outputs = None
            self._processing_error(exc, sum(1 for f in batch if f is not None))
        finally:
            self._release(batch)
        try:
            if outputs is not None:
                self._emit(job, outputs, metadata)
        finally:
            self._land()

    def _emit(self, job: _Job, outputs: list[Output], metadata: list[FrameMetadata | None]) -> None:
        processed_ns = time.time_ns()
        if self._on_prediction is not None:
            try:
                self._on_prediction(outputs, metadata)
            except Exception as exc:
                with self._stats_lock:
                    self._processing_errors += 1
                    self._last_processing_error = f"on_prediction: {type(exc).__name__}: {exc}"
                self._event(
                    "ON_PREDICTION_ERROR",
                    {
                        "error_type": type(exc).__name__,
                        "error_message": str(exc),
                        "error_context": "on_prediction",
                    },
                    SEVERITY_ERROR,
                )
        if not self._sink.put(
            PipelineResult(outputs, metadata), hold=self._hold(), stop=self._stop
        ):
            return  # stopped while waiting for room
        done_ns = time.time_ns()
        now = time.monotonic()
        with self._stats_lock:
            self._results_produced += 1
            self._throughput.append(now)
            for meta in metadata:
                if meta is None:
                    continue
                lat = self._latencies[meta.source_id]
                inference_s = (processed_ns - job.started_ns) / 1e9
                age_s = (done_ns - meta.capture_ns) / 1e9
                lat.decoding.append((job.started_ns - meta.capture_ns) / 1e9)
                lat.inference.append(inference_s)
                lat.e2e.append(age_s)
                lat.done_at.append(now)
                lat.inference_histogram.observe(inference_s)
                lat.age_histogram.observe(age_s)
                lat.completed += 1
                lat.last_completed_at = now
                lat.last_frame_id = meta.frame_id

    def _close_sources(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                subscription.close()
            except Exception:
                logger.exception("closing source %s failed", subscription.source_id)
        if subscriptions:
            self._closed_reports = [s.report() for s in subscriptions]
            self._closed_events = [e for s in subscriptions for e in s.events()]

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                self._final_inference = channel.state
            with contextlib.suppress(Exception):
                channel.close()

    # -- status -----------------------------------------------------------------------------

    def status(self) -> PipelineReport:
        with self._lock:
            subscriptions = list(self._subscriptions)
            if subscriptions:
                sources = [s.report() for s in subscriptions]
                source_events = [e for s in subscriptions for e in s.events()]
            else:
                sources = list(self._closed_reports)
                source_events = list(self._closed_events)
            state, failure = self._state, self._failure
        references = {s.source_id: s.reference for s in sources}
        errors = [
            _source_error_event(e, references.get(int(e.payload.get("source_id", -1)), "?"))
            for e in source_events
            if e.event_type == "SOURCE_STATE_UPDATE"
            and e.payload.get("new_state") == StreamState.ERROR.value
        ]
        events = sorted([*self._events, *source_events, *errors], key=lambda e: e.timestamp)
        with self._stats_lock:
            now = time.monotonic()
            recent = [t for t in self._throughput if now - t <= 5.0]
            throughput = 0.0
            if len(recent) >= 2:
                span = max(now - recent[0], recent[-1] - recent[0])
                throughput = (len(recent) - 1) / span if span > 0 else 0.0
            latency_reports = []
            for source_id, lat in self._latencies.items():
                kept = _recent_count(lat)
                e2e = _newest(lat.e2e, kept)
                latency_reports.append(
                    LatencyReport(
                        source_id=source_id,
                        frame_decoding_latency=_mean(_newest(lat.decoding, kept)),
                        inference_latency=_mean(_newest(lat.inference, kept)),
                        e2e_latency=_mean(e2e),
                        e2e_latency_p50_ms=_percentile_ms(e2e, 50),
                        e2e_latency_p99_ms=_percentile_ms(e2e, 99),
                        samples=len(e2e),
                    )
                )
            completion = CompletionReport(
                sampled_at_monotonic=now,
                sources=[
                    SourceCompletion(
                        source_id, lat.completed, lat.last_completed_at, lat.last_frame_id
                    )
                    for source_id, lat in self._latencies.items()
                ],
            )
            histograms = [
                SourceHistograms(
                    source_id, lat.inference_histogram.snapshot(), lat.age_histogram.snapshot()
                )
                for source_id, lat in self._latencies.items()
            ]
            produced, errors_count = self._results_produced, self._processing_errors
            last_error, failed = self._last_processing_error, dict(self._frames_failed)
        model = self._processor.model
        channel = self._channel
        inference = self._final_inference
        if channel is not None:
            with contextlib.suppress(Exception):  # a channel closing meanwhile says nothing
                inference = channel.state
        return PipelineReport(
            state=state,
            status_updates=events,
            latency_reports=latency_reports,
            inference_throughput=throughput,
            sources=sources,
            completion=completion,
            results=self._sink.statistics(),
            results_produced=produced,
            processing_errors=errors_count,
            last_processing_error=last_error,
            frames_failed=failed,
            failure=failure,
            model=model.model if model is not None else None,
            uptime_s=(now - self._started_at) if self._started_at else 0.0,
            pid=os.getpid(),
            inference=inference,
            histograms=histograms,
        )


class _ResultReader(Iterator[PipelineResult]):
    """The iterator ``Pipeline.results()`` returns; it counts as a reader from its creation
    until it is exhausted, closed or dropped."""

    def __init__(self, pipeline: Pipeline, timeout: float | None) -> None:
        self._pipeline: Pipeline | None = pipeline
        self._timeout = timeout
        pipeline._add_reader(1)

    def __next__(self) -> PipelineResult:
        pipeline = self._pipeline
        if pipeline is None:
            raise StopIteration
        result = pipeline._next_result(self._timeout)
        if result is None:
            self.close()
            if pipeline._processing_done():
                pipeline._raise_failure()  # after every result it produced
            raise StopIteration
        return result

    def close(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline._add_reader(-1)

    def __del__(self) -> None:
        self.close()


class InternalProcessorError(RuntimeError):
    """The processor broke its contract (wrong number of outputs)."""
