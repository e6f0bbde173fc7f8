"""The manager's side of the inference services: start one per (model, providers), supervise.

::

    services = InferenceServices(settings)                  # ProcessingSettings of the manager
    address = await services.ensure("centerface", None)     # starts it once; shared afterwards
    ...                                                     # the address goes to the workers
    services.statistics(); services.pids()                  # status, RAM accounting
    await services.close()

Concurrent ``ensure`` calls for one model share one start. An unknown model is an
``InvalidPayloadError`` naming it (nothing is started); a service that cannot start (the
model does not load, the process dies, it misses ``start_timeout_s``) is an
``OperationError`` with the cause, and the next ``ensure`` tries again.

Supervision, per service, on the event loop: a thread reads the service's control pipe (its
end of file arrives the moment the process dies); every ``ping_interval_s`` the supervisor
pings, and a service that has not answered for ``hang_timeout_s`` (SIGSTOP, a deadlock) is
hung. Either way it is killed, reaped, and started again at the same address with the same
authkey, so the pipelines' clients reconnect by themselves; with the defaults a crash or a
hang is detected within 2 s. A restart that fails is retried with backoff.

Spawned processes are children of the manager only: nothing here assumes that pipelines
run on this machine (their clients only need the address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.process import BaseProcess

from framepipe.core.inference import EngineOptions, EngineStatistics
from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings
from framepipe.protocol.errors import OperationError
from framepipe.server.child_process import ChildProcess, start_child
from framepipe.server.inference.messages import (
    ServiceAddress,
    ServiceFailed,
    ServicePing,
    ServicePong,
    ServiceReady,
    ServiceShutdown,
)
from framepipe.server.inference.process import ServiceOptions, service_main

__all__ = [
    "InferenceServices",
    "ServiceState",
    "ServiceStatistics",
    "ServicesOptions",
]

log = logging.getLogger("framepipe.services")


class ServiceState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ServicesOptions:
    start_timeout_s: float = 60.0  # spawn, imports, model load and warm-up
    ping_interval_s: float = 0.2
    hang_timeout_s: float = 1.5  # no pong for this long: hung (detected within ~1.7 s)
    restart_backoff_s: float = 0.5  # after a failed restart; doubles up to the max
    restart_backoff_max_s: float = 5.0
    shutdown_timeout_s: float = 5.0
    max_unanswered: int = 64  # per worker connection (see ServiceOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    model: str
    providers: tuple[str, ...]
    address: str  # printable ("@" for the abstract namespace's NUL)
    pid: int | None
    state: ServiceState
    restarts: int
    crashes: int
    hangs: int
    last_failure: str | None
    last_failure_detected_at: float | None  # time.monotonic() of the supervisor
    connections: int
    engine: EngineStatistics | None  # from the latest pong


def start_service_process(options: ServiceOptions) -> tuple[SpawnProcess, Connection]:
    """Spawn an inference service; returns it and the manager's end of its control pipe."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = ctx.Process(
        target=service_main, args=(child_conn, options), name="framepipe-inference", daemon=True
    )
    try:
        process.start()
    finally:
        child_conn.close()  # else EOF never arrives here when the service dies
    return process, parent_conn


