"""The stream manager: the pipeline table, the idle pool, RAM admission and the health loop.

One asyncio process. Every pipeline is a worker process (:mod:`framepipe.server.worker`) with its
own command pipe and its own lock, so commands to one pipeline are serialised while commands to
different pipelines run side by side; every wait on a worker is bounded, and a worker that
misses its bound is killed and reported, never waited on forever.

The TCP front end (:mod:`framepipe.server.tcp`) parses requests and calls the manager's command
methods; the manager knows nothing of sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from framepipe.core.budget import (
    MB,
    MemoryUsage,
    RamBudget,
    children_map,
    process_unique_bytes,
    ring_bytes,
    shared_segments_bytes,
    tree_pids,
)
from framepipe.core.processes import wait_for_exit
from framepipe.errors import FramepipeError, InvalidPayloadError, NotFoundError, OperationError
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
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
)
from framepipe.server._messages import SourceUpdates, WorkerOp
from framepipe.server.settings import ServerSettings
from framepipe.server.shared import SharedDecoders, SharedLease
from framepipe.server.worker import SHARED_SOURCES_KEY
from framepipe.server.workers import WorkerGone, WorkerHandle, WorkerTimeout

log = logging.getLogger("framepipe.manager")

# Frame size assumed for a source whose size is not known before it is opened (a camera, a stream).
DEFAULT_FRAME_SIZE = (1920, 1080)
# After an `init` took a warm worker, its replacement starts this much later.
POOL_REFILL_DELAY_S = 1.0
# The payload's default (framepipe.protocol.payloads.DEFAULT_DECODING_BUFFER_SIZE).
DEFAULT_DECODING_BUFFER_SIZE = 64
# How often a worker reading shared decoders is sent their state (when it changed).
SHARED_STATE_INTERVAL_S = 0.2


class RowState(StrEnum):
    IDLE = "idle"  # a warm worker in the pool, no pipeline yet
    STARTING = "starting"  # `init` in progress: not listed, not addressable
    RUNNING = "running"
    TERMINATING = "terminating"


@dataclass(eq=False)
class ManagedPipeline:
    """One row of the pipeline table."""

    pipeline_id: str
    worker: WorkerHandle
    ram_samples_mb: deque[float]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: RowState = RowState.IDLE
    health_check_running: bool = False
    status_in_flight: asyncio.Future[dict[str, Any]] | None = None
    # Every pid seen in the worker's process tree (decode processes are reparented when the
    # worker dies): its segments are swept only once all of them are gone.
    known_pids: set[int] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)
    # The sources it reads from the manager's shared decoders, and the task that sends their
    # state to the worker.
    shared: list[SharedLease] = field(default_factory=list)
    shared_task: asyncio.Task[Any] | None = None

    @property
    def is_idle(self) -> bool:
        return self.state is RowState.IDLE

    @property
    def is_terminating(self) -> bool:
        return self.state is RowState.TERMINATING


class StreamManager:
    """Implements the control-plane commands over a table of worker processes."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.budget = RamBudget(settings.max_ram_mb)
        self.decoders = SharedDecoders(open_timeout_s=settings.init_timeout_s / 2)
        self._table: dict[str, ManagedPipeline] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pool_wakeup = asyncio.Event()
        self._reserved_mb = 0.0
        self._spawning = 0
        self._closing = False
        self._started = False
        self._last_init_at = -POOL_REFILL_DELAY_S
        self._health_task: asyncio.Task[Any] | None = None
        self._pool_task: asyncio.Task[Any] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep orphaned segments and start the health loop and the idle pool (non-blocking)."""
        swept = await asyncio.get_running_loop().run_in_executor(None, sweep_orphan_segments)
        if swept:
            log.info("removed %d orphaned shared-memory entries: %s", len(swept), ", ".join(swept))
        self._started = True
        self._health_task = self._spawn_background(self._health_loop(), "health-loop")
        self._pool_task = self._spawn_background(self._pool_loop(), "idle-pool")
        # Admission sizes rings with numpy and probes files with PyAV: import them now, in a
        # thread, so the first `init` does not pay for it (the port is already accepting).
        self._spawn_background(self._preload(), "preload")

    async def _preload(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, _preload_admission_modules)
        except ImportError:
            log.exception("could not preload the admission modules")

    async def close(self) -> None:
        """Terminate every pipeline and idle worker, then remove every segment they left."""
        if self._closing:
            return
        self._closing = True
        for task in (self._health_task, self._pool_task):
            if task is not None:
                task.cancel()
        # Health checks may be terminating a finished pipeline right now: let them finish
        # (each is bounded) rather than cancel a termination halfway.
        bound = self.settings.command_timeout_s + 2 * self.settings.terminate_timeout_s
        if self._background:
            await asyncio.wait(set(self._background), timeout=bound)
        rows = list(self._table.values())
        await asyncio.gather(
            *(self._terminate_row(row, reason="shutdown") for row in rows), return_exceptions=True
        )
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._table.clear()
        pids = set().union(*(row.known_pids for row in rows)) if rows else set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.decoders.close)
        await loop.run_in_executor(None, wait_for_exit, pids, 5.0)
        await loop.run_in_executor(None, sweep_orphan_segments)
        remove_own_segments(os.getpid())

    def _spawn_background(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---- the commands (called by the TCP front end) ------------------------------------------

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        """Execute one parsed command (the ``CommandHandler`` the TCP front end calls).

        Returns the success body; failures are raised as FramepipeError subclasses, which the
        front end turns into failure responses.
        """
        if isinstance(command, ListPipelinesCommand):
            return ListPipelinesBody(pipelines=await self.list_pipelines())
        if isinstance(command, InitCommand):
            payload = command.payload.to_wire()
            payload["processing_configuration"] = command.payload.raw_processing_configuration
            return SuccessBody(pipeline_id=await self.initialise(payload, request_id))
        if isinstance(command, WebRTCCommand):
            raise OperationError(
                "WebRTC pipelines are not available in this build of the stream manager."
            )
        if isinstance(command, StatusCommand):
            body = await self.status(command.pipeline_id, request_id)
            return StatusBody(pipeline_id=command.pipeline_id, report=body["report"])
        if isinstance(command, MuteCommand):
            await self.mute(command.pipeline_id, request_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        if isinstance(command, ResumeCommand):
            await self.resume(command.pipeline_id, request_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        if isinstance(command, ConsumeResultCommand):
            entries = await self.consume_result(
                command.pipeline_id, command.excluded_fields, command.max_entries, request_id
            )
            return ConsumeResultBody.from_entries(
                entries, multi=command.max_entries is not None, pipeline_id=command.pipeline_id
            )
        if isinstance(command, TerminateCommand):
            await self.terminate(command.pipeline_id, request_id)
            return SuccessBody(pipeline_id=command.pipeline_id)
        raise InvalidPayloadError(f"Unsupported command {type(command).__name__}")

    async def list_pipelines(self) -> list[str]:
        return [
            row.pipeline_id
            for row in self._table.values()
            if row.state is RowState.RUNNING and row.worker.exit_reason is None
        ]

    async def initialise(self, payload: dict[str, Any], request_id: str | None = None) -> str:
        """Start a pipeline from an ``init`` payload (wire dict); returns its id.

        A pipeline that fails to start leaves no process behind and is not listed.
        """
        self._check_open()
        rings = await self._predict_ring_bytes(payload)
        row = self._take_idle_worker()
        usage = await self._measure_usage()
        try:
            admission = self.budget.admit(
                usage=_plus_reserved(usage, self._reserved_mb),
                worker_samples_mb=[r.ram_samples_mb for r in self._table.values()],
                new_rings_bytes=rings,
                reused_worker_mb=(
                    row.ram_samples_mb[-1] if row is not None and row.ram_samples_mb else None
                ),
            )
        except FramepipeError:
            if row is not None:
                row.state = RowState.IDLE  # back to the pool, untouched
            raise
        self._reserved_mb += admission.predicted_mb
        self._last_init_at = time.monotonic()
        try:
            if row is None:
                row = await self._spawn_row(RowState.STARTING)
                warm = False
            else:
                warm = True
            try:
                await row.worker.wait_ready(self.settings.spawn_timeout_s)
                payload = await self._share_sources(row, payload)
                await row.worker.request(
                    WorkerOp.INIT,
                    payload,
                    timeout=self.settings.init_timeout_s,
                    request_id=request_id,
                )
            except BaseException as exc:
                await self._discard_row(row)
                if isinstance(exc, FramepipeError) and exc.pipeline_id is None:
                    exc.pipeline_id = row.pipeline_id
                raise
            row.state = RowState.RUNNING
            if row.shared:
                row.shared_task = self._spawn_background(
                    self._send_shared_state(row), f"shared-{row.pipeline_id}"
                )
            log.info(
                "pipeline %s started on %s worker %d",
                row.pipeline_id,
                "a warm" if warm else "a new",
                row.worker.pid,
            )
            return row.pipeline_id
        finally:
            self._reserved_mb -= admission.predicted_mb
            self._pool_wakeup.set()

    async def status(self, pipeline_id: str, request_id: str | None = None) -> dict[str, Any]:
        """The pipeline's status report.

        Concurrent ``status`` requests for one pipeline share one round trip to its worker: a
        request that arrives while another is in flight gets that one's report (at most one
        round trip old) instead of queueing behind it on the pipeline's lock. Fifty clients
        polling one pipeline then cost one worker round trip at a time, not fifty.
        """
        row = self._lookup(pipeline_id)
        pending = row.status_in_flight
        if pending is None or pending.done():
            pending = asyncio.ensure_future(
                self._command(pipeline_id, WorkerOp.STATUS, {}, request_id)
            )
            pending.add_done_callback(_retrieve)
            row.status_in_flight = pending
        return await asyncio.shield(pending)

    async def mute(self, pipeline_id: str, request_id: str | None = None) -> dict[str, Any]:
        body = await self._command(pipeline_id, WorkerOp.MUTE, {}, request_id)
        row = self._table.get(pipeline_id)
        for lease in row.shared if row is not None else []:  # the decode process is ours
            lease.subscription.mute()
        return body

    async def resume(self, pipeline_id: str, request_id: str | None = None) -> dict[str, Any]:
        body = await self._command(pipeline_id, WorkerOp.RESUME, {}, request_id)
        row = self._table.get(pipeline_id)
        for lease in row.shared if row is not None else []:
            lease.subscription.resume()
        return body

    async def consume_result(
        self,
        pipeline_id: str,
        excluded_fields: Iterable[str] = (),
        max_entries: int | None = None,
        request_id: str | None = None,
    ) -> list[ResultEntry]:
        payload: dict[str, Any] = {"excluded_fields": list(excluded_fields)}
        if max_entries is not None:
            payload["max_entries"] = max_entries
        body = await self._command(pipeline_id, WorkerOp.CONSUME, payload, request_id)
        return [
            ResultEntry(outputs=entry["outputs"], frames_metadata=entry["frames_metadata"])
            for entry in body.get("entries", [])
        ]

    async def terminate(self, pipeline_id: str, request_id: str | None = None) -> None:
        row = self._lookup(pipeline_id)
        if row.is_terminating:
            raise NotFoundError(_not_found_message(pipeline_id))
        await self._terminate_row(row, reason="terminate command", request_id=request_id)

    # ---- the table ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise OperationError("The stream manager is shutting down.")

    def _lookup(self, pipeline_id: str) -> ManagedPipeline:
        row = self._table.get(pipeline_id)
        if row is None or row.state is not RowState.RUNNING or row.worker.exit_reason is not None:
            raise NotFoundError(_not_found_message(pipeline_id))
        return row

    async def _command(
        self, pipeline_id: str, op: WorkerOp, payload: dict[str, Any], request_id: str | None
    ) -> dict[str, Any]:
        row = self._lookup(pipeline_id)
        timeout = self.settings.command_timeout_s
        try:
            # Waiting for the lock is bounded too: whoever holds it is bounded by `timeout`.
            async with asyncio.timeout(2 * timeout + self.settings.terminate_timeout_s):
                await row.lock.acquire()
        except TimeoutError:
            raise OperationError(
                f"Pipeline {pipeline_id} is busy: another command did not finish in time."
            ) from None
        try:
            if self._table.get(pipeline_id) is not row or row.is_terminating:
                raise NotFoundError(_not_found_message(pipeline_id))
            return await row.worker.request(op, payload, timeout=timeout, request_id=request_id)
        except WorkerTimeout as exc:
            await self._fail_row(row, f"{exc.message}; the worker was killed")
            raise OperationError(
                f"Pipeline {pipeline_id} did not answer '{op.value}' within {timeout:g} s; "
                f"its worker (pid {row.worker.pid}) was killed and the pipeline removed."
            ) from None
        except WorkerGone as exc:
            ended_on_purpose = row.worker.exit_reason is not None
            await self._fail_row(row, exc.message)
            if ended_on_purpose:  # e.g. consumption timeout: as if the health loop had reaped it
                raise NotFoundError(_not_found_message(pipeline_id)) from None
            raise OperationError(
                f"Pipeline {pipeline_id} is gone: {exc.message}; it was removed."
            ) from None
        finally:
            row.lock.release()

    async def _spawn_row(self, state: RowState) -> ManagedPipeline:
        self._spawning += 1
        try:
            worker = await WorkerHandle.spawn(
                terminate_timeout_s=self.settings.terminate_timeout_s,
                preload_models=self.settings.preload_models,
            )
        finally:
            self._spawning -= 1
        row = ManagedPipeline(
            pipeline_id=str(uuid.uuid4()),
            worker=worker,
            ram_samples_mb=deque(maxlen=self.settings.ram_usage_queue_size),
            state=state,
        )
        self._table[row.pipeline_id] = row
        return row

    def _take_idle_worker(self) -> ManagedPipeline | None:
        """An idle worker for a new pipeline: a ready one first, else one still warming up."""
        idle = [
            r
            for r in self._table.values()
            if r.is_idle and not r.is_terminating and not r.worker.closed.is_set()
        ]
        if not idle:
            return None
        idle.sort(key=lambda r: (not r.worker.ready.done(), r.started_at))
        row = idle[0]
        row.state = RowState.STARTING
        row.started_at = time.monotonic()
        return row

    async def _terminate_row(
        self, row: ManagedPipeline, *, reason: str, request_id: str | None = None
    ) -> None:
        """End one pipeline gracefully (bounded), then make sure its process is gone."""
        row.state = RowState.TERMINATING
        row.known_pids |= tree_pids(row.worker.pid)
        try:
            async with asyncio.timeout(
                self.settings.command_timeout_s + self.settings.terminate_timeout_s
            ):
                await row.lock.acquire()
            locked = True
        except TimeoutError:
            locked = False  # someone holds it past every bound: end the worker anyway
        try:
            if row.worker.alive and row.worker.ready.done():
                try:
                    await row.worker.request(
                        WorkerOp.TERMINATE,
                        {},
                        timeout=self.settings.terminate_timeout_s,
                        request_id=request_id,
                    )
                except FramepipeError as exc:
                    log.warning(
                        "pipeline %s did not terminate cleanly (%s): killing it",
                        row.pipeline_id,
                        exc.message,
                    )
                    row.worker.kill()
            else:
                row.worker.process.terminate()
            await row.worker.reap(self.settings.terminate_timeout_s)
            await self._release_shared(row)
            await self._free_segments_of(row)
        finally:
            self._table.pop(row.pipeline_id, None)
            if locked:
                row.lock.release()
            log.info("pipeline %s ended (%s)", row.pipeline_id, reason)
            self._pool_wakeup.set()

    async def _discard_row(self, row: ManagedPipeline) -> None:
        """Remove a row whose worker must not be reused (failed init): no process stays behind."""
        row.state = RowState.TERMINATING
        self._table.pop(row.pipeline_id, None)
        row.known_pids |= tree_pids(row.worker.pid)
        if row.worker.alive:
            row.worker.process.terminate()  # SIGTERM: the worker ends what it started
        await row.worker.reap(self.settings.terminate_timeout_s)
        await self._release_shared(row)
        await self._free_segments_of(row)

    async def _fail_row(self, row: ManagedPipeline, reason: str) -> None:
        """Kill a hung or dead worker, reap it, free its segments and drop its row."""
        log.error("pipeline %s failed: %s", row.pipeline_id, reason)
        row.state = RowState.TERMINATING
        self._table.pop(row.pipeline_id, None)
        row.known_pids |= tree_pids(row.worker.pid)
        row.worker.kill()
        await row.worker.reap(1.0)
        await self._release_shared(row)
        await self._free_segments_of(row)
        self._pool_wakeup.set()

    # ---- shared decoders ---------------------------------------------------------------------

    async def _share_sources(self, row: ManagedPipeline, payload: dict[str, Any]) -> dict[str, Any]:
        """Subscribe the row's worker to shared decoders of its sources (when sharing is on);
        returns the payload to send it, naming the sources it reads from them."""
        if not self.settings.share_decoders:
            return payload
        leases, sources = await asyncio.get_running_loop().run_in_executor(
            None, self.decoders.subscribe, payload, row.worker.pid
        )
        row.shared = leases
        if not sources:
            return payload
        return {**payload, SHARED_SOURCES_KEY: sources}

    async def _send_shared_state(self, row: ManagedPipeline) -> None:
        """Send the worker the state of the shared decoders it reads, whenever it changes."""
        last: tuple[Any, ...] = ()
        while (
            self._table.get(row.pipeline_id) is row and not row.is_terminating and not self._closing
        ):
            snapshots = self.decoders.snapshots(row.shared)
            if snapshots != last:
                try:
                    # Only when the pipe has room: a stopped worker reads nothing, and the
                    # loop must never block on it (the next change is sent later instead).
                    if _writable(row.worker.conn):
                        row.worker.conn.send(SourceUpdates(snapshots))
                        last = snapshots
                except (OSError, ValueError):
                    return  # the worker is gone: the health loop removes it
            await asyncio.sleep(SHARED_STATE_INTERVAL_S)

    async def _release_shared(self, row: ManagedPipeline) -> None:
        """Leave the row's shared decoders (its worker is gone); the last leaver stops one."""
        task, row.shared_task = row.shared_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        leases, row.shared = row.shared, []
        if leases:
            await asyncio.get_running_loop().run_in_executor(None, self.decoders.release, leases)

    async def _free_segments_of(self, row: ManagedPipeline) -> None:
        """Once every process of the row's tree is gone (bounded wait), sweep their segments."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_for_exit, row.known_pids, 2.0)
        await loop.run_in_executor(None, sweep_orphan_segments)

    # ---- RAM ---------------------------------------------------------------------------------

    async def _measure_usage(self) -> MemoryUsage:
        rows = list(self._table.values())
        return await asyncio.get_running_loop().run_in_executor(
            None, self._measure_usage_sync, rows
        )

    def _measure_usage_sync(self, rows: list[ManagedPipeline]) -> MemoryUsage:
        manager_pid = os.getpid()
        workers_total = 0.0
        owners = {manager_pid}
        children = children_map()
        for row in rows:
            pids = tree_pids(row.worker.pid, children)
            sample = sum(process_unique_bytes(pid) for pid in pids) / MB
            row.ram_samples_mb.append(sample)
            workers_total += sample
            row.known_pids |= pids
            owners |= pids
        # The manager and what it runs itself: the shared decode processes, their forkserver.
        own = (tree_pids(manager_pid, children) - owners) | {manager_pid}
        return MemoryUsage(
            manager_mb=sum(process_unique_bytes(pid) for pid in own) / MB,
            workers_mb=workers_total,
            shared_segments_mb=shared_segments_bytes(owners) / MB,
        )

    async def _predict_ring_bytes(self, payload: dict[str, Any]) -> int:
        video = payload.get("video_configuration") or {}
        references = video.get("video_reference")
        if not isinstance(references, list):
            references = [references]
        properties = video.get("video_source_properties") or {}
        buffer_size = int(payload.get("decoding_buffer_size") or DEFAULT_DECODING_BUFFER_SIZE)
        consumers = 1
        if self.settings.share_decoders:
            # A decoder already shared is counted once: by the pipeline that started it.
            references = [ref for ref in references if not self.decoders.is_decoding(ref)]
            consumers = self.decoders.max_consumers
        if not isinstance(properties, dict):
            properties = {}
        loop = asyncio.get_running_loop()
        shapes = await loop.run_in_executor(
            None, lambda: [_frame_size(ref, properties) for ref in references]
        )
        return await loop.run_in_executor(None, ring_bytes, shapes, buffer_size, consumers)

    # ---- background loops --------------------------------------------------------------------

    async def _pool_loop(self) -> None:
        """Keep ``preloaded_processes`` idle workers started (one spawn at a time)."""
        while True:
            idle = sum(1 for r in self._table.values() if r.is_idle and not r.is_terminating)
            if idle < self.settings.preloaded_processes and not self._closing:
                # A pipeline that just took a warm worker is starting its decoder now; a
                # replacement's imports would compete with it for the CPU: wait a moment.
                since_init = time.monotonic() - self._last_init_at
                if since_init < POOL_REFILL_DELAY_S:
                    await asyncio.sleep(POOL_REFILL_DELAY_S - since_init)
                    continue
                try:
                    await self._admit_idle_worker()
                    row = await self._spawn_row(RowState.IDLE)
                    await row.worker.wait_ready(self.settings.spawn_timeout_s)
                    continue
                except FramepipeError as exc:
                    log.warning("could not start an idle worker: %s", exc.message)
                except Exception:
                    log.exception("could not start an idle worker")
                await asyncio.sleep(5.0)
                continue
            self._pool_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._pool_wakeup.wait()

    async def _admit_idle_worker(self) -> None:
        usage = await self._measure_usage()
        self.budget.admit(
            usage=_plus_reserved(usage, self._reserved_mb),
            worker_samples_mb=[r.ram_samples_mb for r in self._table.values()],
            new_rings_bytes=0,
        )

    async def _health_loop(self) -> None:
        """About once a second: reap dead workers, sample RAM, end finished pipelines."""
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
        reaped = False
        for row in list(self._table.values()):
            if (
                row.state in (RowState.TERMINATING, RowState.STARTING)
                or self._table.get(row.pipeline_id) is not row
            ):
                continue
            if not row.worker.alive and (
                row.worker.closed.is_set() or row.worker.process.exitcode is not None
            ):
                reason = (
                    row.worker.exit_reason
                    or f"worker exited with code {row.worker.process.exitcode}"
                )
                log.warning("pipeline %s: %s; removing it", row.pipeline_id, reason)
                row.state = RowState.TERMINATING
                self._table.pop(row.pipeline_id, None)
                row.worker.kill()  # its decode processes, if any are left
                await row.worker.reap(1.0)
                await self._release_shared(row)
                reaped = True
                continue
            if (
                row.state is RowState.RUNNING
                and not row.health_check_running
                and not row.lock.locked()
            ):
                row.health_check_running = True
                self._spawn_background(self._check_finished(row), f"health-{row.pipeline_id}")
        # Every tick, not only after a reap: a worker's decode processes may outlive it by a
        # moment, and their segments can only go once they are gone.
        await asyncio.get_running_loop().run_in_executor(None, sweep_orphan_segments)
        if reaped:
            self._pool_wakeup.set()
        await self._measure_usage()

    async def _check_finished(self, row: ManagedPipeline) -> None:
        """Auto-terminate a pipeline whose sources all ENDED or ERROR (never racing a terminate)."""
        try:
            if row.is_terminating or row.lock.locked():
                return
            async with row.lock:
                if row.is_terminating or self._table.get(row.pipeline_id) is not row:
                    return
                try:
                    health = await row.worker.request(
                        WorkerOp.HEALTH, {}, timeout=self.settings.command_timeout_s
                    )
                except (WorkerTimeout, WorkerGone) as exc:
                    await self._fail_row(row, exc.message)
                    return
                except FramepipeError:
                    return
            if health.get("finished") and not row.is_terminating:
                await self._terminate_row(row, reason="all sources ended")
        finally:
            row.health_check_running = False


def _preload_admission_modules() -> None:
    import av  # noqa: F401

    import framepipe.core.ring
    import framepipe.core.sources.hub  # noqa: F401


def _writable(conn: Connection) -> bool:
    """The pipe has room for a small message now (poll: no wait)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLOUT)
    return bool(poller.poll(0))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (each waiter re-raises it on its own)."""
    if not future.cancelled():
        future.exception()


def _plus_reserved(usage: MemoryUsage, reserved_mb: float) -> MemoryUsage:
    """Usage with the predictions of pipelines being started right now counted as in use."""
    return MemoryUsage(
        manager_mb=usage.manager_mb,
        workers_mb=usage.workers_mb + reserved_mb,
        shared_segments_mb=usage.shared_segments_mb,
    )


def _not_found_message(pipeline_id: str) -> str:
    return f"Could not find InferencePipeline with id={pipeline_id}."


def _frame_size(reference: object, properties: dict[str, Any]) -> tuple[int, int]:
    """The frame size of a source: from its properties, a quick probe of a local file, or 1080p."""
    width, height = properties.get("frame_width"), properties.get("frame_height")
    if (
        isinstance(width, int | float)
        and isinstance(height, int | float)
        and width > 0
        and height > 0
    ):
        return int(width), int(height)
    if isinstance(reference, str) and Path(reference).is_file():
        try:
            import av  # lazily: only admission of a file source needs it

            with av.open(reference, timeout=2.0) as container:
                stream = container.streams.video[0]
                if stream.width and stream.height:
                    return int(stream.width), int(stream.height)
        except Exception:
            log.debug("could not probe %s for its frame size", reference, exc_info=True)
    return DEFAULT_FRAME_SIZE


def sweep_orphan_segments() -> list[str]:
    """Remove ``fp-*`` segments and semaphores whose owner process is dead (data plane's sweep)."""
    try:
        from framepipe.core.shm import sweep_orphans
    except ModuleNotFoundError:
        return []
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
