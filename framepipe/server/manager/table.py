"""The pipeline table: every pipeline's state, and every decision about it — with no I/O.

The manager (:mod:`framepipe.server.manager.driver`) feeds this table what happened — a worker is
ready, a pipeline started, a worker's report arrived, a client consumed results, a worker died
— always with ``now``, and the table answers with what to do (:class:`Action` s): check a
pipeline's health, end one, expire one whose results nobody reads, start an idle worker. It
holds no sockets, processes or tasks, so every rule here is tested in microseconds.

A row's life::

    IDLE ──(init)──▶ STARTING ──▶ RUNNING ──(sources ended, every frame processed)──▶ FINISHED
      (a warm worker)   (not listed)    │                                                   │
                                        └──(sources failed / worker died / not consumed)──▶ FAILED

A pipeline is listed while RUNNING, FINISHED or FAILED. A FINISHED pipeline keeps its results
until they are drained — then it is removed after ``linger_s`` — or until nobody has consumed
for ``consumption_timeout`` (else ``retention_s``), when it expires: its worker is stopped and it
is FAILED with the number of results discarded. A FAILED pipeline stays listed with its cause
until a client has read its status (then ``linger_s``) or ``retention_s`` has passed. A RUNNING
pipeline whose results are not consumed within its ``consumption_timeout`` expires the same way
(the reference's rule). Admission against the RAM budget is decided here too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from framepipe.core.budget import Admission, MemoryUsage, RamBudget
from framepipe.errors import NotFoundError

__all__ = [
    "Action",
    "CheckHealth",
    "EndPipeline",
    "ExpirePipeline",
    "PipelineTable",
    "Retention",
    "Row",
    "RowState",
    "SpawnIdleWorker",
]


class RowState(StrEnum):
    IDLE = "idle"  # a warm worker in the pool, no pipeline yet
    STARTING = "starting"  # `init` in progress: not listed, not addressable
    RUNNING = "running"
    FINISHED = "finished"  # nothing more will be produced; results may still be buffered
    FAILED = "failed"  # it cannot go on; the cause is kept
    ENDING = "ending"  # being removed


#: Pipeline states a worker reports (PipelineState values) that end a pipeline.
_FINISHED = "FINISHED"
_ENDED_BADLY = ("FAILED", "TERMINATED")


@dataclass(frozen=True)
class Retention:
    """How long ended pipelines stay listed, and how often running ones are checked."""

    linger_s: float = 10.0  # after the last result was drained, or a failure was read
    retention_s: float = 60.0  # at most, for results nobody drains or a failure nobody reads
    health_interval_s: float = 1.0
    pool_refill_delay_s: float = 1.0  # after an `init` took a warm worker


@dataclass(eq=False)
class Row:
    """One pipeline (or idle worker) of the table."""

    pipeline_id: str
    state: RowState
    worker_pid: int
    created_at: float
    ram_samples_mb: deque[float]
    consumption_timeout_s: float | None = None
    last_consumed_at: float = 0.0
    ended_at: float | None = None
    buffered: int = 0  # results waiting in its buffer (as last seen)
    drained_at: float | None = None  # finished, and its last result was taken then
    cause: str | None = None  # why it failed
    status_read_at: float | None = None  # a client read its status after it ended
    worker_alive: bool = True
    health_due_at: float = 0.0
    report: Any = None  # the last status report the worker gave (opaque here)
    pids: set[int] = field(default_factory=set)  # every process seen in its tree

    @property
    def listed(self) -> bool:
        return self.state in (RowState.RUNNING, RowState.FINISHED, RowState.FAILED)

    @property
    def ended(self) -> bool:
        return self.state in (RowState.FINISHED, RowState.FAILED)


@dataclass(frozen=True)
class CheckHealth:
    """Ask the pipeline's worker for its report (and feed it back with ``reported``)."""

    pipeline_id: str


@dataclass(frozen=True)
class EndPipeline:
    """Remove the pipeline: stop its worker, give its sources back, drop the row."""

    pipeline_id: str
    reason: str


@dataclass(frozen=True)
class ExpirePipeline:
    """Stop the worker of a pipeline whose results nobody consumes; the row stays, FAILED."""

    pipeline_id: str
    reason: str


@dataclass(frozen=True)
class SpawnIdleWorker:
    pass


Action = CheckHealth | EndPipeline | ExpirePipeline | SpawnIdleWorker


