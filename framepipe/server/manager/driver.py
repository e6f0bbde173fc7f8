"""The stream manager's driver: the asyncio process around the pipeline table.

One asyncio process. The decisions — admission, states, when a pipeline ends — are the
:class:`~framepipe.server.manager.table.PipelineTable`'s; this module does the I/O they call for:
worker processes (:mod:`framepipe.server.worker.handle`), the decoders every pipeline reads
(:mod:`framepipe.server.manager.decoders`), RAM measurement, the orphan sweep. Every pipeline has its
own lock, so commands to one pipeline are serialised while commands to different pipelines run
side by side; every wait on a worker is bounded, and a worker that misses its bound is killed
and reported, never waited on forever.

The TCP front end (:mod:`framepipe.server.manager.tcp`) parses requests and calls :meth:`handle`; the
manager knows nothing of sockets. A pipeline leaves by one path, :meth:`StreamManager._end`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepipe._installation import missing_extra
from framepipe.core.budget import (
    MB,
    SHM_DIR,
    MemoryUsage,
    RamBudget,
    children_map,
    process_unique_bytes,
    shared_segments_bytes,
    shm_free_bytes,
    tree_pids,
)
from framepipe.core.processes import describe_exit, wait_for_exit
from framepipe.core.result_buffer import SharedResultBuffer, decode_entry, excluded_prefixes
from framepipe.errors import (
    FramepipeError,
    InvalidPayloadError,
    OperationError,
    RamBudgetExceededError,
    ShmExhaustedError,
)
from framepipe.protocol._json import RawJson
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MetricsCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
)
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    ListPipelinesBody,
    ResultEntry,
    StatusBody,
    SuccessBody,
    WebRTCAnswerBody,
)
from framepipe.protocol.metrics import MetricsBody, MetricsSnapshot
from framepipe.protocol.payloads import InitialisePipelinePayload, InitialiseWebRTCPipelinePayload
from framepipe.server.manager.decoders import Decoders
from framepipe.server.manager.metrics import build_snapshot
from framepipe.server.manager.reaper import Reaper
from framepipe.server.manager.table import (
    CheckHealth,
    EndPipeline,
    ExpirePipeline,
    PipelineTable,
    Retention,
    Row,
    RowState,
    SpawnIdleWorker,
)
from framepipe.server.settings import ServerSettings
from framepipe.server.worker.handle import WorkerGone, WorkerHandle, WorkerTimeout
from framepipe.server.worker.messages import (
    Consume,
    ConsumeReply,
    GetStatus,
    Mute,
    PipelineConfig,
    Resume,
    StartPipeline,
    StartWebRTCPipeline,
    StatusReply,
    Stop,
    WebRTCAnswer,
    WorkerCommand,
    expect,
)
from framepipe.server.worker.process import REPORT_INTERVAL_S, REPORT_WANTED_INTERVAL_S

if TYPE_CHECKING:
    from framepipe.core.growth import GrowthAccount
    from framepipe.core.pipeline import PipelineReport
    from framepipe.core.sources.handle import RingCharge
    from framepipe.server.inference.messages import ServiceAddress
    from framepipe.server.inference.supervisor import InferenceServices

log = logging.getLogger("framepipe.manager")


#: How long a status read waits for a worker to publish a fresh report (its reporter looks
#: every REPORT_LOOK_S) before it answers from the last one.
FRESH_REPORT_WAIT_S = 0.25

#: Seconds between two RAM samples of every worker by the health loop.
RAM_SAMPLE_INTERVAL_S = 5.0

# A multi-entry consume copies on the event loop when this little is buffered (a thread
# hand-off costs more than the copy); more, up to the reply's cap, is copied off it.
_TAKE_INLINE_BYTES = 256 * 1024


class PipelineWorkerLost(OperationError):
    """A pipeline's worker died while a command was on its way (the pipeline FAILED)."""


