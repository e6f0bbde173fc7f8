"""The pipeline worker: one child process per pipeline, driven by the manager over a pipe.

A worker starts idle: it dies with the manager (PR_SET_PDEATHSIG), ignores SIGINT (a Ctrl-C
reaches the whole process group; the manager decides how its workers end), imports what a
pipeline needs (numpy, the frame ring, the pipeline) and reports ready. A
:class:`~framepipe.server.worker.messages.StartPipeline` then builds a
:class:`~framepipe.core.pipeline.Pipeline` whose sources are the rings the manager's decoders
fill (the tickets it was given) and whose model runs in the manager's inference service for
that model. The worker decodes nothing and, with a service, loads no model: it collects
batches, keeps the pipeline's state and its one result buffer, and answers commands, each
with the request id it came with. SIGTERM ends the pipeline gracefully; so does ``Stop``.

This module is imported by the manager too (for :func:`worker_main`), so it imports nothing
heavy at module level.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from framepipe.core.processes import die_with_parent, name_process, pid_alive
from framepipe.errors import InvalidPayloadError, OperationError
from framepipe.protocol.envelope import ResultEntry
from framepipe.server.worker.messages import (
    Consume,
    ConsumeReply,
    Done,
    GetStatus,
    Mute,
    ReplyBody,
    Resume,
    StartPipeline,
    StartWebRTCPipeline,
    StatusReply,
    Stop,
    WorkerFailure,
    WorkerReady,
    WorkerReply,
    WorkerRequest,
)

if TYPE_CHECKING:
    from framepipe.core.inference import Inference
    from framepipe.core.pipeline import Pipeline, PipelineReport
    from framepipe.core.result_buffer import SharedResultBuffer
    from framepipe.core.sources import SourceTicket, Subscription, SubscriptionRequest
    from framepipe.server.inference.client import RemoteInference
    from framepipe.server.webrtc.session import WebRTCSession

log = logging.getLogger("framepipe.worker")

#: The worker's process name (``/proc/<pid>/comm``): workers and decode processes are forked
#: from one template and share its command line.
WORKER_PROCESS_NAME = "fp-worker"
# How often the command loop wakes up when no command arrives (to notice SIGTERM).
_POLL_INTERVAL_S = 0.1
#: A worker with a shared result buffer publishes its report there at least this often, and
#: at most this often while the manager asks for fresher ones (status being read).
REPORT_INTERVAL_S = 2.0
REPORT_WANTED_INTERVAL_S = 0.25
REPORT_LOOK_S = 0.05
# Modules an idle worker imports up front, so that starting a pipeline pays none of it.
WARM_MODULES = (
    "numpy",
    "framepipe.core.shm",
    "framepipe.core.ring",
    "framepipe.core.sources.subscription",
    "framepipe.core.pipeline",
)


@dataclass(frozen=True)
class WorkerOptions:
    """What the manager tells a worker when it starts it."""

    parent_pid: int  # the manager
    terminate_timeout_s: float = 10.0
    log_level: int = logging.INFO


def warm_imports(modules: Sequence[str] = WARM_MODULES) -> list[str]:
    """Import ``modules`` now; returns those that could not be imported, and why."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    return missing


def worker_main(conn: Connection, options: WorkerOptions) -> None:
    """Entry point of the worker process (forked from the template, a forkserver: it dies with
    the forkserver, which ends with the manager; and at once if the manager is gone)."""
    die_with_parent()
    if not pid_alive(options.parent_pid):
        os._exit(1)
    name_process(WORKER_PROCESS_NAME)
    logging.basicConfig(
        level=options.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signo, _frame: stop.set())
    started = time.perf_counter()
    missing = warm_imports()
    if missing:
        log.warning("worker %d: cannot import %s", os.getpid(), ", ".join(missing))
    runner = PipelineRunner(options)
    # One poll object for the life of the worker (Connection.poll builds a selector per call).
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
    try:
        conn.send(
            WorkerReady(
                pid=os.getpid(), warmup_s=time.perf_counter() - started, unavailable=tuple(missing)
            )
        )
        while not stop.is_set() and not runner.done:
            if not poller.poll(_POLL_INTERVAL_S * 1000):
                continue
            try:
                message = conn.recv()
            except EOFError:
                break  # the manager closed its end: nothing more will come
            conn.send(runner.handle(message))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the manager is gone; PR_SET_PDEATHSIG would end us anyway
    finally:
        runner.close()
        with contextlib.suppress(OSError):
            conn.close()


