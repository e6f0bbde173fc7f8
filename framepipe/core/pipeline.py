"""The public ``Pipeline``: video sources → processor → ``on_prediction`` and ``results()``.

A pipeline subscribes to one source per ``video_reference`` (through a :class:`SourceHub`,
which may be shared by several pipelines so that a source is decoded once), collects a batch
— the latest frame of each source within ``batch_collection_timeout`` — and runs the
processor on the frames *in place* in their ring slots. The slots are released as soon as
the processor returns; ``on_prediction(outputs, frames_metadata)`` and the ``results()``
iterator see only the outputs and the metadata.

    with Pipeline("video.mp4") as pipeline:          # processor=None: passthrough
        for result in pipeline.results():
            print(result.outputs, result.frames_metadata)

The processing loop runs in one thread of the calling process; decoding runs in decode
processes. ``status()`` returns a typed :class:`PipelineReport` whose ``to_wire()`` has the
reference stream manager's status-report keys plus framepipe's statistics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from framepipe.core.sources.entities import (
    SEVERITY_ERROR,
    SEVERITY_INFO,
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    FrameMetadata,
    SourceReport,
    StatusUpdate,
)
from framepipe.core.sources.hub import SourceHub, Subscription, SubscriptionRequest
from framepipe.core.sources.multiplexer import BatchCollector, LeasedFrame
from framepipe.core.sources.reference import parse_reference
from framepipe.protocol.errors import InvalidPayloadError, NotFoundError, OperationError

logger = logging.getLogger(__name__)

DEFAULT_DECODING_BUFFER_SIZE = 64
DEFAULT_RESULTS_BUFFER_SIZE = 64
_LATENCY_WINDOW = 256
_EVENTS_KEPT = 512

Output = dict[str, Any] | None
OnPrediction = Callable[[list[Output], list[FrameMetadata | None]], None]


@runtime_checkable
class Processor(Protocol):
    """What a pipeline runs on each batch (BRIEF contract 3).

    ``frames`` are BGR uint8 HxWx3 views into ring slots, valid only during the call.
    Returns one JSON-able dict per source (None where the source had no frame).
    """

    def process(
        self,
        frames: Sequence[npt.NDArray[np.uint8] | None],
        frames_metadata: Sequence[FrameMetadata | None],
    ) -> list[Output]: ...


class PipelineState(StrEnum):
    NOT_STARTED = "NOT_STARTED"
    RUNNING = "RUNNING"
    MUTED = "MUTED"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"  # every source ENDED or ERROR and every frame processed
    TERMINATED = "TERMINATED"


@dataclass(frozen=True)
class PipelineResult:
    """One processing step: one output and one metadata entry per source."""

    outputs: list[Output]
    frames_metadata: list[FrameMetadata | None]

    def to_wire(self) -> dict[str, Any]:
        return {
            "outputs": list(self.outputs),
            "frames_metadata": [
                m.to_wire() if m is not None else None for m in self.frames_metadata
            ],
        }


@dataclass(frozen=True)
class LatencyReport:
    """Mean latencies (seconds) of one source's recent frames, as the reference reports them.

    ``frame_decoding_latency``: capture → processing start; ``inference_latency``: the
    processor's time; ``e2e_latency``: capture → result handed out.
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
class PipelineReport:
    """Typed status of a pipeline; ``to_wire()`` is the reference's ``report`` object."""

    state: PipelineState
    status_updates: list[StatusUpdate]
    latency_reports: list[LatencyReport]
    inference_throughput: float
    sources: list[SourceReport]
    results_produced: int
    results_dropped: int
    processing_errors: int
    last_processing_error: str | None
    uptime_s: float

    @property
    def sources_finished(self) -> bool:
        return all(s.state.is_final for s in self.sources)

    def to_wire(self) -> dict[str, Any]:
        return {
            "video_source_status_updates": [u.to_wire() for u in self.status_updates],
            "latency_reports": [r.to_wire() for r in self.latency_reports],
            "inference_throughput": self.inference_throughput,
            "sources_metadata": [s.to_wire_metadata() for s in self.sources],
            "framepipe": {
                "state": self.state.value,
                "uptime_s": self.uptime_s,
                "results_produced": self.results_produced,
                "results_dropped": self.results_dropped,
                "processing_errors": self.processing_errors,
                "last_processing_error": self.last_processing_error,
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
            },
        }


