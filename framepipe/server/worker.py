"""The pipeline worker: one child process per pipeline, driven by the manager over a pipe.

A worker starts idle: it dies with the manager (PR_SET_PDEATHSIG), ignores SIGINT (a Ctrl-C
reaches the whole process group; the manager decides how its workers end), imports everything
heavy (numpy, OpenCV, PyAV, ONNX Runtime, the pipeline code) and reports ready. An ``init``
command then builds a :class:`framepipe.core.pipeline.Pipeline` from the wire payload, with an
:class:`InMemoryBufferSink` as its prediction sink, and starts it. Each command is answered with
the request id it came with. SIGTERM ends the pipeline gracefully; so does ``terminate``; so
does ``consumption_timeout`` when nobody consumed results for that long.

This module is imported by the manager too (for :func:`worker_main`), so it imports nothing
heavy at module level.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from framepipe.core.processes import die_with_parent
from framepipe.core.sinks import InMemoryBufferSink, OnPrediction
from framepipe.errors import InvalidPayloadError, OperationError
from framepipe.protocol.commands import describe_validation_error
from framepipe.protocol.payloads import InitialisePipelinePayload
from framepipe.server._messages import (
    SourceUpdates,
    WorkerExiting,
    WorkerFailure,
    WorkerOp,
    WorkerReady,
    WorkerReply,
    WorkerRequest,
)

if TYPE_CHECKING:  # imported lazily at run time: the manager imports this module too
    from framepipe.core.pipeline import Pipeline
    from framepipe.core.processing import ProcessingSpec, Processor
    from framepipe.core.sources.hub import SourceHub
    from framepipe.core.sources.remote import RemoteHub, SharedSource

# Key of the `init` payload under which the manager lists the sources this worker reads from
# the manager's shared decoders (a list of SharedSource; never on the wire).
SHARED_SOURCES_KEY = "_framepipe_shared_sources"

log = logging.getLogger("framepipe.worker")

# How often the command loop wakes up to check timeouts when no command arrives.
_POLL_INTERVAL_S = 0.1
# Modules an idle worker imports up front, so that `init` pays none of it.
WARM_MODULES = (
    "numpy",
    "cv2",
    "av",
    "onnxruntime",
    "framepipe.core.shm",
    "framepipe.core.ring",
    "framepipe.core.pipeline",
    "framepipe.core.processing",
)


@dataclass(frozen=True)
class WorkerOptions:
    """What the manager tells a worker when it spawns it."""

    parent_pid: int
    terminate_timeout_s: float = 10.0
    # Models an idle worker loads ahead of time (registered names): an `init` asking for one
    # of them, with the same settings, skips loading and warming the model up.
    preload_models: tuple[str, ...] = ()
    log_level: int = logging.INFO


def warm_imports() -> list[str]:
    """Import the heavy modules now; returns those that could not be imported, and why.

    A module that fails here is not fatal: the worker stays usable for what does not need it,
    and a command that does need it reports the import error itself.
    """
    missing = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def warm_decoders() -> None:
    """Start the decode processes' forkserver now, so that `init` does not wait for it."""
    from framepipe.core.sources.launcher import warm_forkserver

    try:
        warm_forkserver()
    except Exception:
        log.exception("could not start the decode forkserver ahead of time")


def worker_main(conn: Connection, options: WorkerOptions) -> None:
    """Entry point of the worker process (a ``spawn`` context target)."""
    die_with_parent(options.parent_pid)
    logging.basicConfig(
        level=options.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signo, _frame: stop.set())
    started = time.perf_counter()
    missing = warm_imports()
    warm_decoders()
    if missing:
        log.info("worker %d: not available in this build: %s", os.getpid(), ", ".join(missing))
    runner = PipelineRunner(options)
    runner.preload(options.preload_models)
    # One poll object for the life of the worker (Connection.poll builds a selector per call).
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
    try:
        conn.send(WorkerReady(pid=os.getpid(), warmup_s=time.perf_counter() - started))
        while not stop.is_set() and not runner.done:
            expired = runner.check_consumption_timeout()
            if expired is not None:
                conn.send(WorkerExiting(reason=expired))
                break
            if not poller.poll(_POLL_INTERVAL_S * 1000):
                continue
            try:
                message = conn.recv()
            except EOFError:
                break  # the manager closed its end: nothing more will come
            if isinstance(message, SourceUpdates):
                runner.apply(message)  # no reply: the manager does not wait for it
                continue
            conn.send(runner.handle(message))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the manager is gone; PR_SET_PDEATHSIG would end us anyway
    finally:
        runner.close()
        with contextlib.suppress(OSError):
            conn.close()