class _Process(ChildProcess):
    """One spawned service process, its control pipe, and the thread reading the pipe; what
    comes through it goes to the service's supervisor."""

    def __init__(
        self,
        process: BaseProcess,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[_Process, object], None],
        on_gone: Callable[[_Process], None],
    ) -> None:
        self._on_message = on_message
        self._on_gone = on_gone
        super().__init__(process, conn, loop, kind="inference service")

    def _deliver(self, message: object) -> None:
        self._on_message(self, message)

    def _on_closed(self) -> None:
        self._on_gone(self)

    async def reap(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for it to exit, then kill it; collect it. Its exit code."""
        code = await super().reap(timeout)
        await asyncio.get_running_loop().run_in_executor(None, self._reader.join, 5.0)
        return code


def _service_address(owner_pid: int, model: str, number: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)[:40]
    return f"\0framepipe-{owner_pid}-svc-{safe}-{number}-{secrets.token_hex(3)}"


class _Service:
    """One service: its address for good, the process of the moment, its supervision."""

    def __init__(self, owner: InferenceServices, address: ServiceAddress) -> None:
        self.owner = owner
        self.address = address
        self.state = ServiceState.STARTING
        self.proc: _Process | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.crashes = 0
        self.hangs = 0
        self.last_failure: str | None = None
        self.last_failure_detected_at: float | None = None
        self.statistics: EngineStatistics | None = None
        self.connections = 0
        self._last_pong = 0.0
        self._pings = 0
        self._gone = asyncio.Event()
        self._started: asyncio.Future[ServiceReady | ServiceFailed] | None = None

    # ---- messages from the reader thread (on the loop) ----------------------------------------

    # An old process's reader may still post after its successor started: each callback
    # says which process it is about, and only the current one counts.

    def _on_message(self, proc: _Process, message: object) -> None:
        if proc is not self.proc:
            return
        if isinstance(message, ServicePong):
            self._last_pong = time.monotonic()
            self.statistics = message.statistics
            self.connections = message.connections
        elif isinstance(message, ServiceReady | ServiceFailed):
            if self._started is not None and not self._started.done():
                self._started.set_result(message)
        else:
            log.warning("inference service sent an unexpected %s", type(message).__name__)

    def _on_gone(self, proc: _Process) -> None:
        if proc is not self.proc:
            return
        self._gone.set()
        if self._started is not None and not self._started.done():
            code = proc.process.exitcode
            self._started.set_exception(
                OperationError(f"the process exited while starting (exit code {code})")
            )

    # ---- one start ----------------------------------------------------------------------------

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        owner = self.owner
        options = ServiceOptions(
            parent_pid=os.getpid(),
            model=self.address.model,
            providers=self.address.providers,
            address=self.address.address,
            authkey=self.address.authkey,
            settings=owner.settings,
            engine=owner.options.engine,
            max_unanswered=owner.options.max_unanswered,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        self._gone = asyncio.Event()
        self._started = loop.create_future()
        process, conn = await start_child(start_service_process, options)
        self.proc = _Process(process, conn, loop, self._on_message, self._on_gone)
        timeout = owner.options.start_timeout_s
        try:
            async with asyncio.timeout(timeout):
                message = await self._started
        except TimeoutError:
            await self._stop_process(0.0)
            raise OperationError(
                f"the inference service of {self.address.model!r} did not start within {timeout:g} s"
            ) from None
        except OperationError as exc:
            await self._stop_process(0.0)
            raise OperationError(
                f"the inference service of {self.address.model!r} could not start: {exc.message}"
            ) from None
        except BaseException:
            await self._stop_process(0.0)
            raise
        if isinstance(message, ServiceFailed):
            await self._stop_process(0.0)
            raise OperationError(
                f"the inference service of {self.address.model!r} could not start: "
                f"{message.error.message}"
            )
        self._last_pong = time.monotonic()
        self.state = ServiceState.RUNNING
        log.info(
            "inference service of %r: pid %d on %s, %s x%d, ready in %.2f s",
            self.address.model,
            message.pid,
            message.provider,
            "batches" if message.batching else "concurrent runs",
            message.concurrency,
            message.load_s,
        )

    async def _stop_process(self, grace_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if grace_s > 0 and proc.alive:
            proc.send(ServiceShutdown())
        else:
            proc.kill()
        await proc.reap(grace_s)

    # ---- supervision --------------------------------------------------------------------------

    async def supervise(self) -> None:
        try:
            await self._start()
        except Exception as exc:
            self.state = ServiceState.STOPPED
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        while True:
            reason = await self._watch()
            self.last_failure = reason
            self.last_failure_detected_at = time.monotonic()
            self.state = ServiceState.RESTARTING
            log.warning("inference service of %r %s: restarting it", self.address.model, reason)
            await self._stop_process(0.0)
            backoff = self.owner.options.restart_backoff_s
            while True:
                try:
                    await self._start()
                    break
                except OperationError as exc:
                    self.last_failure = exc.message
                    log.error("%s; trying again in %.1f s", exc.message, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.owner.options.restart_backoff_max_s)
            self.restarts += 1

    async def _watch(self) -> str:
        """Wait until the process dies or hangs; returns what happened."""
        options = self.owner.options
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.ping_interval_s):
                    await self._gone.wait()
            proc = self.proc
            if proc is None or self._gone.is_set() or not proc.alive:
                self.crashes += 1
                code = None if proc is None else proc.process.exitcode
                return f"exited (exit code {code})"
            silent = time.monotonic() - self._last_pong
            if silent > options.hang_timeout_s:
                self.hangs += 1
                return f"hung: no answer to pings for {silent:.1f} s"
            self._pings += 1
            proc.send(ServicePing(self._pings))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self._stop_process(self.owner.options.shutdown_timeout_s)
        self.state = ServiceState.STOPPED

    def snapshot(self) -> ServiceStatistics:
        proc = self.proc
        return ServiceStatistics(
            model=self.address.model,
            providers=self.address.providers,
            address=self.address.printable,
            pid=proc.pid if proc is not None and proc.alive else None,
            state=self.state,
            restarts=self.restarts,
            crashes=self.crashes,
            hangs=self.hangs,
            last_failure=self.last_failure,
            last_failure_detected_at=self.last_failure_detected_at,
            connections=self.connections,
            engine=self.statistics,
        )


class InferenceServices:
    """The inference services of a manager (module docstring). Use from one event loop."""

    def __init__(
        self,
        settings: ProcessingSettings | None = None,
        *,
        registry: ModelRegistry | None = None,
        options: ServicesOptions | None = None,
        owner_pid: int | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ProcessingSettings()
        self.registry = (
            registry if registry is not None else ModelRegistry.from_settings(self.settings)
        )
        self.options = options if options is not None else ServicesOptions()
        self._owner_pid = owner_pid if owner_pid is not None else os.getpid()
        self._services: dict[tuple[str, tuple[str, ...]], _Service] = {}
        self._count = 0
        self._closed = False

    def _key(self, model: str, providers: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
        # By the providers asked for, as asked (the service resolves what this machine has):
        # the manager never imports ONNX Runtime.
        wanted = providers if providers is not None else self.settings.providers
        return model, tuple(p.lower() for p in wanted) if wanted else ()

    async def ensure(self, model: str, providers: Sequence[str] | None = None) -> ServiceAddress:
        """The address of ``model``'s service on ``providers``, started if it is not running."""
        if self._closed:
            raise OperationError("the inference services are shut down")
        self.registry.get(model)  # an unknown model: InvalidPayloadError naming it
        key = self._key(model, providers)
        service = self._services.get(key)
        if service is None:
            self._count += 1
            address = ServiceAddress(
                address=_service_address(self._owner_pid, model, self._count),
                authkey=secrets.token_bytes(32),
                model=model,
                providers=key[1],
            )
            service = _Service(self, address)
            self._services[key] = service
            service.task = asyncio.create_task(
                service.supervise(), name=f"inference-service-{model}"
            )
        try:
            await asyncio.shield(service.ready)
        except OperationError:
            if self._services.get(key) is service:
                del self._services[key]  # the next ensure starts afresh
            raise
        return service.address

    def statistics(self) -> list[ServiceStatistics]:
        return [service.snapshot() for service in self._services.values()]

    def pids(self) -> list[int]:
        """Pids of the service processes alive now (for the RAM budget)."""
        return [
            service.proc.pid
            for service in self._services.values()
            if service.proc is not None and service.proc.alive
        ]

    async def close(self) -> None:
        """Stop every service in order (a stopped or hung one is killed); idempotent."""
        self._closed = True
        services = list(self._services.values())
        self._services.clear()
        await asyncio.gather(*(service.close() for service in services))