class PipelineTable:
    """Rows by pipeline id, and the rules of their lives (see the module docstring)."""

    def __init__(
        self,
        *,
        retention: Retention,
        budget: RamBudget,
        preloaded_workers: int = 0,
        ram_window: int = 10,
    ) -> None:
        self.retention = retention
        self.budget = budget
        self.preloaded_workers = preloaded_workers
        self.ram_window = ram_window
        self._rows: dict[str, Row] = {}
        self._spawning = 0  # idle workers being started
        self._reserved_mb = 0.0  # predictions of pipelines being started right now
        self._last_init_at = float("-inf")

    # -- queries ------------------------------------------------------------------------------

    def get(self, pipeline_id: str) -> Row:
        """A listed pipeline, or NotFoundError (the reference's message)."""
        row = self._rows.get(pipeline_id)
        if row is None or not row.listed:
            raise NotFoundError(f"Could not find InferencePipeline with id={pipeline_id}.")
        return row

    def find(self, pipeline_id: str) -> Row | None:
        return self._rows.get(pipeline_id)

    def listed(self) -> list[str]:
        return [row.pipeline_id for row in self._rows.values() if row.listed]

    def rows(self) -> list[Row]:
        return list(self._rows.values())

    def idle_count(self) -> int:
        return sum(1 for row in self._rows.values() if row.state is RowState.IDLE)

    # -- admission ----------------------------------------------------------------------------

    def admit(
        self,
        usage: MemoryUsage,
        new_rings_bytes: int,
        reused: Row | None = None,
        results_bytes: int = 0,
    ) -> Admission:
        """Admit a new pipeline whose rings take ``new_rings_bytes``, or raise (OperationError
        with the numbers; ShmExhaustedError when /dev/shm has no room). Pipelines being started
        right now count as in use; the admission is reserved until :meth:`settle`."""
        reserved = MemoryUsage(
            manager_mb=usage.manager_mb,
            workers_mb=usage.workers_mb + self._reserved_mb,
            shared_segments_mb=usage.shared_segments_mb,
            shm_free_bytes=usage.shm_free_bytes,
        )
        admission = self.budget.admit(
            usage=reserved,
            worker_samples_mb=[row.ram_samples_mb for row in self._rows.values()],
            new_rings_bytes=new_rings_bytes,
            results_bytes=results_bytes,
            reused_worker_mb=(
                reused.ram_samples_mb[-1] if reused is not None and reused.ram_samples_mb else None
            ),
        )
        self._reserved_mb += admission.predicted_mb
        return admission

    @property
    def reserved_mb(self) -> float:
        """The predictions of the pipelines being admitted and started right now."""
        return self._reserved_mb

    def settle(self, admission: Admission) -> None:
        """The pipeline admitted with ``admission`` started (or failed): stop reserving."""
        self._reserved_mb = max(0.0, self._reserved_mb - admission.predicted_mb)

    def admit_idle_worker(self, usage: MemoryUsage) -> Admission:
        return self.budget.admit(
            usage=usage,
            worker_samples_mb=[row.ram_samples_mb for row in self._rows.values()],
            new_rings_bytes=0,
        )

    # -- workers and pipelines ----------------------------------------------------------------

    def spawning(self, n: int) -> None:
        """``n`` more (or fewer) idle workers are being started."""
        self._spawning = max(0, self._spawning + n)

    def add_worker(self, pipeline_id: str, pid: int, state: RowState, now: float) -> Row:
        """A worker process exists for ``pipeline_id`` (IDLE in the pool, or STARTING)."""
        row = Row(
            pipeline_id=pipeline_id,
            state=state,
            worker_pid=pid,
            created_at=now,
            ram_samples_mb=deque(maxlen=self.ram_window),
            pids={pid},
        )
        self._rows[pipeline_id] = row
        return row

    def take_idle(self, now: float) -> Row | None:
        """A warm worker for a new pipeline (it becomes STARTING), or None."""
        for row in self._rows.values():
            if row.state is RowState.IDLE and row.worker_alive:
                row.state = RowState.STARTING
                self._last_init_at = now
                return row
        self._last_init_at = now
        return None

    def give_back(self, row: Row) -> None:
        """An idle worker taken for an `init` that was refused goes back to the pool."""
        if row.state is RowState.STARTING:
            row.state = RowState.IDLE

    def started(self, pipeline_id: str, consumption_timeout_s: float | None, now: float) -> None:
        row = self._rows[pipeline_id]
        row.state = RowState.RUNNING
        row.consumption_timeout_s = consumption_timeout_s
        row.last_consumed_at = now
        row.health_due_at = now + self.retention.health_interval_s

    def remove(self, pipeline_id: str) -> Row | None:
        return self._rows.pop(pipeline_id, None)

    def ending(self, pipeline_id: str) -> Row:
        """The pipeline is being removed (a terminate, or an action): not listed any more."""
        row = self.get(pipeline_id)
        row.state = RowState.ENDING
        return row

    # -- what happened ------------------------------------------------------------------------

    def reported(
        self, pipeline_id: str, state: str, buffered: int, report: Any, now: float
    ) -> None:
        """The worker's latest report: the pipeline's state (a ``PipelineState`` value) and how
        many results wait in its buffer."""
        row = self._rows.get(pipeline_id)
        if row is None or row.state not in (RowState.RUNNING, RowState.FINISHED, RowState.FAILED):
            return
        row.report = report
        row.health_due_at = now + self.retention.health_interval_s
        if row.state is RowState.RUNNING:
            if state == _FINISHED:
                row.state = RowState.FINISHED
                row.ended_at = now
            elif state in _ENDED_BADLY:
                row.state = RowState.FAILED
                row.ended_at = now
                failure = getattr(report, "failure", None)
                row.cause = failure or "the pipeline stopped"
        self._buffered(row, buffered, now)

    @staticmethod
    def _buffered(row: Row, buffered: int, now: float) -> None:
        row.buffered = buffered
        if row.state is not RowState.FINISHED or buffered:
            row.drained_at = None
        elif row.drained_at is None:
            row.drained_at = now

    def consumed(self, pipeline_id: str, buffered: int, now: float) -> None:
        row = self._rows.get(pipeline_id)
        if row is None:
            return
        row.last_consumed_at = now
        self._buffered(row, buffered, now)

    def status_read(self, pipeline_id: str, now: float) -> None:
        row = self._rows.get(pipeline_id)
        if row is not None and row.ended and row.status_read_at is None:
            row.status_read_at = now

    def worker_exited(self, pipeline_id: str, description: str, now: float) -> None:
        """The worker process ended (or was killed) without being asked to."""
        row = self._rows.get(pipeline_id)
        if row is None:
            return
        row.worker_alive = False
        if row.state in (RowState.IDLE, RowState.STARTING, RowState.ENDING):
            if row.state is RowState.IDLE:
                self._rows.pop(pipeline_id, None)
            return
        if row.state is RowState.FAILED and row.cause is not None:
            return  # it had failed already (e.g. expired: its worker was stopped)
        discarded = row.buffered if row.state is RowState.FINISHED else 0
        row.state = RowState.FAILED
        row.ended_at = now
        row.cause = f"the pipeline worker (pid {row.worker_pid}) {description}" + (
            f"; {discarded} unread results were lost with it" if discarded else ""
        )

    def expired(self, pipeline_id: str, reason: str, now: float) -> None:
        """The driver stopped the worker of a pipeline nobody consumed (ExpirePipeline)."""
        row = self._rows.get(pipeline_id)
        if row is None:
            return
        row.worker_alive = False
        row.state = RowState.FAILED
        row.ended_at = now
        row.cause = reason

    def sampled(self, pipeline_id: str, unique_mb: float, pids: Iterable[int]) -> None:
        row = self._rows.get(pipeline_id)
        if row is not None:
            row.ram_samples_mb.append(unique_mb)
            row.pids.update(pids)

    # -- decisions ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """What to do now."""
        actions: list[Action] = []
        retention = self.retention
        for row in self._rows.values():
            pipeline_id = row.pipeline_id
            if row.state is RowState.RUNNING:
                timeout = row.consumption_timeout_s
                if timeout is not None and now - row.last_consumed_at >= timeout:
                    actions.append(
                        ExpirePipeline(
                            pipeline_id,
                            f"no result consumed for {now - row.last_consumed_at:.1f} s "
                            f"(consumption_timeout={timeout:g} s); "
                            f"{row.buffered} unread results discarded",
                        )
                    )
                elif now >= row.health_due_at:
                    actions.append(CheckHealth(pipeline_id))
            elif row.state is RowState.FINISHED:
                idle_for = now - max(row.last_consumed_at, row.ended_at or now)
                if row.buffered == 0:
                    # Counted from the moment the last result was taken: a client polling
                    # an empty buffer does not keep a finished pipeline alive.
                    drained_at = row.drained_at if row.drained_at is not None else now
                    if now - drained_at >= retention.linger_s:
                        actions.append(
                            EndPipeline(pipeline_id, "finished; every result was consumed")
                        )
                    elif now >= row.health_due_at:
                        actions.append(CheckHealth(pipeline_id))
                else:
                    limit = row.consumption_timeout_s or retention.retention_s
                    if now - row.last_consumed_at >= limit and idle_for >= limit:
                        actions.append(
                            ExpirePipeline(
                                pipeline_id,
                                f"finished, but no result was consumed for {limit:g} s; "
                                f"{row.buffered} unread results discarded",
                            )
                        )
                    elif now >= row.health_due_at:
                        actions.append(CheckHealth(pipeline_id))
            elif row.state is RowState.FAILED:
                ended = row.ended_at if row.ended_at is not None else now
                if (
                    row.status_read_at is not None
                    and now - row.status_read_at >= retention.linger_s
                ):
                    actions.append(
                        EndPipeline(pipeline_id, f"failed ({row.cause}); its status was read")
                    )
                elif now - ended >= retention.retention_s:
                    actions.append(
                        EndPipeline(pipeline_id, f"failed ({row.cause}); retention passed")
                    )
        idle = self.idle_count() + self._spawning
        if (
            idle < self.preloaded_workers
            and now - self._last_init_at >= retention.pool_refill_delay_s
        ):
            actions.append(SpawnIdleWorker())
        return actions