class PipelineRunner:
    """Owns the worker's one pipeline and its result sink; executes manager commands."""

    def __init__(self, options: WorkerOptions) -> None:
        self._options = options
        self._pipeline: Pipeline | None = None
        self._hub: RemoteHub | None = None  # sources read from the manager's decoders
        self._sink: InMemoryBufferSink | None = None
        self._consumption_timeout_s: float | None = None
        self._preloaded: dict[ProcessingSpec, Processor] = {}
        self._last_consumed = time.monotonic()
        self.done = False

    def handle(self, message: object) -> WorkerReply:
        if not isinstance(message, WorkerRequest):
            return WorkerReply(
                request_id="",
                failure=WorkerFailure.from_exception(
                    InvalidPayloadError(f"worker received an unexpected {type(message).__name__}")
                ),
            )
        try:
            body = self._dispatch(message)
        except Exception as exc:  # every failure becomes a reply; the worker keeps serving
            log.debug("command %s failed", message.op.value, exc_info=True)
            return WorkerReply(message.request_id, failure=WorkerFailure.from_exception(exc))
        return WorkerReply(message.request_id, body=body)

    def _dispatch(self, request: WorkerRequest) -> dict[str, Any]:
        op = request.op
        if op is WorkerOp.INIT:
            self._initialise(request.payload)
            return {}
        if op is WorkerOp.HEALTH:
            return {"running": self._pipeline is not None, "finished": self._finished()}
        if op is WorkerOp.TERMINATE:
            self.close()
            return {}
        pipeline = self._require_pipeline(op)
        if op is WorkerOp.STATUS:
            return {"report": pipeline.status().to_wire()}
        if op is WorkerOp.MUTE:
            pipeline.mute()
            return {}
        if op is WorkerOp.RESUME:
            pipeline.resume()
            return {}
        if op is WorkerOp.CONSUME:
            return self._consume(request.payload)
        raise InvalidPayloadError(f"unknown worker command {op!r}")

    def _require_pipeline(self, op: WorkerOp) -> Pipeline:
        if self._pipeline is None:
            raise OperationError(f"cannot {op.value}: this worker runs no pipeline")
        return self._pipeline

    def _initialise(self, wire_payload: dict[str, Any]) -> None:
        if self._pipeline is not None:
            raise OperationError("this worker already runs a pipeline")
        wire_payload = dict(wire_payload)
        shared: list[SharedSource] = wire_payload.pop(SHARED_SOURCES_KEY, None) or []
        payload = parse_init_payload(wire_payload)
        sink = InMemoryBufferSink(payload.sink_configuration.results_buffer_size)
        processor = self._processor_for(payload.raw_processing_configuration)
        hub = None
        if shared:
            from framepipe.core.sources.remote import RemoteHub

            hub = RemoteHub(shared)
        pipeline = build_pipeline(
            payload, on_prediction=sink.on_prediction, processor=processor, hub=hub
        )
        try:
            pipeline.start()
        except BaseException:
            with contextlib.suppress(Exception):
                pipeline.terminate()
                pipeline.join(self._options.terminate_timeout_s)
            if hub is not None:
                hub.close()
            raise
        self._pipeline, self._sink, self._hub = pipeline, sink, hub
        self._consumption_timeout_s = payload.consumption_timeout
        self._last_consumed = time.monotonic()

    def apply(self, updates: SourceUpdates) -> None:
        """The manager's latest view of the shared decoders this pipeline reads."""
        if self._hub is not None:
            for snapshot in updates.snapshots:
                self._hub.apply(snapshot)

    def _consume(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._sink is not None
        self._last_consumed = time.monotonic()
        excluded = payload.get("excluded_fields") or []
        entries = self._sink.consume(excluded, max_entries=payload.get("max_entries") or 1)
        return {
            "entries": [
                {"outputs": entry.outputs, "frames_metadata": entry.frames_metadata}
                for entry in entries
            ]
        }

    def _finished(self) -> bool:
        return self._pipeline is not None and bool(self._pipeline.finished)

    def check_consumption_timeout(self) -> str | None:
        """End the pipeline if nobody consumed for ``consumption_timeout``; returns why, or None."""
        timeout = self._consumption_timeout_s
        if self._pipeline is None or timeout is None:
            return None
        idle = time.monotonic() - self._last_consumed
        if idle < timeout:
            return None
        self.close()
        return f"no result consumed for {idle:.1f} s (consumption_timeout={timeout:g} s)"

    def preload(self, models: tuple[str, ...]) -> None:
        """Load and warm up ``models`` now (a failure is logged: the worker stays usable)."""
        from framepipe.core.processing import build_processor, processing_spec_from_wire

        for name in models:
            try:
                spec = processing_spec_from_wire({"type": "ModelConfiguration", "model": name})
                self._preloaded[spec] = build_processor(spec)
                log.info("worker %d: model %r loaded ahead of time", os.getpid(), name)
            except Exception:
                log.exception("worker %d: could not preload model %r", os.getpid(), name)

    def _processor_for(self, processing_configuration: dict[str, Any]) -> Processor:
        """A preloaded processor when the configuration asks for exactly that one, else a new one."""
        from framepipe.core.processing import build_processor, processing_spec_from_wire

        spec = processing_spec_from_wire(processing_configuration)
        preloaded = self._preloaded.pop(spec, None)
        return preloaded if preloaded is not None else build_processor(spec)

    def close(self) -> None:
        """Terminate and join the pipeline (idempotent); the worker then exits."""
        pipeline, self._pipeline = self._pipeline, None
        self.done = True
        for processor in self._preloaded.values():
            with contextlib.suppress(Exception):
                processor.close()
        self._preloaded.clear()
        hub, self._hub = self._hub, None
        try:
            if pipeline is not None:
                pipeline.terminate()
                pipeline.join(self._options.terminate_timeout_s)
        except Exception:
            log.exception("terminating the pipeline failed")
        finally:
            if hub is not None:
                hub.close()


def parse_init_payload(wire_payload: dict[str, Any]) -> InitialisePipelinePayload:
    """The typed ``init`` payload (the manager validated it already; this keeps the worker honest)."""
    try:
        return InitialisePipelinePayload.model_validate(wire_payload)
    except ValidationError as error:
        raise InvalidPayloadError(
            f"Invalid 'init' payload: {describe_validation_error(error)}"
        ) from None


def build_pipeline(
    payload: InitialisePipelinePayload,
    on_prediction: OnPrediction,
    processor: Processor | None,
    hub: SourceHub | None = None,
) -> Pipeline:
    """A :class:`Pipeline` from an ``init`` payload, running ``processor`` (None: passthrough)."""
    from framepipe.core.pipeline import Pipeline

    video = payload.video_configuration
    kwargs: dict[str, Any] = {
        "processor": processor,
        "on_prediction": on_prediction,
        "max_fps": video.max_fps,
        "source_buffer_filling_strategy": video.source_buffer_filling_strategy,
        "source_buffer_consumption_strategy": video.source_buffer_consumption_strategy,
        "video_source_properties": video.video_source_properties,
        "batch_collection_timeout": video.batch_collection_timeout,
        "decoding_buffer_size": payload.decoding_buffer_size,
        "hub": hub,
    }
    return Pipeline(video.video_reference, **kwargs)
