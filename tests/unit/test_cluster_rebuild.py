"""A restarted Ray front end rebuilds its table (framepipe.cluster.front._rebuild), with the
store, the reservations and the agents faked: no Ray here."""

from __future__ import annotations

from typing import Any

from framepipe.cluster.agent import AgentInfo
from framepipe.cluster.front import ClusterFront, _Agent
from framepipe.cluster.settings import ClusterSettings
from framepipe.cluster.store import PipelineRecord
from framepipe.protocol.envelope import ListPipelinesBody
from framepipe.server.settings import ServerSettings


class FakeStore:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def put(self, record: PipelineRecord) -> None:
        pass

    def delete(self, pipeline_id: str) -> None:
        self.deleted.append(pipeline_id)


class FakeReservations:
    def __init__(self, held: set[str], events: list[str]) -> None:
        self._held = set(held)
        self.events = events

    def held(self) -> set[str]:
        return set(self._held)

    def release(self, pipeline_id: str) -> None:
        if pipeline_id in self._held:
            self.events.append(f"release {pipeline_id}")
        self._held.discard(pipeline_id)


class FakeClient:
    def __init__(self, pipelines: list[str], events: list[str]) -> None:
        self.pipelines = pipelines
        self.events = events

    async def list_pipelines(self) -> ListPipelinesBody:
        return ListPipelinesBody(pipelines=list(self.pipelines))

    async def terminate_pipeline(self, pipeline_id: str) -> None:
        self.events.append(f"terminate {pipeline_id}")


def agent(node_id: str, pid: int, pipelines: list[str], events: list[str]) -> _Agent:
    info = AgentInfo(
        node_id=node_id,
        host="127.0.0.1",
        port=1,
        manager_pid=pid,
        ram_budget_mb=1000.0,
        camera_slots=2,
        gpus=0.0,
        slots_declared=True,
    )
    client: Any = FakeClient(pipelines, events)
    return _Agent(node_id=node_id, handle=None, info=info, client=client, init_client=client)


def record(pipeline_id: str, node_id: str, pid: int, local_id: str) -> PipelineRecord:
    return PipelineRecord(
        pipeline_id=pipeline_id,
        payload={},
        created_at=0.0,
        node_id=node_id,
        manager_pid=pid,
        local_id=local_id,
    )


async def test_a_dead_node_s_pipeline_is_placed_again_once_the_table_is_whole() -> None:
    events: list[str] = []
    front = ClusterFront(ServerSettings(), ClusterSettings())
    front._store = FakeStore()  # type: ignore[assignment]
    front._reservations = FakeReservations(  # type: ignore[assignment]
        {"moved", "a1", "a2", "b1", "stale"}, events
    )
    front._agents = {
        "a": agent("a", 10, ["la1", "la2"], events),
        "b": agent("b", 20, ["lb1", "orphan"], events),
    }
    seen: dict[str, int] = {}

    async def place(payload: Any, pipeline_id: str) -> tuple[_Agent, str]:
        events.append(f"place {pipeline_id}")
        seen.update({v.node_id: v.pipelines for v in front._views()})
        return front._agents["b"], "lmoved"

    front._place = place  # type: ignore[method-assign]
    import framepipe.cluster.front as front_module

    real_payload = front_module._payload
    front_module._payload = lambda wire: _file_payload()
    try:
        # the dead node's record first: placed again only after the others are adopted
        await front._rebuild(
            [
                record("moved", "dead", 30, "lm"),
                record("a1", "a", 10, "la1"),
                record("a2", "a", 10, "la2"),
                record("b1", "b", 20, "lb1"),
            ],
            alive={"a", "b"},
        )
    finally:
        front_module._payload = real_payload
        front._executor.shutdown(wait=False)
    # placement saw node a full and node b with one pipeline (not two empty nodes)
    assert seen == {"a": 2, "b": 1}
    # a stale reservation and an orphan are gone before the move, which releases its own
    assert events.index("release stale") < events.index("place moved")
    assert events.index("terminate orphan") < events.index("place moved")
    assert events[events.index("place moved") - 1] == "release moved"
    moved = front._records["moved"]
    assert (moved.node_id, moved.local_id) == ("b", "lmoved")
    assert [(m.from_node, m.to_node, m.reason) for m in moved.moves] == [("dead", "b", "node died")]


def _file_payload() -> Any:
    from framepipe.protocol.commands import InitCommand, parse_command

    command = parse_command(
        {
            "type": "init",
            "video_configuration": {
                "type": "VideoConfiguration",
                "video_reference": "/videos/a.mp4",
            },
            "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
            "sink_configuration": {"type": "MemorySinkConfiguration"},
        }
    )
    assert isinstance(command, InitCommand)
    return command.payload