class TicketSources:
    """A pipeline's sources in a worker: the consumers the manager's decoders were given for
    this process (one ticket per source)."""

    def __init__(self, tickets: Sequence[SourceTicket]) -> None:
        self._tickets = {t.source_id: t for t in tickets}

    def subscribe(self, request: SubscriptionRequest) -> Subscription:
        from framepipe.core.sources import Subscription

        ticket = self._tickets.get(request.source_id)
        if ticket is None:
            raise OperationError(f"the manager gave no ticket for source {request.source_id}")
        return Subscription(ticket)

    def close(self) -> None:
        """The manager releases the tickets (it owns the decoders)."""


class PipelineRunner:
    """Owns the worker's one pipeline; executes manager commands."""

    def __init__(self, options: WorkerOptions) -> None:
        self._options = options
        self._pipeline: Pipeline | None = None
        self._webrtc: WebRTCSession | None = None  # the peer of a WebRTC pipeline
        self._remote: RemoteInference | None = None  # the model's inference service, if any
        self._results: SharedResultBuffer | None = None  # the manager's, for this pipeline
        self._reporter: threading.Thread | None = None
        self._reporting = threading.Event()  # set: the reporter stops
        self._report_due = threading.Event()  # set: the reporter looks now
        self._publish_lock = threading.Lock()
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
            body = self._dispatch(message.command)
        except Exception as exc:  # every failure becomes a reply; the worker keeps serving
            log.debug("command %s failed", type(message.command).__name__, exc_info=True)
            return WorkerReply(message.request_id, failure=WorkerFailure.from_exception(exc))
        return WorkerReply(message.request_id, body=body)

    def _dispatch(self, command: object) -> ReplyBody:
        if isinstance(command, StartPipeline):
            self._start(command)
            return Done()
        if isinstance(command, StartWebRTCPipeline):
            return self._start_webrtc(command)
        if isinstance(command, Stop):
            self.close()
            return Done()
        pipeline = self._pipeline
        if pipeline is None:
            raise OperationError(f"cannot {type(command).__name__}: this worker runs no pipeline")
        if isinstance(command, GetStatus):
            report = pipeline.status()
            if self._webrtc is not None:
                report.extensions["webrtc"] = self._webrtc.statistics()
            self._publish(report)
            return StatusReply(report)
        if isinstance(command, Mute):
            pipeline.mute()
            self._publish()
            return Done()
        if isinstance(command, Resume):
            pipeline.resume()
            self._publish()
            return Done()
        if isinstance(command, Consume):
            return self._consume(pipeline, command)
        raise InvalidPayloadError(f"unknown worker command {type(command).__name__}")

    def _start(self, command: StartPipeline) -> None:
        if self._pipeline is not None:
            raise OperationError("this worker already runs a pipeline")
        from framepipe.core.pipeline import Pipeline

        config = command.config
        requests = config.source_requests()
        # Under WAIT no result may be lost: a full result buffer holds processing back.
        hold = any(request.strategies[0].waits for request in requests)
        reference = config.video_reference
        inference = self._inference(command.inference)
        results = None
        try:
            if command.results_segment is not None:
                from framepipe.core.result_buffer import SharedResultBuffer

                results = SharedResultBuffer.attach(command.results_segment)
            pipeline = Pipeline(
                list(reference) if isinstance(reference, tuple) else reference,
                processing=config.processing,
                max_fps=config.max_fps,
                source_buffer_filling_strategy=config.filling_strategy,
                source_buffer_consumption_strategy=config.consumption_strategy,
                video_source_properties=config.video_source_properties,
                batch_collection_timeout=config.batch_collection_timeout,
                decoding_buffer_size=config.decoding_buffer_size,
                results_buffer_size=config.results_buffer_size,
                results_max_bytes=config.results_max_bytes,
                realtime_replay=config.realtime_replay,
                hub=TicketSources(command.sources),
                inference=inference,
                hold_results=hold,
                results_sink=results,
            )
            pipeline.start(begun_at=command.begun_at)
        except BaseException:
            self._close_remote()
            if results is not None:
                results.release()
            raise
        self._pipeline, self._results = pipeline, results
        if results is not None:
            self._publish()
            results.on_report_due = self._report_due.set
            self._reporter = threading.Thread(
                target=self._report_loop, name="framepipe-reporter", daemon=True
            )
            self._reporter.start()

    # -- the status report in shared memory ---------------------------------------------------

    def _publish(self, report: PipelineReport | None = None) -> None:
        """Publish the pipeline's report where the manager reads it (with a shared buffer)."""
        results, pipeline = self._results, self._pipeline
        if results is None or pipeline is None:
            return
        with self._publish_lock:
            if report is None:
                report = pipeline.status()
            results.publish_report(
                pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL), report.results.received
            )

    def _report_loop(self) -> None:
        """Publish a fresh report when the pipeline's state changes, when its first result
        comes, when a reader asked for one (at most every REPORT_WANTED_INTERVAL_S), and at
        least every REPORT_INTERVAL_S: the manager tells a worker that publishes no more from a
        live one by the report's age. While results flow, the pipeline's thread wakes the
        reporter for the first result and for a wanted report (the buffer's
        ``on_report_due``), so it looks only every REPORT_WANTED_INTERVAL_S then; otherwise
        every REPORT_LOOK_S."""
        results, pipeline = self._results, self._pipeline
        assert results is not None and pipeline is not None
        state = pipeline.state
        published = time.monotonic()
        look, received = REPORT_LOOK_S, results.received()
        while True:
            self._report_due.wait(look)
            self._report_due.clear()
            if self._reporting.is_set():
                break
            now = time.monotonic()
            since = now - published
            if (
                pipeline.state is not state
                or (results.report_received() == 0 and results.received() > 0)
                or since >= REPORT_INTERVAL_S
                or (since >= REPORT_WANTED_INTERVAL_S and results.report_wanted())
            ):
                state = pipeline.state
                try:
                    self._publish()
                except Exception:
                    log.exception("publishing the pipeline's report failed")
                published = now
            elif results.report_wanted():
                look = REPORT_WANTED_INTERVAL_S - since  # the earliest it may publish again
                continue
            flowing = results.received() != received
            received = results.received()
            look = REPORT_WANTED_INTERVAL_S if flowing else REPORT_LOOK_S

    def _start_webrtc(self, command: StartWebRTCPipeline) -> ReplyBody:
        """A pipeline whose source is a WebRTC peer (the session holds the connection)."""
        if self._pipeline is not None:
            raise OperationError("this worker already runs a pipeline")
        from framepipe.server.webrtc.session import start_webrtc_pipeline

        try:
            pipeline, session, answer = start_webrtc_pipeline(
                command, self._inference(command.inference)
            )
        except BaseException:
            self._close_remote()
            raise
        self._pipeline, self._webrtc = pipeline, session
        return answer

    def _inference(self, address: object) -> Inference | None:
        """Where the model runs: the inference service at ``address`` (a ServiceAddress), or
        None for an engine of this process."""
        if address is None:
            return None
        from framepipe.server.inference.client import RemoteInference
        from framepipe.server.inference.messages import ServiceAddress

        if not isinstance(address, ServiceAddress):
            raise OperationError(f"unknown inference address {address!r}")
        self._close_remote()
        self._remote = RemoteInference(address)
        return self._remote

    def _close_remote(self) -> None:
        remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()

    @staticmethod
    def _consume(pipeline: Pipeline, command: Consume) -> ConsumeReply:
        results = pipeline.sink.consume(command.max_entries, command.max_bytes)
        entries = []
        for result in results:
            wire = result.to_wire(command.excluded_fields)
            entries.append(
                ResultEntry(outputs=wire["outputs"], frames_metadata=wire["frames_metadata"])
            )
        return ConsumeReply(tuple(entries), buffered=len(pipeline.sink))

    def close(self) -> None:
        """Terminate and join the pipeline (idempotent); the worker then exits."""
        self._reporting.set()
        self._report_due.set()
        if self._reporter is not None:
            self._reporter.join(1.0)
        pipeline = self._pipeline
        self.done = True
        session, self._webrtc = self._webrtc, None
        if pipeline is not None:
            try:
                pipeline.terminate(self._options.terminate_timeout_s)
            except Exception:
                log.exception("terminating the pipeline failed")
            with contextlib.suppress(Exception):
                self._publish()  # its last state, for a status read while the worker exits
        self._pipeline = None
        # After the pipeline closed its channel; the peer after the pipeline stopped reading.
        self._close_remote()
        if session is not None:
            try:
                session.close()
            except Exception:
                log.exception("closing the WebRTC peer failed")
        results, self._results = self._results, None
        if results is not None:
            results.release()