class StreamManager:
    """Implements the control-plane commands over the pipeline table."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.table = PipelineTable(
            retention=Retention(
                linger_s=settings.ended_linger_s,
                retention_s=settings.retention_s,
                health_interval_s=settings.health_interval_s,
            ),
            budget=RamBudget(settings.max_ram_mb),
            preloaded_workers=settings.preloaded_processes,
            ram_window=settings.ram_usage_queue_size,
        )
        self.decoders = Decoders(
            share=settings.share_decoders,
            open_timeout_s=settings.source_open_timeout_s,
            read_timeout_s=settings.source_read_timeout_s,
            max_ring_bytes=settings.max_ring_bytes,
            charge=self._charge_ring,
        )
        self._services: InferenceServices | None = None
        self._workers: dict[str, WorkerHandle] = {}
        self._tickets: dict[str, tuple[Any, ...]] = {}
        # Each pipeline's result buffer in shared memory: consume and status are read there
        # (the last report read, by when it was published: it is decoded once).
        self._results: dict[str, SharedResultBuffer] = {}
        self._reports: dict[str, tuple[int, PipelineReport]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._status_in_flight: dict[str, asyncio.Future[StatusReply]] = {}
        # Pipelines whose worker is being killed and reaped by _worker_lost: the health check
        # sees that worker dead meanwhile and must not record a cause of its own.
        self._losing: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._health_task: asyncio.Task[Any] | None = None
        self._reaper: Reaper | None = None
        self._next_ram_sample = 0.0
        self._started_at = time.monotonic()
        self._last_usage: MemoryUsage | None = None  # the last health check's RAM figures
        # The RAM budget's headroom for ring growth at run time (with a limit only).
        self._growth: GrowthAccount | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep orphaned segments, start the reaper and the health loop (non-blocking)."""
        loop = asyncio.get_running_loop()
        self._reaper = await loop.run_in_executor(None, Reaper)
        swept = await loop.run_in_executor(None, sweep_orphan_segments)
        if swept:
            log.info("removed %d orphaned shared-memory entries: %s", len(swept), ", ".join(swept))
        if self.settings.max_ram_mb is not None:
            # Nothing grants growth before the first measurement (an `init` measures first).
            from framepipe.core.growth import GrowthAccount

            self._growth = await loop.run_in_executor(None, GrowthAccount.create)
        self._health_task = self._spawn_background(self._health_loop(), "health-loop")
        for model in self.settings.preload_models:
            self._spawn_background(self._preload_service(model), f"preload-{model}")
        # Admission sizes rings with numpy and probes files with PyAV: import them now, in a
        # thread, so the first `init` does not pay for it (the port is already accepting).
        self._spawn_background(self._preload(), "preload")

    @property
    def services(self) -> InferenceServices:
        """The inference services (one per model; made on first use, so the port opens before
        the engine code is imported)."""
        if self._services is None:
            from framepipe.core.processing.registry import ProcessingSettings
            from framepipe.server.inference.supervisor import InferenceServices

            self._services = InferenceServices(ProcessingSettings.from_env(), owner_pid=os.getpid())
        return self._services

    async def _preload_service(self, model: str) -> None:
        """Start ``model``'s inference service now, so the first pipeline on it does not wait."""
        try:
            await self.services.ensure(model)
            log.info("inference service for model %r started ahead of time", model)
        except FramepipeError as exc:
            log.warning("could not start the inference service for %r: %s", model, exc.message)

    async def _preload(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, _preload_admission_modules)
        except ImportError:
            log.exception("could not preload the admission modules")

    async def close(self) -> None:
        """End every pipeline and idle worker, then remove every segment they left."""
        if self._closing:
            return
        self._closing = True
        if self._health_task is not None:
            self._health_task.cancel()
        ids = [row.pipeline_id for row in self.table.rows()]
        await asyncio.gather(*(self._end(pid, "shutdown") for pid in ids), return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.decoders.close)
        if self._services is not None:
            await self._services.close()
        if self._growth is not None:
            self._growth.close()
            self._growth.unlink()
        await loop.run_in_executor(None, sweep_orphan_segments)
        remove_own_segments(os.getpid())
        if self._reaper is not None:
            await loop.run_in_executor(None, self._reaper.close)

    def _spawn_background(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- the commands (called by the TCP front end) ------------------------------------------

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        """Execute one parsed command; failures are raised as FramepipeError subclasses, which
        the front end turns into failure responses."""
        if isinstance(command, ListPipelinesCommand):
            return ListPipelinesBody(pipelines=self.table.listed())
        if isinstance(command, InitCommand):
            return SuccessBody(pipeline_id=await self.initialise(command.payload, request_id))
        if isinstance(command, WebRTCCommand):
            return await self.initialise_webrtc(command.payload, request_id)
        if isinstance(command, StatusCommand):
            report = await self.status(command.pipeline_id, request_id)
            return StatusBody(pipeline_id=command.pipeline_id, report=report)
        if isinstance(command, MuteCommand):
            await self._command(command.pipeline_id, Mute(), request_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        if isinstance(command, ResumeCommand):
            await self._command(command.pipeline_id, Resume(), request_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        if isinstance(command, ConsumeResultCommand):
            entries, waiting = await self._consume_result(
                command.pipeline_id, command.excluded_fields, command.max_entries, request_id
            )
            return ConsumeResultBody.from_entries(
                entries,
                multi=command.max_entries is not None,
                pipeline_id=command.pipeline_id,
                waiting=waiting,
            )
        if isinstance(command, TerminateCommand):
            await self.terminate(command.pipeline_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        if isinstance(command, MetricsCommand):
            return MetricsBody(snapshot=await self.current_metrics())
        raise InvalidPayloadError(f"Unsupported command {type(command).__name__}")

    async def list_pipelines(self) -> list[str]:
        return self.table.listed()

    async def current_metrics(self) -> MetricsSnapshot:
        """:meth:`metrics`, with every running pipeline's report in shared memory fresh first
        (as a ``status`` read would have it)."""
        running = [p for p in self._results if (r := self.table.find(p)) and r.worker_alive]
        await self._fresh_reports(running)
        for pipeline_id in running:
            self._shared_report(pipeline_id)
        return self.metrics()

    def metrics(self) -> MetricsSnapshot:
        """The figures for monitoring, from what the manager knows now (no worker is asked:
        see :mod:`framepipe.server.manager.metrics`)."""
        # the services started so far (reading them starts none)
        services = self._services.statistics() if self._services is not None else []
        return build_snapshot(
            self.table.rows(),
            usage=self._last_usage,
            max_ram_mb=self.settings.max_ram_mb,
            decoder_processes=len(self.decoders.pids()),
            uptime_s=time.monotonic() - self._started_at,
            services=services,
        )

    async def initialise(
        self, payload: InitialisePipelinePayload, request_id: str | None = None
    ) -> str:
        """Start a pipeline; returns its id. A pipeline that fails to start leaves no process
        behind and is not listed."""
        if self._closing:
            raise OperationError("The stream manager is shutting down.")
        loop = asyncio.get_running_loop()
        begun_at = datetime.now()
        config = replace(
            PipelineConfig.from_payload(payload), results_max_bytes=self.settings.max_results_bytes
        )
        self._check_models(config)
        requested = config.source_requests()
        requests, rings = await loop.run_in_executor(None, self.decoders.admit_requests, requested)
        async with self._admitted_worker(rings, config.results_max_bytes or 0) as row:
            pipeline_id = row.pipeline_id
            worker = self._workers[pipeline_id]
            try:
                # The sources start opening (and the model's service, if it must) while the
                # worker finishes warming up.
                tickets = await loop.run_in_executor(
                    None, self.decoders.serve, requests, worker.pid
                )
                self._tickets[pipeline_id] = tickets
                results = self._results[pipeline_id] = SharedResultBuffer.create(
                    config.results_buffer_size, config.results_max_bytes
                )
                address = await self._service_address(config)
                await worker.wait_ready(self.settings.spawn_timeout_s)
                await worker.request(
                    StartPipeline(
                        config=config,
                        sources=tickets,
                        inference=address,
                        begun_at=begun_at,
                        results_segment=results.name,
                    ),
                    timeout=self.settings.init_timeout_s,
                    request_id=request_id,
                )
            except BaseException as exc:
                await self._start_failed(pipeline_id, exc)
                raise
            self.table.started(pipeline_id, config.consumption_timeout, time.monotonic())
            log.info("pipeline %s started on worker %d", pipeline_id, worker.pid)
            return pipeline_id

    async def initialise_webrtc(
        self, payload: InitialiseWebRTCPipelinePayload, request_id: str | None = None
    ) -> WebRTCAnswerBody:
        """Start a pipeline whose source is a WebRTC peer's video track; returns the SDP answer.

        The worker holds the peer connection and owns the source's ring (a push source: no
        decoder of the manager's is involved); results go back to the peer on the connection
        (and into the pipeline's buffer, as for any pipeline). Like ``init``, a pipeline that
        fails to start leaves nothing behind.
        """
        from framepipe.core.sources.sizing import ring_bytes
        from framepipe.server.webrtc.config import WebRTCConfig

        if self._closing:
            raise OperationError("The stream manager is shutting down.")
        missing = missing_extra("webrtc")
        if missing is not None:  # refused here, not as an ImportError in the worker
            raise OperationError(missing, public_message=missing)
        begun_at = datetime.now()
        config = PipelineConfig.from_payload(payload)
        webrtc = WebRTCConfig.from_payload(
            payload,
            ice_addresses=self.settings.webrtc_ice_addresses,
            connect_timeout_s=self.settings.webrtc_connect_timeout_s,
        )
        self._check_models(config)
        # The peer's frame size is known only once frames flow: budget for 720p.
        buffer = 1 if webrtc.realtime else config.decoding_buffer_size
        rings = ring_bytes(1280, 720, buffer)
        async with self._admitted_worker(rings) as row:
            pipeline_id = row.pipeline_id
            worker = self._workers[pipeline_id]
            try:
                # The model runs where every pipeline's runs: its inference service.
                address = await self._service_address(config)
                await worker.wait_ready(self.settings.spawn_timeout_s)
                command = StartWebRTCPipeline(
                    config=config, webrtc=webrtc, inference=address, begun_at=begun_at
                )
                answer: WebRTCAnswer = expect(
                    await worker.request(
                        command, timeout=self.settings.init_timeout_s, request_id=request_id
                    ),
                    WebRTCAnswer,
                )
            except BaseException as exc:
                await self._start_failed(pipeline_id, exc)
                raise
            # Its results go to the peer: no consumption_timeout (as in the reference).
            self.table.started(pipeline_id, None, time.monotonic())
            log.info("WebRTC pipeline %s started on worker %d", pipeline_id, worker.pid)
            return WebRTCAnswerBody(pipeline_id=pipeline_id, sdp=answer.sdp, type=answer.type)

    @contextlib.asynccontextmanager
    async def _admitted_worker(self, rings: int, results: int = 0) -> AsyncIterator[Row]:
        """The worker of a new pipeline, admitted against the RAM budget with ``rings`` bytes
        of new shared memory: an idle one, or one spawned now. The admission is settled when
        the start is over, whichever way it went."""
        row = self.table.take_idle(time.monotonic())
        usage = await self._measure_usage()
        try:
            admission = self.table.admit(usage, rings, reused=row, results_bytes=results)
        except FramepipeError:
            if row is not None:
                self.table.give_back(row)
            raise
        self._grant_growth(usage)  # less what this admission reserved
        try:
            if row is None:
                row = await self._spawn_worker(RowState.STARTING)
            yield row
        finally:
            self.table.settle(admission)

    async def _service_address(self, config: PipelineConfig) -> ServiceAddress | None:
        """Where the pipeline's model runs: its inference service (started if it must be);
        None for a pipeline without a model."""
        model = config.model
        if model is None:
            return None
        return await self.services.ensure(model.model, model.providers)

    async def _start_failed(self, pipeline_id: str, exc: BaseException) -> None:
        """A pipeline that failed to start leaves nothing behind; the error names it."""
        await self._end(pipeline_id, "failed to start")
        if isinstance(exc, FramepipeError) and exc.pipeline_id is None:
            exc.pipeline_id = pipeline_id

    def _check_models(self, config: PipelineConfig) -> None:
        """An unknown model is refused before any process starts (InvalidPayloadError naming
        it, with the registered ones)."""
        from framepipe.core.processing.processor import check_spec

        try:
            check_spec(config.processing, self.services.registry)
        except InvalidPayloadError as exc:
            raise InvalidPayloadError(exc.message, public_message=exc.message) from None

    async def status(self, pipeline_id: str, request_id: str | None = None) -> dict[str, Any]:
        """The pipeline's status report (wire dict).

        Concurrent ``status`` requests for one pipeline share one round trip to its worker: a
        request that arrives while another is in flight gets that one's report (at most one
        round trip old) instead of queueing behind it on the pipeline's lock. A pipeline whose
        worker is gone answers from its last report, with the cause of its end.
        """
        row = self.table.get(pipeline_id)
        if row.worker_alive:
            await self._fresh_reports((pipeline_id,))
            shared = self._shared_report(pipeline_id)
            if shared is not None:
                self.table.status_read(pipeline_id, time.monotonic())
                return dict(shared.to_wire())
            pending = self._status_in_flight.get(pipeline_id)
            if pending is None or pending.done():
                pending = asyncio.ensure_future(self._fetch_status(pipeline_id, request_id))
                pending.add_done_callback(_retrieve)
                self._status_in_flight[pipeline_id] = pending
            try:
                reply = await asyncio.shield(pending)
            except PipelineWorkerLost:
                pass  # FAILED now: answered below from what is known
            else:
                self.table.status_read(pipeline_id, time.monotonic())
                return dict(reply.report.to_wire())
        self.table.status_read(pipeline_id, time.monotonic())
        return _ended_report(self.table.get(pipeline_id))

    async def _fresh_reports(self, pipeline_ids: Iterable[str]) -> None:
        """Where a pipeline's last report is stale for a reader, ask its worker for a fresh one
        and give it a moment (FRESH_REPORT_WAIT_S) to come: the worker publishes at its next
        look. A report is fresh when it counts every result put so far, or when it is at most
        REPORT_WANTED_INTERVAL_S old and counts some (a status read never waits on a pipeline
        that produces all the time). A worker that does not publish (it hangs) is answered
        from its last report."""
        wanted: list[tuple[SharedResultBuffer, int]] = []
        for pipeline_id in pipeline_ids:
            results = self._results.get(pipeline_id)
            if results is not None and not _fresh(results, target := results.received()):
                results.want_report()
                wanted.append((results, target))
        deadline = time.monotonic() + FRESH_REPORT_WAIT_S
        while wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            wanted = [(r, t) for r, t in wanted if not r.released and not _fresh(r, t)]

    def _shared_report(self, pipeline_id: str) -> PipelineReport | None:
        """The pipeline's report as its worker last published it in shared memory, with the
        result buffer's counters as they are now; None without one (a WebRTC pipeline, or its
        writer died mid-write). A report older than a worker's longest silence is still
        answered, but it does not count as a sign of life: the health check then asks the
        worker itself (and so finds one that hangs)."""
        results = self._results.get(pipeline_id)
        if results is None:
            return None
        cached = self._reports.get(pipeline_id)
        published_ns = results.report_published_ns()
        if cached is not None and cached[0] == published_ns:
            report = cached[1]
        else:
            published = results.read_report()
            if published is None:
                return None
            data, published_ns = published
            report = pickle.loads(data)
            self._reports[pipeline_id] = (published_ns, report)
        age = max(0.0, (time.monotonic_ns() - published_ns) / 1e9)
        report = replace(
            report,
            results=results.statistics(),
            extensions={**report.extensions, "report_age_s": round(age, 3)},
        )
        if self._sign_of_life(age):
            self.table.reported(
                pipeline_id, report.state.value, report.results.buffered, report, time.monotonic()
            )
        return report

    def _sign_of_life(self, age_s: float | None) -> bool:
        """A report this old shows its worker alive (it publishes at least every
        REPORT_INTERVAL_S; the health loop looks every health interval)."""
        return age_s is not None and age_s <= REPORT_INTERVAL_S + self.settings.health_interval_s

    async def _fetch_status(self, pipeline_id: str, request_id: str | None) -> StatusReply:
        reply: StatusReply = expect(
            await self._command(pipeline_id, GetStatus(), request_id), StatusReply
        )
        report = reply.report
        self.table.reported(
            pipeline_id, report.state.value, report.results.buffered, report, time.monotonic()
        )
        return reply

    async def consume_result(
        self,
        pipeline_id: str,
        excluded_fields: Iterable[str] = (),
        max_entries: int | None = None,
        request_id: str | None = None,
    ) -> list[ResultEntry]:
        entries, _ = await self._consume_result(
            pipeline_id, excluded_fields, max_entries, request_id
        )
        return entries

    async def _consume_result(
        self,
        pipeline_id: str,
        excluded_fields: Iterable[str] = (),
        max_entries: int | None = None,
        request_id: str | None = None,
    ) -> tuple[list[ResultEntry], int]:
        """The entries taken (at most ``max_entries``, and what fits in the reply's byte cap,
        at least one) and how many are left."""
        row = self.table.get(pipeline_id)
        if not row.worker_alive:
            self.table.consumed(pipeline_id, 0, time.monotonic())
            return [], 0  # it failed; nothing is buffered any more
        results = self._results.get(pipeline_id)
        if results is not None:
            excluded = excluded_prefixes(excluded_fields)
            wanted = max_entries or 1
            if wanted == 1 or results.bytes_waiting() <= _TAKE_INLINE_BYTES:
                entries = self._take(results, wanted, excluded)
            else:  # up to the reply's byte cap (megabytes): copied off the event loop
                try:
                    entries = await asyncio.to_thread(self._take, results, wanted, excluded)
                except ValueError:  # its buffer was unmapped meanwhile: the pipeline ended
                    self.table.get(pipeline_id)
                    raise
            buffered = len(results)
            self.table.consumed(pipeline_id, buffered, time.monotonic())
            return entries, buffered
        command = Consume(
            excluded_fields=tuple(excluded_fields),
            max_entries=max_entries or 1,
            max_bytes=self.settings.max_reply_bytes,
        )
        reply: ConsumeReply = expect(
            await self._command(pipeline_id, command, request_id), ConsumeReply
        )
        self.table.consumed(pipeline_id, reply.buffered, time.monotonic())
        return list(reply.entries), reply.buffered

    def _take(
        self, results: SharedResultBuffer, max_entries: int, excluded: tuple[bytes, ...]
    ) -> list[ResultEntry]:
        """Entries taken from a shared result buffer, their stored JSON spliced into the reply
        as it is (less the excluded fields)."""
        entries = []
        for raw in results.consume(max_entries, self.settings.max_reply_bytes):
            outputs, metadata = decode_entry(raw, excluded)
            entries.append(
                ResultEntry(
                    outputs=[None if o is None else RawJson(o) for o in outputs],
                    frames_metadata=RawJson(metadata),
                )
            )
        return entries

    async def terminate(self, pipeline_id: str) -> None:
        self.table.get(pipeline_id)  # not_found for an unknown or ended one
        await self._end(pipeline_id, "terminate command")

    # ---- talking to a worker -----------------------------------------------------------------

    def _lock(self, pipeline_id: str) -> asyncio.Lock:
        lock = self._locks.get(pipeline_id)
        if lock is None:
            lock = self._locks[pipeline_id] = asyncio.Lock()
        return lock

    async def _command(
        self, pipeline_id: str, command: WorkerCommand, request_id: str | None
    ) -> Any:
        """One command to the pipeline's worker, under the pipeline's lock (bounded waits)."""
        self.table.get(pipeline_id)
        lock = self._lock(pipeline_id)
        timeout = self.settings.command_timeout_s
        try:
            # Waiting for the lock is bounded too: whoever holds it is bounded by `timeout`.
            async with asyncio.timeout(2 * timeout + self.settings.terminate_timeout_s):
                await lock.acquire()
        except TimeoutError:
            raise OperationError(
                f"Pipeline {pipeline_id} is busy: another command did not finish in time."
            ) from None
        try:
            row = self.table.get(pipeline_id)
            worker = self._workers.get(pipeline_id)
            if worker is None or not row.worker_alive:
                raise PipelineWorkerLost(
                    f"Pipeline {pipeline_id} has ended: {row.cause or 'no worker'}"
                )
            return await worker.request(command, timeout=timeout, request_id=request_id)
        except WorkerTimeout as exc:
            await self._worker_lost(
                pipeline_id, f"did not answer within {timeout:g} s and was killed"
            )
            raise OperationError(
                f"Pipeline {pipeline_id} did not answer within {timeout:g} s; its worker was killed "
                "and the pipeline failed."
            ) from exc
        except WorkerGone:
            await self._worker_lost(pipeline_id, None)
            lost = self.table.find(pipeline_id)
            cause = lost.cause if lost is not None else "its worker is gone"
            raise PipelineWorkerLost(f"Pipeline {pipeline_id} failed: {cause}.") from None
        finally:
            lock.release()

    async def _spawn_worker(self, state: RowState) -> Row:
        worker = await WorkerHandle.spawn(terminate_timeout_s=self.settings.terminate_timeout_s)
        pipeline_id = str(uuid.uuid4())
        self._workers[pipeline_id] = worker
        return self.table.add_worker(pipeline_id, worker.pid, state, time.monotonic())

    async def _worker_lost(self, pipeline_id: str, description: str | None) -> None:
        """The worker died or hung: kill it, give its sources back; the pipeline FAILED with
        the cause (it stays listed: see the table)."""
        worker = self._workers.get(pipeline_id)
        if worker is None or pipeline_id in self._losing:
            return
        self._losing.add(pipeline_id)
        try:
            worker.kill()
            await worker.reap(1.0)
            if description is None:
                description = describe_exit(worker.exitcode)
            self.table.worker_exited(pipeline_id, description, time.monotonic())
        finally:
            self._losing.discard(pipeline_id)
        await self._release_sources(pipeline_id, worker)
        log.warning("pipeline %s: its worker %s", pipeline_id, description)

    # ---- the one way out ---------------------------------------------------------------------

    async def _end(self, pipeline_id: str, reason: str) -> None:
        """Remove a pipeline (or idle worker): stop its worker (gracefully, bounded), give its
        sources back, free what its processes left in shared memory, drop its row."""
        row = self.table.find(pipeline_id)
        if row is None:
            return
        if row.listed:
            self.table.ending(pipeline_id)
        else:
            row.state = RowState.ENDING
        await self._stop_worker(pipeline_id)
        self.table.remove(pipeline_id)
        results = self._results.pop(pipeline_id, None)
        self._reports.pop(pipeline_id, None)
        if results is not None:
            results.release()
            results.unlink()
        self._locks.pop(pipeline_id, None)
        self._status_in_flight.pop(pipeline_id, None)
        log.info("pipeline %s ended (%s)", pipeline_id, reason)

    async def _stop_worker(self, pipeline_id: str) -> None:
        worker = self._workers.pop(pipeline_id, None)
        row = self.table.find(pipeline_id)
        if worker is None:
            return
        if row is not None:
            row.pids |= tree_pids(worker.pid)
        lock = self._lock(pipeline_id)
        try:
            async with asyncio.timeout(
                self.settings.command_timeout_s + self.settings.terminate_timeout_s
            ):
                await lock.acquire()
            locked = True
        except TimeoutError:
            locked = False  # someone holds it past every bound: end the worker anyway
        try:
            if worker.alive and worker.ready.done():
                try:
                    await worker.request(Stop(), timeout=self.settings.terminate_timeout_s)
                except FramepipeError as exc:
                    log.warning(
                        "pipeline %s did not stop cleanly (%s): killing it",
                        pipeline_id,
                        exc.message,
                    )
                    worker.kill()
            elif worker.alive:
                worker.process.terminate()
            await worker.reap(self.settings.terminate_timeout_s)
            await self._release_sources(pipeline_id, worker)
            pids = row.pids if row is not None else {worker.pid}
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, wait_for_exit, pids, 2.0)
            await loop.run_in_executor(None, sweep_orphan_segments)
        finally:
            if locked:
                lock.release()

    async def _release_sources(self, pipeline_id: str, worker: WorkerHandle) -> None:
        tickets = self._tickets.pop(pipeline_id, ())
        if tickets:
            await asyncio.get_running_loop().run_in_executor(
                None, self.decoders.release, tickets, worker.pid
            )

    async def _expire(self, pipeline_id: str, reason: str) -> None:
        """Stop a pipeline nobody consumes; it stays listed, FAILED, with what was discarded."""
        with contextlib.suppress(FramepipeError):
            await self._fetch_status(pipeline_id, None)
        # FAILED with its cause first: a status read while the worker stops says why.
        self.table.expired(pipeline_id, reason, time.monotonic())
        await self._stop_worker(pipeline_id)
        log.warning("pipeline %s expired: %s", pipeline_id, reason)

    # ---- RAM ---------------------------------------------------------------------------------

    async def _measure_usage(self) -> MemoryUsage:
        usage = await asyncio.get_running_loop().run_in_executor(None, self._measure_usage_sync)
        self._last_usage = usage
        self._grant_growth(usage)
        return usage

    def _grant_growth(self, usage: MemoryUsage) -> None:
        """Rings may grow by what the budget has left after this measurement."""
        if self._growth is not None and not self._growth.closed:
            headroom = self.table.budget.growth_headroom_bytes(usage, self.table.reserved_mb)
            self._growth.set_headroom(0 if headroom is None else headroom)

    def _charge_ring(self, charge: RingCharge) -> None:
        """A source's ring is about to be made bigger than its pipeline was admitted for (its
        stream's real size is known now): charge it to the RAM budget, or raise. Called from a
        decoder's listener thread; measures without sampling (the table is the loop's)."""
        limit = self.settings.max_ram_mb
        usage = self._measure_usage_sync(sample=False)
        free = usage.shm_free_bytes
        if free is not None and charge.ring_bytes > free:
            raise ShmExhaustedError(f"{charge.describe()}; {SHM_DIR} has {free / MB:,.1f} MB free")
        if limit is not None and usage.total_mb + charge.ring_bytes / MB > limit:
            raise RamBudgetExceededError(
                f"{charge.describe()}; in use {usage.total_mb:,.1f} MB, so it would pass the "
                f"limit STREAM_MANAGER_MAX_RAM_MB={limit:.1f} MB"
            )

    def _measure_usage_sync(self, sample: bool = True) -> MemoryUsage:
        manager_pid = os.getpid()
        workers_total = 0.0
        owners = {manager_pid}
        children = children_map()
        for pipeline_id, worker in list(self._workers.items()):
            pids = tree_pids(worker.pid, children)
            used = sum(process_unique_bytes(pid) for pid in pids) / MB
            if sample:
                self.table.sampled(pipeline_id, used, pids)
            workers_total += used
            owners |= pids
        # The manager and what it runs itself: the decode processes, their forkserver.
        own = (tree_pids(manager_pid, children) - owners) | {manager_pid}
        return MemoryUsage(
            manager_mb=sum(process_unique_bytes(pid) for pid in own) / MB,
            workers_mb=workers_total,
            shared_segments_mb=shared_segments_bytes(owners | own) / MB,
            shm_free_bytes=shm_free_bytes(),
        )

    # ---- background --------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        """About once a second: reap dead workers, sample RAM, act on the table's decisions."""
        while True:
            started = time.monotonic()
            try:
                await self._health_tick()
            except Exception:
                log.exception("health check failed")
            await asyncio.sleep(
                max(0.05, self.settings.health_interval_s - (time.monotonic() - started))
            )

    async def _health_tick(self) -> None:
        now = time.monotonic()
        for pipeline_id, worker in list(self._workers.items()):
            row = self.table.find(pipeline_id)
            if row is None or row.state is RowState.ENDING or not row.worker_alive:
                continue
            if not worker.alive and (worker.closed.is_set() or worker.exitcode is not None):
                await self._worker_lost(pipeline_id, None)
                if row.state is RowState.IDLE or self.table.find(pipeline_id) is None:
                    self._workers.pop(pipeline_id, None)
        for action in self.table.tick(now):
            if isinstance(action, CheckHealth):
                self._check_health(action.pipeline_id)
            elif isinstance(action, EndPipeline):
                self._spawn_background(self._end(action.pipeline_id, action.reason), "end")
            elif isinstance(action, ExpirePipeline):
                self._spawn_background(self._expire(action.pipeline_id, action.reason), "expire")
            elif isinstance(action, SpawnIdleWorker) and not self._closing:
                self._spawn_background(self._spawn_idle_worker(), "idle-pool")
        # Every tick: a worker's processes may outlive it by a moment, and their segments can
        # only go once they are gone.
        await asyncio.get_running_loop().run_in_executor(None, sweep_orphan_segments)
        # Unique memory is read from /proc/<pid>/smaps_rollup, which costs the kernel a walk of
        # every mapping of every process: often enough for the RAM windows, not every tick
        # (an `init` measures afresh for its admission anyway).
        if now >= self._next_ram_sample:
            self._next_ram_sample = now + RAM_SAMPLE_INTERVAL_S
            await self._measure_usage()

    def _check_health(self, pipeline_id: str) -> None:
        if self._lock(pipeline_id).locked():
            return  # a command is in progress: it will tell us as much
        results = self._results.get(pipeline_id)
        if results is not None and self._sign_of_life(results.report_age_s()):
            self._shared_report(pipeline_id)  # the table learns its state from it
            return
        pending = self._status_in_flight.get(pipeline_id)
        if pending is not None and not pending.done():
            return
        task = self._spawn_background(
            self._fetch_status(pipeline_id, None), f"health-{pipeline_id}"
        )
        task.add_done_callback(_retrieve)

    async def _spawn_idle_worker(self) -> None:
        self.table.spawning(1)
        try:
            usage = await self._measure_usage()
            self.table.admit_idle_worker(usage)
            row = await self._spawn_worker(RowState.IDLE)
            await self._workers[row.pipeline_id].wait_ready(self.settings.spawn_timeout_s)
        except FramepipeError as exc:
            log.warning("could not start an idle worker: %s", exc.message)
            await asyncio.sleep(5.0)
        finally:
            self.table.spawning(-1)


def _fresh(results: SharedResultBuffer, received: int) -> bool:
    """The pipeline's published report is fresh for a reader who has seen ``received``
    results put (see StreamManager._fresh_reports)."""
    age = results.report_age_s()
    if age is None:
        return False
    counted = results.report_received()
    return counted >= received or (counted > 0 and age <= REPORT_WANTED_INTERVAL_S)


def _ended_report(row: Row) -> dict[str, Any]:
    """The status of a pipeline whose worker is gone: its last report, FAILED, with the cause."""
    from framepipe.core.pipeline import PipelineState
    from framepipe.core.sources.entities import SEVERITY_ERROR, StatusUpdate

    cause = row.cause or "the pipeline ended"
    event = StatusUpdate(
        datetime.now(),
        SEVERITY_ERROR,
        "INFERENCE_ERROR",
        {"error_type": "PipelineFailed", "error_message": cause, "error_context": "stream_manager"},
        "inference_pipeline",
    )
    report = row.report
    if report is None:
        return {
            "video_source_status_updates": [event.to_wire()],
            "latency_reports": [],
            "inference_throughput": 0.0,
            "sources_metadata": [],
            "framepipe": {"state": PipelineState.FAILED.value, "finished": True, "failure": cause},
        }
    ended = replace(
        report,
        state=PipelineState.FAILED,
        failure=cause,
        status_updates=[*report.status_updates, event],
    )
    return dict(ended.to_wire())


def _preload_admission_modules() -> None:
    """What the first `init` would otherwise wait for: PyAV (file probes), the pipeline code
    (configs, ring sizing), and the process template (the forkserver decode processes and
    workers are forked from) with OpenCV, PyAV and the worker's modules imported."""
    import av  # noqa: F401

    import framepipe.core.pipeline
    import framepipe.core.sources.hub  # noqa: F401
    from framepipe.core.sources.launcher import warm_forkserver
    from framepipe.server.worker.handle import WORKER_PRELOAD

    warm_forkserver(preload=WORKER_PRELOAD)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (each waiter re-raises it on its own)."""
    if not future.cancelled():
        future.exception()


def sweep_orphan_segments() -> list[str]:
    """Remove ``fp-*`` segments and semaphores whose owner process is dead."""
    from framepipe.core.shm import sweep_orphans

    swept: list[str] = sweep_orphans()
    return swept


def remove_own_segments(owner_pid: int, shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Unlink the segments named after ``owner_pid`` (the manager's own, at shutdown)."""
    removed = []
    for prefix in (f"fp-{owner_pid}-", f"sem.fp-{owner_pid}-"):
        for path in shm_dir.glob(prefix + "*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed
