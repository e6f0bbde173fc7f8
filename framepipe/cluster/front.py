"""The cluster front end's command handler: places pipelines on nodes and routes commands.

:class:`ClusterFront` is a :class:`~framepipe.server.manager.tcp.CommandHandler`, so the TCP
front end, the clients, the HTTP gateway and the metrics endpoint serve it exactly as they serve a
single-machine manager. It reaches each node's agent manager as a client (like the gateway
reaches the manager), with the cluster's agent token.

Its table maps each pipeline's id (the one clients know, minted here) to a
:class:`~framepipe.cluster.store.PipelineRecord` — the node, the agent manager's pid and the
pipeline's id on that manager — mirrored in Ray's GCS key-value store, so that:

* a node death (Ray's node table says so, about a second after its raylet dies with the
  health checks framepipe ships) places that node's pipelines again on the other nodes, from
  the ``init`` payload kept in the store; the status then reports the move and the results
  that were buffered on the dead node (lost with it);
* a restarted front end rebuilds the table from the store and the agents: a pipeline still
  running on its node is adopted; one whose node or manager is gone is placed again; one that
  ended meanwhile is dropped; a pipeline an agent runs that no record names (an ``init`` the
  previous front end did not finish) is terminated.

Blocking Ray calls run in a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from framepipe.client.aio import StreamManagerClient
from framepipe.client.errors import ConnectivityError
from framepipe.cluster.agent import AgentConfig, AgentInfo, NodeAgent, agent_name
from framepipe.cluster.placement import (
    InsufficientCapacityError,
    NodeView,
    PipelineNeed,
    capacity_message,
    rank_nodes,
    refusal,
)
from framepipe.cluster.reservations import Reservations
from framepipe.cluster.settings import NAMESPACE, ClusterSettings
from framepipe.cluster.store import Move, PipelineRecord, RecordStore
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MetricsCommand,
    MuteCommand,
    PipelineCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
    parse_command,
)
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    ListPipelinesBody,
    ResultEntry,
    StatusBody,
    SuccessBody,
)
from framepipe.protocol.errors import (
    CapacityError,
    FramepipeError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
)
from framepipe.protocol.metrics import (
    ManagerFigures,
    MetricsBody,
    MetricsSnapshot,
    PipelineFigures,
    ServiceFigures,
)
from framepipe.protocol.payloads import InitialisePipelinePayload
from framepipe.server.settings import ServerSettings

log = logging.getLogger("framepipe.cluster")

__all__ = ["ClusterFront", "agent_env"]

T = TypeVar("T")

#: A command to an agent's manager (other than init) must be answered within this time.
COMMAND_TIMEOUT_S = 15.0
#: A camera slot must be reserved in Ray's scheduler within this time, or the node is full.
RESERVE_TIMEOUT_S = 2.0
#: A node whose agent could not start is tried again after this many seconds.
AGENT_RETRY_S = 10.0
#: A ``metrics`` request waits this long for fresh figures from the nodes.
METRICS_TIMEOUT_S = 2.0


def agent_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The front end's framepipe settings that the agents' managers take over (models,
    timeouts, decoders...); where a manager listens, its token and its budget are the agent's."""
    own = {
        "STREAM_MANAGER_HOST",
        "STREAM_MANAGER_PORT",
        "STREAM_MANAGER_MAX_RAM_MB",
        "FRAMEPIPE_TOKEN",
        "FRAMEPIPE_TLS_CERT",
        "FRAMEPIPE_TLS_KEY",
    }
    return {
        key: value
        for key, value in environ.items()
        if key.startswith(("FRAMEPIPE_", "STREAM_")) and key not in own
    }


@dataclass
class _Agent:
    node_id: str
    handle: Any
    info: AgentInfo
    client: StreamManagerClient
    init_client: StreamManagerClient
    metrics: MetricsSnapshot | None = None
    metrics_at: float = 0.0


@dataclass
class _Placing:
    """Pipelines being started, per node (they hold a slot before their record names it)."""

    per_node: dict[str, int] = field(default_factory=dict)


