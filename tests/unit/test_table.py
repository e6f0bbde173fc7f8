"""The pipeline table's rules, given ``now`` — no processes, no sockets, no waiting."""

from __future__ import annotations

import pytest

from framepipe.core.budget import MemoryUsage, RamBudget
from framepipe.errors import NotFoundError, OperationError
from framepipe.server.manager.table import (
    CheckHealth,
    EndPipeline,
    ExpirePipeline,
    PipelineTable,
    Retention,
    RowState,
    SpawnIdleWorker,
)

RETENTION = Retention(
    linger_s=10.0, retention_s=60.0, health_interval_s=1.0, pool_refill_delay_s=1.0
)


def table(preloaded: int = 0, max_ram_mb: float | None = None) -> PipelineTable:
    return PipelineTable(
        retention=RETENTION, budget=RamBudget(max_ram_mb), preloaded_workers=preloaded
    )


def running(
    t: PipelineTable, pipeline_id: str = "p", *, at: float = 0.0, timeout: float | None = None
) -> None:
    t.add_worker(pipeline_id, 100, RowState.STARTING, at)
    t.started(pipeline_id, timeout, at)


def kinds(actions: list[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_only_running_and_ended_pipelines_are_listed() -> None:
    t = table()
    t.add_worker("idle", 1, RowState.IDLE, 0)
    t.add_worker("starting", 2, RowState.STARTING, 0)
    running(t, "p")
    assert t.listed() == ["p"]
    with pytest.raises(NotFoundError, match="id=starting"):
        t.get("starting")
    t.ending("p")
    assert t.listed() == []


def test_a_running_pipeline_is_checked_once_per_interval() -> None:
    t = table()
    running(t)
    assert t.tick(0.5) == []
    assert t.tick(1.0) == [CheckHealth("p")]
    t.reported("p", "RUNNING", 3, None, 1.1)
    assert t.tick(1.5) == []
    assert t.tick(2.1) == [CheckHealth("p")]


def test_a_finished_pipeline_stays_until_drained_then_lingers() -> None:
    t = table()
    running(t)
    t.reported("p", "FINISHED", 5, None, 2.0)
    assert t.get("p").state is RowState.FINISHED
    # results waiting: it stays, however long the client takes (within the retention)
    assert not any(isinstance(a, EndPipeline) for a in t.tick(30.0))
    t.consumed("p", 2, 31.0)
    t.consumed("p", 0, 32.0)  # drained now
    for now in (33.0, 35.0, 41.9):
        t.consumed("p", 0, now)  # a client polling an empty buffer does not keep it alive
        assert not any(isinstance(a, EndPipeline) for a in t.tick(now))
    assert t.tick(42.0) == [EndPipeline("p", "finished; every result was consumed")]


def test_a_finished_pipeline_nobody_drains_expires_and_says_what_was_lost() -> None:
    t = table()
    running(t, timeout=None)
    t.reported("p", "FINISHED", 7, None, 5.0)
    assert not any(isinstance(a, ExpirePipeline) for a in t.tick(64.0))
    (action,) = [a for a in t.tick(65.0) if isinstance(a, ExpirePipeline)]
    assert "7 unread results discarded" in action.reason
    t.expired("p", action.reason, 65.0)
    row = t.get("p")
    assert row.state is RowState.FAILED and row.cause == action.reason and not row.worker_alive


def test_consumption_timeout_expires_a_running_pipeline() -> None:
    t = table()
    running(t, timeout=2.0)
    t.reported("p", "RUNNING", 4, None, 1.0)
    t.consumed("p", 3, 1.5)
    assert not any(isinstance(a, ExpirePipeline) for a in t.tick(3.4))
    (action,) = [a for a in t.tick(3.5) if isinstance(a, ExpirePipeline)]
    assert "consumption_timeout=2 s" in action.reason and "3 unread results" in action.reason


def test_a_failed_pipeline_stays_until_read_then_lingers_or_retention_passes() -> None:
    t = table()
    running(t, "read")
    running(t, "unread")
    t.reported("read", "FAILED", 0, None, 1.0)
    t.worker_exited("unread", "was killed by SIGKILL", 1.0)
    assert t.get("unread").cause == "the pipeline worker (pid 100) was killed by SIGKILL"
    assert sorted(t.listed()) == ["read", "unread"]
    t.status_read("read", 5.0)
    assert t.tick(14.9) == []
    assert t.tick(15.0) == [
        EndPipeline("read", f"failed ({t.get('read').cause}); its status was read")
    ]
    assert [a.pipeline_id for a in t.tick(61.0) if isinstance(a, EndPipeline)] == ["read", "unread"]


def test_a_dead_worker_of_a_finished_pipeline_counts_the_results_lost() -> None:
    t = table()
    running(t)
    t.reported("p", "FINISHED", 9, None, 1.0)
    t.worker_exited("p", "was killed by SIGKILL", 2.0)
    row = t.get("p")
    assert row.state is RowState.FAILED and "9 unread results were lost" in (row.cause or "")


def test_an_idle_worker_that_dies_leaves_the_table() -> None:
    t = table()
    t.add_worker("idle", 1, RowState.IDLE, 0)
    t.worker_exited("idle", "exited with code 1", 1.0)
    assert t.find("idle") is None


def test_the_idle_pool_is_refilled_but_not_right_after_an_init() -> None:
    t = table(preloaded=2)
    assert kinds(t.tick(0.0)) == ["SpawnIdleWorker"]
    t.spawning(1)
    assert kinds(t.tick(0.1)) == ["SpawnIdleWorker"]
    t.spawning(1)
    assert t.tick(0.2) == []
    t.spawning(-1)
    t.add_worker("w1", 1, RowState.IDLE, 0.3)
    t.spawning(-1)
    t.add_worker("w2", 2, RowState.IDLE, 0.3)
    row = t.take_idle(5.0)
    assert row is not None and row.state is RowState.STARTING
    assert t.tick(5.5) == []  # a pipeline is starting its decoder: wait a moment
    assert t.tick(6.0) == [SpawnIdleWorker()]


def test_admission_reserves_until_settled_and_names_the_numbers() -> None:
    t = table(max_ram_mb=900.0)
    t.add_worker("w", 1, RowState.IDLE, 0)
    t.sampled("w", 300.0, [1])
    usage = MemoryUsage(manager_mb=100.0, workers_mb=300.0, shared_segments_mb=0.0)
    first = t.admit(usage, 0)
    assert first.predicted_mb == pytest.approx(300.0)
    with pytest.raises(OperationError, match=r"predicted for the new pipeline: 300\.0 MB"):
        t.admit(usage, 0)  # the first is still being started: its 300 MB count
    t.settle(first)
    t.admit(usage, 0)


def test_a_report_after_the_end_does_not_revive_a_pipeline() -> None:
    t = table()
    running(t)
    t.reported("p", "FAILED", 0, None, 1.0)
    t.reported("p", "RUNNING", 0, None, 2.0)
    assert t.get("p").state is RowState.FAILED