@dataclass
class _Latencies:
    decoding: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    inference: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    e2e: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))


def passthrough_outputs(frames_metadata: Sequence[FrameMetadata | None]) -> list[Output]:
    """What ``processor=None`` produces: frame metadata only."""
    return [
        None
        if m is None
        else {"frame_id": m.frame_id, "image": {"width": m.width, "height": m.height}}
        for m in frames_metadata
    ]


def _mean(values: deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _percentile_ms(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.fromiter(values, dtype=np.float64), q)) * 1000.0


def _strategy(
    value: object, enum: type[BufferFillingStrategy] | type[BufferConsumptionStrategy], name: str
) -> Any:
    if value is None or isinstance(value, enum):
        return value
    try:
        return enum(str(value).upper())
    except ValueError:
        raise InvalidPayloadError(
            f"{name} {value!r} is not one of {', '.join(m.value for m in enum)}"
        ) from None


class Pipeline:
    """Sources → processor → ``on_prediction`` / ``results()``. See the module docstring."""

    def __init__(
        self,
        video_reference: str | int | Sequence[str | int],
        *,
        processor: Processor | None = None,
        on_prediction: OnPrediction | None = None,
        max_fps: float | None = None,
        source_buffer_filling_strategy: BufferFillingStrategy | str | None = None,
        source_buffer_consumption_strategy: BufferConsumptionStrategy | str | None = None,
        video_source_properties: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        batch_collection_timeout: float | None = None,
        decoding_buffer_size: int | None = DEFAULT_DECODING_BUFFER_SIZE,
        results_buffer_size: int = DEFAULT_RESULTS_BUFFER_SIZE,
        decoder: DecoderBackendName | str | None = None,
        hub: SourceHub | None = None,
    ) -> None:
        references = (
            list(video_reference)
            if isinstance(video_reference, list | tuple)
            else [video_reference]
        )
        if not references:
            raise InvalidPayloadError("video_reference list is empty")
        if max_fps is not None and (not isinstance(max_fps, int | float) or max_fps <= 0):
            raise InvalidPayloadError(f"max_fps must be a positive number, got {max_fps!r}")
        if decoding_buffer_size is None:
            decoding_buffer_size = DEFAULT_DECODING_BUFFER_SIZE
        if decoding_buffer_size < 1:
            raise InvalidPayloadError(
                f"decoding_buffer_size must be >= 1, got {decoding_buffer_size}"
            )
        if results_buffer_size < 1:
            raise InvalidPayloadError(
                f"results_buffer_size must be >= 1, got {results_buffer_size}"
            )
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
                raise InvalidPayloadError(
                    f"decoder {decoder!r} is not one of opencv, pyav"
                ) from None
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

        self._requests: list[SubscriptionRequest] = []
        for source_id, (reference, props) in enumerate(zip(references, properties, strict=True)):
            try:
                parsed = parse_reference(reference)
                missing: str | None = None
            except NotFoundError as exc:  # reported as a source in ERROR, like a dead camera
                parsed = None
                missing = exc.message
            self._requests.append(
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
                )
            )
        self._processor = processor
        self._on_prediction = on_prediction
        self._batch_collection_timeout = batch_collection_timeout
        self._own_hub = hub is None
        self._hub = hub if hub is not None else SourceHub(share=False)
        self._subscriptions: list[Subscription] = []
        self._results: deque[PipelineResult] = deque(maxlen=results_buffer_size)
        self._results_cond = threading.Condition()
        self._readers = 0  # results() iterators open now
        self._results_produced = 0
        self._results_dropped = 0
        self._processing_errors = 0
        self._last_processing_error: str | None = None
        self._events: deque[StatusUpdate] = deque(maxlen=_EVENTS_KEPT)
        self._latencies = {r.source_id: _Latencies() for r in self._requests}
        self._throughput: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._stats_lock = threading.Lock()  # status() reads what the processing thread appends
        self._state = PipelineState.NOT_STARTED
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._closed_reports: list[SourceReport] = []  # the sources' last reports once closed
        self._closed_events: list[StatusUpdate] = []

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Start the sources and the processing thread (returns immediately)."""
        with self._lock:
            if self._state is not PipelineState.NOT_STARTED:
                raise OperationError(f"pipeline already started (state {self._state.value})")
            self._started_at = time.monotonic()
            try:
                for request in self._requests:
                    self._subscriptions.append(self._hub.subscribe(request))
            except BaseException:
                self._close_sources()
                raise
            self._state = PipelineState.RUNNING
            self._thread = threading.Thread(
                target=self._run, name="framepipe-pipeline", daemon=True
            )
            self._thread.start()
        return self

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
            if self._state is PipelineState.FINISHED:
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
        """Stop processing and every source; release every slot and segment. Idempotent."""
        with self._lock:
            if self._state is PipelineState.TERMINATED:
                return
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            self._close_sources()
            if self._own_hub:
                self._hub.close()
            self._state = PipelineState.TERMINATED
        with self._results_cond:
            self._results_cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until processing has stopped (sources finished or terminated); True if it has."""
        thread = self._thread
        if thread is None:
            return self._state is not PipelineState.NOT_STARTED
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def requests(self) -> list[SubscriptionRequest]:
        """What this pipeline asks of each of its sources (one per video reference)."""
        return list(self._requests)

    @property
    def finished(self) -> bool:
        """True when every source is ENDED or ERROR (or the pipeline was terminated)."""
        if self._state is PipelineState.TERMINATED:
            return True
        if not self._subscriptions:
            return False
        return all(s.state.is_final for s in self._subscriptions)

    @property
    def state(self) -> PipelineState:
        return self._state

    def __enter__(self) -> Pipeline:
        if self._state is PipelineState.NOT_STARTED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    # -- results ----------------------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[PipelineResult]:
        """Results in order until the pipeline stops; ``timeout`` bounds each wait (then stops).

        From this call until the iterator is exhausted or closed, a full results buffer holds
        the processing back, so every result reaches the reader. With nobody reading, the
        buffer keeps the newest ``results_buffer_size`` results and counts the ones it drops
        (``on_prediction`` sees every result either way).
        """
        if self._state is PipelineState.NOT_STARTED:
            raise OperationError("pipeline not started: call start() before results()")
        return _ResultReader(self, timeout)

    def _add_reader(self, n: int) -> None:
        with self._results_cond:
            self._readers += n
            self._results_cond.notify_all()

    def _next_result(self, timeout: float | None) -> PipelineResult | None:
        with self._results_cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._results:
                if self._processing_done():
                    return None
                left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if left <= 0:
                    return None
                self._results_cond.wait(left)
            result = self._results.popleft()
            self._results_cond.notify_all()
            return result

    def _processing_done(self) -> bool:
        thread = self._thread
        return self._state is PipelineState.TERMINATED or (
            thread is not None and not thread.is_alive()
        )

    # -- processing loop --------------------------------------------------------------------

    def _event(
        self, event_type: str, payload: dict[str, Any] | None = None, severity: int = SEVERITY_INFO
    ) -> None:
        self._events.append(
            StatusUpdate(datetime.now(), severity, event_type, payload or {}, "inference_pipeline")
        )

    def _run(self) -> None:
        self._event("INFERENCE_THREAD_STARTED")
        collector = BatchCollector(self._subscriptions, self._batch_collection_timeout)
        try:
            warmup = getattr(self._processor, "warmup", None)
            if callable(warmup):
                warmup()
            while not self._stop.is_set():
                batch = collector.collect(self._stop)
                if batch is None:
                    break
                if any(frame is not None for frame in batch):
                    self._process(batch)
        except Exception as exc:  # a broken processor must not leave a hung pipeline
            logger.exception("pipeline processing loop failed")
            self._processing_errors += 1
            self._last_processing_error = f"{type(exc).__name__}: {exc}"
            self._event("INFERENCE_ERROR", {"error": self._last_processing_error}, SEVERITY_ERROR)
        finally:
            collector.close()
            closer = getattr(self._processor, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()
            self._event("INFERENCE_THREAD_FINISHED")
            with self._lock:
                if self._state is not PipelineState.TERMINATED and not self._stop.is_set():
                    self._state = PipelineState.FINISHED
            with self._results_cond:
                self._results_cond.notify_all()

    def _process(self, batch: list[LeasedFrame | None]) -> None:
        metadata = [f.metadata if f is not None else None for f in batch]
        started_ns = time.time_ns()
        try:
            if self._processor is None:
                outputs = passthrough_outputs(metadata)
            else:
                frames = [f.image if f is not None else None for f in batch]
                outputs = self._processor.process(frames, metadata)
                if len(outputs) != len(batch):
                    raise InternalProcessorError(
                        f"processor returned {len(outputs)} outputs for a batch of {len(batch)} sources"
                    )
        except Exception as exc:
            self._processing_errors += 1
            self._last_processing_error = f"{type(exc).__name__}: {exc}"
            self._event("INFERENCE_ERROR", {"error": self._last_processing_error}, SEVERITY_ERROR)
            return
        finally:
            for frame, subscription in zip(batch, self._subscriptions, strict=True):
                if frame is not None:
                    subscription.release(frame)
        processed_ns = time.time_ns()
        if self._on_prediction is not None:
            try:
                self._on_prediction(outputs, metadata)
            except Exception as exc:
                self._processing_errors += 1
                self._last_processing_error = f"on_prediction: {type(exc).__name__}: {exc}"
                self._event(
                    "ON_PREDICTION_ERROR", {"error": self._last_processing_error}, SEVERITY_ERROR
                )
        result = PipelineResult(outputs, metadata)
        with self._results_cond:
            # Someone is reading results(): wait for the reader rather than drop a result.
            while (
                self._readers
                and len(self._results) == self._results.maxlen
                and not self._stop.is_set()
            ):
                self._results_cond.wait(0.1)
            if len(self._results) == self._results.maxlen:
                self._results_dropped += 1
            self._results.append(result)
            self._results_produced += 1
            self._results_cond.notify_all()
        done_ns = time.time_ns()
        with self._stats_lock:
            self._throughput.append(time.monotonic())
            for meta in metadata:
                if meta is None:
                    continue
                lat = self._latencies[meta.source_id]
                lat.decoding.append((started_ns - meta.capture_ns) / 1e9)
                lat.inference.append((processed_ns - started_ns) / 1e9)
                lat.e2e.append((done_ns - meta.capture_ns) / 1e9)

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
        events = sorted([*self._events, *source_events], key=lambda e: e.timestamp)
        with self._stats_lock:
            now = time.monotonic()
            recent = [t for t in self._throughput if now - t <= 5.0]
            throughput = 0.0
            if len(recent) >= 2:
                span = max(now - recent[0], recent[-1] - recent[0])
                throughput = (len(recent) - 1) / span if span > 0 else 0.0
            latency_reports = [
                LatencyReport(
                    source_id=source_id,
                    frame_decoding_latency=_mean(lat.decoding),
                    inference_latency=_mean(lat.inference),
                    e2e_latency=_mean(lat.e2e),
                    e2e_latency_p50_ms=_percentile_ms(lat.e2e, 50),
                    e2e_latency_p99_ms=_percentile_ms(lat.e2e, 99),
                    samples=len(lat.e2e),
                )
                for source_id, lat in self._latencies.items()
            ]
        return PipelineReport(
            state=self._state,
            status_updates=events,
            latency_reports=latency_reports,
            inference_throughput=throughput,
            sources=sources,
            results_produced=self._results_produced,
            results_dropped=self._results_dropped,
            processing_errors=self._processing_errors,
            last_processing_error=self._last_processing_error,
            uptime_s=(now - self._started_at) if self._started_at else 0.0,
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