class ClusterFront:
    """The command handler of ``framepipe serve --backend ray``."""

    def __init__(self, settings: ServerSettings, cluster: ClusterSettings) -> None:
        self.settings = settings
        self.cluster = cluster
        self._store = RecordStore()
        self._reservations = Reservations()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="framepipe-ray")
        self._agents: dict[str, _Agent] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._agent_failed_at: dict[str, float] = {}
        self._dead: set[str] = set()
        self._records: dict[str, PipelineRecord] = {}
        self._placed_at: dict[str, float] = {}
        self._needs: dict[str, PipelineNeed] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._placing = _Placing()
        self._token = ""
        self._monitor: asyncio.Task[None] | None = None
        self._moves: set[asyncio.Task[None]] = set()
        self._started_at = time.monotonic()

    # -- life -------------------------------------------------------------------------------

    async def _ray(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self) -> None:
        """Agents on every live node, the table rebuilt from the store, then the monitor."""
        self._token = await self._ray(
            lambda: self._store.agent_token(self.settings.token or secrets.token_urlsafe(32))
        )
        records = await self._ray(self._store.load_all)
        alive = await self._alive_nodes()
        await asyncio.gather(*(self._ensure_agent(node_id) for node_id in alive))
        await self._rebuild(records, alive)
        self._monitor = asyncio.create_task(self._monitor_loop(), name="framepipe-cluster-monitor")

    async def close(self) -> None:
        """Stop routing. The agents and their pipelines keep running (a front end that starts
        again adopts them); see :func:`framepipe.cluster.app.shutdown_cluster` to stop them."""
        tasks = [t for t in (self._monitor, *self._starting.values(), *self._moves) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- agents -----------------------------------------------------------------------------

    async def _alive_nodes(self) -> set[str]:
        from framepipe.cluster._ray import nodes as ray_nodes

        nodes = await self._ray(ray_nodes)
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        self._dead |= {n["NodeID"] for n in nodes if not n.get("Alive")}
        return alive

    async def _ensure_agent(self, node_id: str) -> None:
        try:
            handle, info = await self._ray(lambda: self._start_agent_sync(node_id))
        except Exception as exc:
            log.warning(
                "no framepipe agent on node %s (trying again in %.0f s): %s",
                node_id,
                AGENT_RETRY_S,
                exc,
            )
            self._agent_failed_at[node_id] = time.monotonic()
            return
        self._agent_failed_at.pop(node_id, None)
        host = info.host
        self._agents[node_id] = _Agent(
            node_id=node_id,
            handle=handle,
            info=info,
            client=StreamManagerClient(host, info.port, COMMAND_TIMEOUT_S, auth_token=self._token),
            init_client=StreamManagerClient(
                host,
                info.port,
                self.settings.init_timeout_s + self.settings.spawn_timeout_s,
                connect_timeout=COMMAND_TIMEOUT_S,
                auth_token=self._token,
            ),
        )
        with contextlib.suppress(Exception):
            await self._refresh_metrics(self._agents[node_id])
        log.info(
            "node %s: agent manager on %s:%d (pid %d, %d camera slots, RAM budget %.0f MB)",
            node_id[:12],
            host,
            info.port,
            info.manager_pid,
            info.camera_slots,
            info.ram_budget_mb,
        )

    def _start_agent_sync(self, node_id: str) -> tuple[Any, AgentInfo]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        config = AgentConfig(
            token=self._token,
            env=agent_env(os.environ),
            node_ram_mb=self.cluster.node_ram_mb,
            start_timeout_s=self.cluster.agent_start_timeout_s,
        )
        actor: Any = ray.remote(NodeAgent).options(
            name=agent_name(node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        handle: Any = actor.remote(config, self.cluster.default_camera_slots)
        info: dict[str, Any] = ray.get(
            handle.info.remote(), timeout=self.cluster.agent_start_timeout_s + 30
        )
        return handle, AgentInfo(**info)

    async def _refresh_metrics(self, agent: _Agent) -> None:
        asked_at = time.monotonic()
        snapshot = await agent.client.get_metrics()
        agent.metrics, agent.metrics_at = snapshot, asked_at

    # -- the monitor ------------------------------------------------------------------------

    async def _monitor_loop(self) -> None:
        last_metrics = 0.0
        while True:
            try:
                alive = await self._alive_nodes()
                for node_id in list(self._agents):
                    if node_id not in alive:
                        self._node_died(node_id)
                for node_id in alive - set(self._agents) - set(self._starting):
                    failed_at = self._agent_failed_at.get(node_id)
                    if failed_at is None or time.monotonic() - failed_at >= AGENT_RETRY_S:
                        log.info("node %s: starting its framepipe agent", node_id[:12])
                        self._start_agent_task(node_id)
                if time.monotonic() - last_metrics >= self.cluster.metrics_interval_s:
                    last_metrics = time.monotonic()
                    await self._metrics_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster monitor")
            await asyncio.sleep(self.cluster.poll_interval_s)

    def _start_agent_task(self, node_id: str) -> None:
        task = asyncio.create_task(self._ensure_agent(node_id))
        self._starting[node_id] = task

        def done(_task: asyncio.Task[None]) -> None:
            self._starting.pop(node_id, None)

        task.add_done_callback(done)

    async def _metrics_round(self) -> None:
        agents = list(self._agents.values())
        results = await asyncio.gather(
            *(self._refresh_metrics(a) for a in agents), return_exceptions=True
        )
        for agent, result in zip(agents, results, strict=True):
            if isinstance(result, BaseException) or agent.metrics is None:
                continue
            listed = {p.pipeline_id for p in agent.metrics.pipelines}
            for record in list(self._records.values()):
                ended = (
                    record.node_id == agent.node_id
                    and record.local_id not in listed
                    and self._placed_at.get(record.pipeline_id, 0.0) < agent.metrics_at
                    and not self._lock(record.pipeline_id).locked()
                )
                if ended:
                    # It ended on its node and was removed there (results drained or expired).
                    log.info("pipeline %s ended on node %s", record.pipeline_id, agent.node_id)
                    await self._forget(record.pipeline_id)

    def _node_died(self, node_id: str) -> None:
        agent = self._agents.pop(node_id)
        self._dead.add(node_id)
        died_at = time.time()
        lost = {
            p.pipeline_id: p.results_buffered
            for p in (agent.metrics.pipelines if agent.metrics else [])
        }
        victims = [r for r in self._records.values() if r.node_id == node_id and not r.failure]
        log.warning(
            "node %s is dead: placing its %d pipelines on other nodes", node_id[:12], len(victims)
        )
        for record in victims:
            task = asyncio.create_task(
                self._move(
                    record, node_id, died_at, "node died", lost.get(record.local_id or "", 0)
                )
            )
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)

    async def _move(
        self, record: PipelineRecord, from_node: str, at: float, reason: str, lost: int
    ) -> None:
        async with self._lock(record.pipeline_id):
            if record.pipeline_id not in self._records:
                return  # terminated meanwhile
            payload = _payload(record.payload)
            move = Move(
                from_node=from_node,
                to_node=None,
                at=at,
                reason=reason,
                results_lost=lost,
                restarted_from="the live stream" if _live_sources(payload) else "the beginning",
            )
            record.moves.append(move)
            record.node_id = record.local_id = record.manager_pid = None
            # the slot it held on the node it leaves
            await self._ray(lambda: self._reservations.release(record.pipeline_id))
            try:
                agent, local_id = await self._place(payload, record.pipeline_id)
            except FramepipeError as exc:
                record.failure = (
                    f"could not run again after {reason} on node {from_node}: {exc.message}"
                )
                log.warning("pipeline %s: %s", record.pipeline_id, record.failure)
            else:
                move.to_node = agent.node_id
                self._set_placement(record, agent, local_id)
                log.info(
                    "pipeline %s moved from node %s to node %s",
                    record.pipeline_id,
                    from_node[:12],
                    agent.node_id[:12],
                )
            await self._ray(lambda: self._store.put(record))

    async def _rebuild(self, records: list[PipelineRecord], alive: set[str]) -> None:
        """The table from the store and the agents. Every record is sorted first (adopted,
        dropped, or to place again); then the reservations no record names are released and
        the pipelines no record names are terminated; only then are the others placed again,
        so that placement sees every node's adopted pipelines and Ray's slots as they are."""
        listed: dict[str, set[str]] = {}
        for node_id, agent in self._agents.items():
            with contextlib.suppress(FramepipeError):
                listed[node_id] = set((await agent.client.list_pipelines()).pipelines)
        kept: dict[str, set[str]] = {}
        to_move: list[tuple[PipelineRecord, str, str]] = []
        for record in records:
            owner = self._agents.get(record.node_id or "")
            if record.failure is not None:
                self._records[record.pipeline_id] = record
            elif record.node_id is None and not record.moves:
                # an init the previous front end did not finish: the client got no id
                await self._ray(lambda r=record: self._store.delete(r.pipeline_id))  # type: ignore[misc]
            elif (
                owner is not None
                and owner.info.manager_pid == record.manager_pid
                and record.node_id in listed
            ):
                if record.local_id in listed[owner.node_id]:
                    self._records[record.pipeline_id] = record
                    self._placed_at[record.pipeline_id] = time.monotonic()
                    kept.setdefault(owner.node_id, set()).add(record.local_id or "")
                else:  # it ended while no front end was looking
                    await self._ray(lambda r=record: self._store.delete(r.pipeline_id))  # type: ignore[misc]
            else:
                self._records[record.pipeline_id] = record
                gone = record.node_id or "unknown"
                why = "node died" if record.node_id not in alive else "node's manager restarted"
                if record.node_id is None:
                    why = "front end restarted during a move"
                # not counted on the node it left while the others are placed
                record.node_id = record.local_id = record.manager_pid = None
                to_move.append((record, gone, why))
        for stale in await self._ray(self._reservations.held) - set(self._records):
            await self._ray(lambda p=stale: self._reservations.release(p))  # type: ignore[misc]
        for node_id, ids in listed.items():
            for orphan in ids - kept.get(node_id, set()):
                log.warning(
                    "terminating pipeline %s on node %s: no record names it", orphan, node_id
                )
                with contextlib.suppress(FramepipeError):
                    await self._agents[node_id].client.terminate_pipeline(orphan)
        for record, gone, why in to_move:
            await self._move(record, gone, time.time(), why, 0)
        log.info("cluster front end: %d pipelines in the table", len(self._records))

    # -- placement --------------------------------------------------------------------------

    def _views(self) -> list[NodeView]:
        counts: dict[str, int] = dict(self._placing.per_node)
        for record in self._records.values():
            if record.node_id is not None:
                counts[record.node_id] = counts.get(record.node_id, 0) + 1
        views = []
        for agent in self._agents.values():
            snapshot = agent.metrics
            models: set[str] = set()
            live: set[str] = set()
            free: int | None = None
            # its pipelines' cameras and models, from the table (current, unlike the metrics)
            for record in self._records.values():
                if record.node_id == agent.node_id:
                    need = self._record_need(record)
                    live |= need.live_sources
                    if need.model is not None:
                        models.add(need.model)
            if snapshot is not None:
                models |= {s.model for s in snapshot.services}
                used, limit = (
                    snapshot.manager.memory_used_bytes,
                    snapshot.manager.memory_limit_bytes,
                )
                if used is not None and limit is not None:
                    free = (
                        limit
                        - used
                        - self._placing.per_node.get(agent.node_id, 0) * int(self._pipeline_bytes())
                    )
            views.append(
                NodeView(
                    node_id=agent.node_id,
                    camera_slots=agent.info.camera_slots,
                    pipelines=counts.get(agent.node_id, 0),
                    memory_free_bytes=free,
                    gpus=agent.info.gpus,
                    models=frozenset(models),
                    live_sources=frozenset(live),
                )
            )
        return views

    def _pipeline_bytes(self) -> float:
        """A new pipeline's predicted need: the largest pipeline measured on any node (its
        worker's unique memory), else the configured estimate."""
        measured = [
            p.memory_unique_bytes
            for agent in self._agents.values()
            if agent.metrics is not None
            for p in agent.metrics.pipelines
            if p.memory_unique_bytes
        ]
        return float(max(measured, default=0)) or self.cluster.pipeline_mb * 1e6

    def _record_need(self, record: PipelineRecord) -> PipelineNeed:
        need = self._needs.get(record.pipeline_id)
        if need is None:
            need = self._needs[record.pipeline_id] = self._need(_payload(record.payload))
        return need

    def _need(self, payload: InitialisePipelinePayload) -> PipelineNeed:
        processing = payload.raw_processing_configuration
        model = processing.get("model") if isinstance(processing.get("model"), str) else None
        providers = processing.get("providers") or []
        gpu = any("cuda" in str(p).lower() or "tensorrt" in str(p).lower() for p in providers)
        return PipelineNeed(
            model=None if model == "passthrough" else model,
            live_sources=_live_sources(payload),
            memory_bytes=int(self._pipeline_bytes()),
            gpu=gpu,
        )

    async def _place(
        self, payload: InitialisePipelinePayload, pipeline_id: str
    ) -> tuple[_Agent, str]:
        """Start the pipeline on the best node that takes it: (that node's agent, the
        pipeline's id there). A node where Ray has no camera slot to reserve, whose manager
        refuses for lack of capacity, or that does not answer, is skipped for the next; a
        request that is wrong on every node is raised."""
        need = self._need(payload)
        reasons: list[str] = []
        tried: set[str] = set()
        while True:
            views = self._views_or_refuse(reasons)
            ranked = rank_nodes(views, need)
            if not tried:  # a node with a free slot that cannot take it (memory, GPU) is news
                for view in views:
                    reason = refusal(view, need)
                    if reason is not None and view.free_slots > 0:
                        log.info(
                            "pipeline %s: node %s left out: %s",
                            pipeline_id,
                            view.node_id[:12],
                            reason,
                        )
            candidates = [v for v in ranked if v.node_id not in tried]
            if not candidates:
                raise InsufficientCapacityError(capacity_message(reasons, len(self._agents)))
            node_id = candidates[0].node_id
            tried.add(node_id)
            agent = self._agents[node_id]
            self._placing.per_node[node_id] = self._placing.per_node.get(node_id, 0) + 1
            try:
                if agent.info.slots_declared and not await self._ray(
                    lambda n=node_id: self._reservations.reserve(  # type: ignore[misc]
                        pipeline_id, n, RESERVE_TIMEOUT_S
                    )
                ):
                    reasons.append(f"node {node_id[:12]}: no camera slot free in Ray")
                    log.info("pipeline %s: %s; trying the next node", pipeline_id, reasons[-1])
                    continue
                try:
                    envelope = await agent.init_client.send(InitCommand(payload=payload))
                except BaseException:
                    await self._ray(lambda: self._reservations.release(pipeline_id))
                    raise
            except CapacityError as exc:
                reasons.append(f"node {node_id[:12]}: {exc.message}")
                log.info("pipeline %s: %s; trying the next node", pipeline_id, reasons[-1])
                continue
            except ConnectivityError as exc:
                reasons.append(f"node {node_id[:12]}: its manager does not answer ({exc})")
                log.info("pipeline %s: %s; trying the next node", pipeline_id, reasons[-1])
                continue
            finally:
                self._placing.per_node[node_id] -= 1
            if envelope.pipeline_id is None:
                raise OperationError(f"node {node_id} started a pipeline without naming it")
            return agent, envelope.pipeline_id

    def _views_or_refuse(self, reasons: list[str]) -> list[NodeView]:
        views = self._views()
        if not views:
            raise InsufficientCapacityError(capacity_message(reasons, 0))
        return views

    def _set_placement(self, record: PipelineRecord, agent: _Agent, local_id: str) -> None:
        record.node_id = agent.node_id
        record.manager_pid = agent.info.manager_pid
        record.local_id = local_id
        record.failure = None
        self._placed_at[record.pipeline_id] = time.monotonic()

    # -- commands ---------------------------------------------------------------------------

    def _lock(self, pipeline_id: str) -> asyncio.Lock:
        return self._locks.setdefault(pipeline_id, asyncio.Lock())

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        if isinstance(command, ListPipelinesCommand):
            return PlacedListBody(
                pipelines=list(self._records),
                nodes={pid: r.node_id for pid, r in self._records.items()},
            )
        if isinstance(command, InitCommand):
            return SuccessBody(pipeline_id=await self._init(command.payload))
        if isinstance(command, WebRTCCommand):
            raise InvalidPayloadError(
                "webrtc pipelines are not served by the Ray backend yet: connect the peer to "
                "a node's manager directly"
            )
        if isinstance(command, MetricsCommand):
            # fresh from every node (a node that does not answer in time: its last figures)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(METRICS_TIMEOUT_S):
                    await self._metrics_round()
            return MetricsBody(snapshot=self._merged_metrics())
        if isinstance(command, PipelineCommand):
            return await self._routed(command)
        raise InvalidPayloadError(f"Unsupported command {type(command).__name__}")

    async def _init(self, payload: InitialisePipelinePayload) -> str:
        pipeline_id = str(uuid.uuid4())
        record = PipelineRecord(
            pipeline_id=pipeline_id, payload=payload.to_wire(), created_at=time.time()
        )
        async with self._lock(pipeline_id):
            # Written first: a front end that dies now leaves a record its successor removes
            # (and the pipeline, if a node started it, is then an orphan it terminates).
            await self._ray(lambda: self._store.put(record))
            try:
                agent, local_id = await self._place(payload, pipeline_id)
            except BaseException:
                await self._ray(lambda: self._store.delete(pipeline_id))
                self._locks.pop(pipeline_id, None)
                raise
            self._set_placement(record, agent, local_id)
            self._records[pipeline_id] = record
            await self._ray(lambda: self._store.put(record))
        log.info("pipeline %s placed on node %s as %s", pipeline_id, agent.node_id[:12], local_id)
        return pipeline_id

    async def _forget(self, pipeline_id: str) -> None:
        self._records.pop(pipeline_id, None)
        self._placed_at.pop(pipeline_id, None)
        self._needs.pop(pipeline_id, None)
        await self._ray(lambda: self._reservations.release(pipeline_id))
        await self._ray(lambda: self._store.delete(pipeline_id))

    async def _routed(self, command: PipelineCommand) -> SuccessBody:
        pipeline_id = command.pipeline_id
        record = self._records.get(pipeline_id)
        if record is None:
            raise NotFoundError(f"Pipeline with id={pipeline_id} not found")
        if isinstance(command, TerminateCommand):
            async with self._lock(pipeline_id):
                agent = self._agents.get(record.node_id or "")
                if agent is not None and record.local_id is not None:
                    with contextlib.suppress(NotFoundError):
                        await agent.client.terminate_pipeline(record.local_id)
                await self._forget(pipeline_id)
            self._locks.pop(pipeline_id, None)
            return SuccessBody(pipeline_id=pipeline_id)
        agent = self._agents.get(record.node_id or "")
        if agent is None or record.local_id is None:
            # failed to move, or being moved right now
            if isinstance(command, StatusCommand):
                return StatusBody(pipeline_id=pipeline_id, report=self._unplaced_report(record))
            if isinstance(command, ConsumeResultCommand):
                return ConsumeResultBody(pipeline_id=pipeline_id)
            raise OperationError(
                record.failure or f"pipeline {pipeline_id} is being placed on another node"
            )
        local = command.model_copy(update={"pipeline_id": record.local_id})
        try:
            envelope = await agent.client.send(local)
        except ConnectivityError as exc:
            raise OperationError(
                f"node {agent.node_id[:12]} that runs pipeline {pipeline_id} did not answer: "
                f"{exc.message}; try again"
            ) from None
        except NotFoundError:
            if record.node_id == agent.node_id and agent.node_id in self._agents:
                await self._forget(pipeline_id)
            raise NotFoundError(f"Pipeline with id={pipeline_id} not found") from None
        response = envelope.response
        if isinstance(command, StatusCommand):
            report = dict(response["report"])
            report["cluster"] = self._placement_report(record, agent)
            return StatusBody(pipeline_id=pipeline_id, report=report)
        if isinstance(command, ConsumeResultCommand):
            extra = response.get("extra_entries")
            return ConsumeResultBody(
                pipeline_id=pipeline_id,
                outputs=response.get("outputs", []),
                frames_metadata=response.get("frames_metadata", []),
                extra_entries=None
                if extra is None
                else [ResultEntry(e["outputs"], e["frames_metadata"]) for e in extra],
            )
        if isinstance(command, MuteCommand | ResumeCommand):
            return SuccessBody(pipeline_id=pipeline_id)
        raise InvalidPayloadError(f"Unsupported command {type(command).__name__}")

    def _placement_report(self, record: PipelineRecord, agent: _Agent | None) -> dict[str, Any]:
        return {
            "node_id": record.node_id,
            "node_address": agent.info.host if agent is not None else None,
            "node_pipeline_id": record.local_id,
            "moves": [vars(m) for m in record.moves],
            "results_lost": sum(m.results_lost for m in record.moves),
            "failure": record.failure,
        }

    def _unplaced_report(self, record: PipelineRecord) -> dict[str, Any]:
        from framepipe.core.pipeline import PipelineState

        failure = record.failure
        return {
            "video_source_status_updates": [],
            "latency_reports": [],
            "inference_throughput": 0.0,
            "sources_metadata": [],
            "framepipe": {
                "state": PipelineState.FAILED.value if failure else "MOVING",
                "finished": failure is not None,
                "failure": failure,
            },
            "cluster": self._placement_report(record, None),
        }

    def _merged_metrics(self) -> MetricsSnapshot:
        """Every node's figures together: pipelines under the ids clients know, each figure's
        node in its ``node`` field."""
        by_local = {
            (r.node_id, r.local_id): r.pipeline_id for r in self._records.values() if r.local_id
        }
        pipelines: list[PipelineFigures] = []
        services: list[ServiceFigures] = []
        by_state: dict[str, int] = {}
        totals = {"idle": 0, "decoders": 0, "used": 0, "limit": 0}
        for agent in self._agents.values():
            snapshot = agent.metrics
            if snapshot is None:
                continue
            for p in snapshot.pipelines:
                front_id = by_local.get((agent.node_id, p.pipeline_id))
                if front_id is not None:
                    pipelines.append(
                        p.model_copy(update={"pipeline_id": front_id, "node": agent.node_id})
                    )
            services.extend(s.model_copy(update={"node": agent.node_id}) for s in snapshot.services)
            manager = snapshot.manager
            for state, n in manager.pipelines_by_state.items():
                by_state[state] = by_state.get(state, 0) + n
            totals["idle"] += manager.idle_workers
            totals["decoders"] += manager.decoder_processes
            totals["used"] += manager.memory_used_bytes or 0
            totals["limit"] += manager.memory_limit_bytes or 0
        return MetricsSnapshot(
            manager=ManagerFigures(
                uptime_seconds=time.monotonic() - self._started_at,
                pipelines_by_state=by_state,
                idle_workers=totals["idle"],
                decoder_processes=totals["decoders"],
                memory_used_bytes=totals["used"],
                memory_limit_bytes=totals["limit"] or None,
            ),
            pipelines=pipelines,
            services=services,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacedListBody(ListPipelinesBody):
    """``list_pipelines`` with the node of each pipeline (an extra field the reference's
    clients ignore)."""

    nodes: dict[str, str | None]

    def to_wire(self) -> dict[str, Any]:
        wire = ListPipelinesBody.to_wire(self)
        wire["nodes"] = dict(self.nodes)
        return wire


def _payload(wire: dict[str, Any]) -> InitialisePipelinePayload:
    command = parse_command({**wire, "type": "init"})
    assert isinstance(command, InitCommand)
    return command.payload


def _live_sources(payload: InitialisePipelinePayload) -> frozenset[str]:
    """The pipeline's live sources (cameras, streams), as keys to match decoders by."""
    reference = payload.video_configuration.video_reference
    references = reference if isinstance(reference, list) else [reference]
    live = set()
    for item in references:
        if isinstance(item, int) or ("://" in item and not item.startswith("file://")):
            live.add(str(item))
        elif item.startswith("/dev/video"):
            live.add(item)
    return frozenset(live)
