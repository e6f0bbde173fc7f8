"""framepipe on a real Ray cluster: three raylets on this machine, a real front end process
(``framepipe serve --backend ray``), real agent managers, real video and the real model.

The tests run in order on one cluster (starting one costs ~10 s): routing and spreading,
refusal at capacity, termination, camera affinity, a node's death, a front end's restart, and
at the end no leaked segment or process on any node. Ray is required: without it this module
fails to import (it does not skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from framepipe.client.errors import OperationError
from framepipe.client.sync import SyncStreamManagerClient
from framepipe.cluster.settings import NAMESPACE
from framepipe.data import demo_video_path
from framepipe.protocol.commands import parse_command
from framepipe.testing.ray_cluster import (
    FrontProcess,
    LocalRayCluster,
    framepipe_processes,
    wait_until,
)
from tests.conftest import _ours, framepipe_shm_entries
from tests.rtsp import RtspServer

pytestmark = [pytest.mark.cluster, pytest.mark.rtsp, pytest.mark.allow_leaks]

NODES = 3
SLOTS = 2
FAILOVER_BUDGET_S = 10.0


def file_payload(max_fps: float = 2.0) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": str(demo_video_path()),
            "max_fps": max_fps,
            "realtime_replay": True,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "centerface"},
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 16},
    }


def camera_payload(url: str) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": url,
            "max_fps": 5,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "centerface"},
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 8},
    }


class World:
    """The cluster, its front end and a client of it, shared by the tests in order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.shm_before = framepipe_shm_entries()
        self.cluster = LocalRayCluster(nodes=NODES, camera_slots=SLOTS)
        ray.init(address=self.cluster.address, namespace=NAMESPACE, log_to_driver=False)
        self.front = FrontProcess(self.cluster.address, tmp / "front.log")
        self.camera = RtspServer(fps=15, mounts=3)
        self.camera.start()
        # this test's own framepipe processes (the RTSP camera, the decode forkserver)
        self.baseline = {p.pid for p in framepipe_processes(os.getpid())}
        self.pipelines: dict[str, str] = {}  # pipeline id -> what it reads
        self.seen: set[int] = set()  # pids of the cluster's framepipe processes seen so far

    @property
    def client(self) -> SyncStreamManagerClient:
        return SyncStreamManagerClient.init("127.0.0.1", self.front.port, 120.0)

    def init(self, payload: dict[str, Any]) -> str:
        pipeline_id = self.client.send(parse_command(payload)).pipeline_id
        assert pipeline_id is not None
        return pipeline_id

    def nodes(self) -> dict[str, str | None]:
        self.seen |= {p.pid for p in framepipe_processes(os.getpid())}
        envelope = self.client.send(parse_command({"type": "list_pipelines"}))
        nodes: dict[str, str | None] = envelope.response["nodes"]
        assert sorted(nodes) == sorted(envelope.response["pipelines"])
        return nodes

    def records(self) -> list[str]:
        from ray.experimental import internal_kv

        return sorted(
            key.decode().removeprefix("pipeline:")
            for key in internal_kv._internal_kv_list("pipeline:", namespace=NAMESPACE)
        )

    def first_result(self, pipeline_id: str, timeout: float) -> float | None:
        """Seconds until a consume through the front end returns a result (None: none)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.client.consume_pipeline_result(pipeline_id).outputs:
                return time.monotonic() - started
            time.sleep(0.05)
        return None

    def free_slots(self) -> float:
        """Camera slots free in Ray's resource view, the whole cluster."""
        return float(ray.available_resources().get("camera_slots", 0.0))

    def metrics(self) -> Any:
        return self.client.get_metrics()

    def close(self) -> None:
        from framepipe.cluster.app import shutdown_cluster

        try:
            self.front.stop()
            shutdown_cluster()
            ray.shutdown()
        finally:
            self.camera.kill()
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("cluster"))
    try:
        yield world
    finally:
        world.close()


def test_pipelines_spread_over_three_nodes_one_model_service_each(world: World) -> None:
    with ThreadPoolExecutor(NODES * SLOTS) as pool:
        ids = list(pool.map(lambda _: world.init(file_payload()), range(NODES * SLOTS)))
    world.pipelines.update(dict.fromkeys(ids, "file"))
    nodes = world.nodes()
    assert sorted(nodes) == sorted(ids)
    per_node: dict[str | None, int] = {}
    for node in nodes.values():
        per_node[node] = per_node.get(node, 0) + 1
    assert len(per_node) == NODES and set(per_node.values()) == {SLOTS}, per_node
    for pipeline_id in ids:
        assert world.first_result(pipeline_id, 30.0) is not None, pipeline_id
        report = world.client.get_status(pipeline_id).report
        assert report["cluster"]["node_id"] == nodes[pipeline_id]
        assert report["cluster"]["moves"] == []
    assert world.records() == sorted(ids)

    def services() -> list[Any]:
        return [s for s in world.metrics().services if s.model == "centerface"]

    assert wait_until(lambda: len(services()) == NODES, 10.0), services()
    assert sorted(str(s.node) for s in services()) == sorted(str(n) for n in per_node)
    figures = world.metrics().pipelines
    assert {p.pipeline_id: p.node for p in figures} == nodes, figures
    # each pipeline's camera slot is reserved in Ray's scheduler, on its node
    assert world.free_slots() == 0
    from framepipe.cluster.reservations import Reservations

    assert Reservations().held() == set(ids)


def test_init_beyond_capacity_is_refused_and_leaves_nothing(world: World) -> None:
    before_ids = sorted(world.pipelines)
    before_procs = {p.pid for p in framepipe_processes(os.getpid())}
    with pytest.raises(OperationError, match="insufficient capacity") as refused:
        world.init(file_payload())
    assert "camera slots used" in refused.value.message
    assert sorted(world.nodes()) == before_ids
    assert world.records() == before_ids
    assert len(world.metrics().pipelines) == len(before_ids)
    time.sleep(1.0)
    after = {p.pid for p in framepipe_processes(os.getpid())}
    assert after <= before_procs, "a refused init started processes"


def test_terminate_runs_on_the_owning_node(world: World) -> None:
    ids = sorted(world.pipelines)
    for pipeline_id in ids:
        world.client.terminate_pipeline(pipeline_id)
        del world.pipelines[pipeline_id]
    assert world.nodes() == {}
    assert world.records() == []
    assert wait_until(lambda: world.metrics().pipelines == [], 5.0)
    assert wait_until(lambda: world.free_slots() == NODES * SLOTS, 5.0)


def test_live_cameras_prefer_the_node_that_decodes_them(world: World) -> None:
    first = world.init(camera_payload(world.camera.mount_url(0)))
    second = world.init(camera_payload(world.camera.mount_url(0)))
    others = [world.init(camera_payload(world.camera.mount_url(i))) for i in (1, 2)]
    for pipeline_id in (first, second, *others):
        world.pipelines[pipeline_id] = "camera"
        assert world.first_result(pipeline_id, 30.0) is not None
    nodes = world.nodes()
    assert nodes[first] == nodes[second]
    assert len(set(nodes.values())) == NODES  # the other cameras went to the emptier nodes


def test_a_dead_node_s_pipelines_run_again_elsewhere_within_10_s(world: World) -> None:
    nodes = world.nodes()
    workers = {n.node_id: n for n in world.cluster.workers}
    victim_id = max(workers, key=lambda n: sum(1 for v in nodes.values() if v == n))
    moved = sorted(pid for pid, node in nodes.items() if node == victim_id)
    assert moved, "no pipeline on a worker node"
    victim = workers[victim_id]
    dead_manager_pids = {
        p.pid
        for p in framepipe_processes(victim.all_processes["raylet"][0].process.pid)
        if "framepipe.cluster._node_manager" in " ".join(p.cmdline())
    }
    assert dead_manager_pids
    # results wait unread on the victim (as its manager last reported them)

    def unread_on_victim() -> bool:
        figures = {p.pipeline_id: p for p in world.metrics().pipelines}
        return all(figures[p].results_buffered >= 1 for p in moved)

    assert wait_until(unread_on_victim, 20.0, interval=0.5)
    killed_at = time.monotonic()
    world.cluster.remove(victim)
    failover: dict[str, float] = {}
    while len(failover) < len(moved) and time.monotonic() - killed_at < 30:
        placed = world.nodes()
        for pipeline_id in moved:
            if pipeline_id in failover or placed[pipeline_id] in (victim_id, None):
                continue  # results still read from the dying node do not count
            if world.client.consume_pipeline_result(pipeline_id).outputs:
                failover[pipeline_id] = time.monotonic() - killed_at
        time.sleep(0.05)
    print(f"failover (raylet killed -> first result on another node): {failover}")
    assert sorted(failover) == moved
    assert max(failover.values()) < FAILOVER_BUDGET_S, failover
    after = world.nodes()
    for pipeline_id in moved:
        assert after[pipeline_id] not in (victim_id, None)
        cluster = world.client.get_status(pipeline_id).report["cluster"]
        assert cluster["node_id"] == after[pipeline_id]
        (move,) = cluster["moves"]
        assert move["from_node"] == victim_id and move["to_node"] == after[pipeline_id]
        assert move["reason"] == "node died"
        assert move["restarted_from"] == "the live stream"
        # the results left unread on the dead node are counted as lost
        assert move["results_lost"] >= 1, move
    # the dead node's manager died with its agent, its workers with it, its segments swept
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in dead_manager_pids), 10.0)
    assert wait_until(
        lambda: (
            not {
                n
                for n in framepipe_shm_entries()
                if int(n.split("fp-")[1].split("-")[0]) in dead_manager_pids
            }
        ),
        10.0,
    )
    assert world.records() == sorted(world.pipelines)


def test_a_restarted_front_end_rebuilds_its_table(world: World) -> None:
    before = world.nodes()
    assert before
    world.front.stop(sig=signal.SIGKILL)
    world.front = FrontProcess(world.cluster.address, world.tmp / "front2.log")
    assert world.nodes() == before
    for pipeline_id in before:
        assert world.first_result(pipeline_id, 15.0) is not None
        assert (
            world.client.get_status(pipeline_id).report["cluster"]["node_id"] == before[pipeline_id]
        )
    # nothing orphaned: every node runs exactly the pipelines the table places there
    assert len(world.metrics().pipelines) == len(before)


def test_a_file_missing_on_the_new_node_fails_with_that_reason(world: World) -> None:
    # a free slot on the surviving nodes, so that only the missing file stops the move
    freed = next(iter(world.pipelines))
    world.client.terminate_pipeline(freed)
    del world.pipelines[freed]
    video = world.tmp / "only-on-one-node.mp4"
    shutil.copyfile(demo_video_path(), video)
    added = world.cluster.add()
    # passthrough: no node runs "its model", so the new, empty node takes it
    pipeline_id = _placed_on_new_node(world, video, added.node_id)
    world.pipelines[pipeline_id] = "file"
    assert world.first_result(pipeline_id, 30.0) is not None  # its node has the file open
    video.unlink()  # the other nodes do not have it
    world.cluster.remove(added)
    report = wait_until(lambda: _failed_report(world, pipeline_id), 20.0)
    assert report, world.client.get_status(pipeline_id).report
    # the node it moved to does not have the file: the pipeline fails there, saying so
    assert f"video_reference '{video}' not found" in report["framepipe"]["failure"]
    (move,) = report["cluster"]["moves"]
    assert move["from_node"] == added.node_id
    assert move["to_node"] == report["cluster"]["node_id"] != added.node_id
    assert move["restarted_from"] == "the beginning"
    world.client.terminate_pipeline(pipeline_id)  # its slot, for the next test
    del world.pipelines[pipeline_id]


def test_a_front_end_restarting_while_a_node_dies_places_its_pipelines_again(
    world: World,
) -> None:
    video = world.tmp / "everywhere.mp4"
    shutil.copyfile(demo_video_path(), video)
    added = world.cluster.add()
    pipeline_id = _placed_on_new_node(world, video, added.node_id)
    world.pipelines[pipeline_id] = "file"
    assert world.first_result(pipeline_id, 30.0) is not None
    world.front.stop(sig=signal.SIGKILL)
    world.cluster.remove(added)  # while no front end watches
    world.front = FrontProcess(world.cluster.address, world.tmp / "front3.log")
    # the new front end finds the record, the node dead, and places the pipeline again
    assert world.nodes()[pipeline_id] not in (added.node_id, None)
    assert world.first_result(pipeline_id, 30.0) is not None
    (move,) = world.client.get_status(pipeline_id).report["cluster"]["moves"]
    assert move["from_node"] == added.node_id and move["reason"] == "node died"
    assert world.client.consume_pipeline_result(pipeline_id).outputs == []


def _failed_report(world: World, pipeline_id: str) -> dict[str, Any] | None:
    try:
        report = world.client.get_status(pipeline_id).report
    except OperationError as exc:
        # until Ray declares the node dead, its manager is asked, and does not answer
        assert "did not answer" in exc.message
        return None
    return report if report["framepipe"]["state"] == "FAILED" else None


def _placed_on_new_node(world: World, video: Path, node_id: str, timeout: float = 30.0) -> str:
    """The id of a passthrough pipeline on ``video`` that the front end placed on the node
    just added, ``node_id``: inits (terminating those that land elsewhere) until its agent is
    up and it takes one (it is the emptiest node). Fails saying where the inits went, and what
    the front end logged about the node, when none lands there within ``timeout``."""
    landed: list[str | None] = []

    def init_on_new_node() -> str | None:
        payload = file_payload()
        payload["video_configuration"]["video_reference"] = str(video)
        payload["processing_configuration"]["model"] = "passthrough"
        pipeline_id = world.init(payload)
        node = world.nodes()[pipeline_id]
        landed.append(node)
        if node == node_id:
            return pipeline_id
        world.client.terminate_pipeline(pipeline_id)
        time.sleep(0.5)
        return None

    pipeline_id: str | None = wait_until(init_on_new_node, timeout)
    nodes = world.nodes()
    assert pipeline_id is not None, (
        f"no init landed on the new node {node_id[:12]} within {timeout:.0f} s; "
        f"they landed on {[n and n[:12] for n in landed]}; nodes now: {nodes}; "
        f"the front end logged: {_front_log(world)}"
    )
    assert [p for p, n in nodes.items() if n == node_id] == [pipeline_id], nodes
    return pipeline_id


def _front_log(world: World, lines: int = 40) -> list[str]:
    """The front end's own log lines (framepipe.cluster), the last ``lines`` of them."""
    text = world.front.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "framepipe.cluster" in line][-lines:]


def test_nothing_is_left_on_any_node(world: World) -> None:
    for pipeline_id in list(world.pipelines):
        world.client.terminate_pipeline(pipeline_id)
        del world.pipelines[pipeline_id]
    assert world.records() == []
    from framepipe.cluster.reservations import Reservations

    assert Reservations().held() == set()  # moves and terminations released every slot
    from framepipe.cluster.app import shutdown_cluster

    assert shutdown_cluster() == NODES - 1

    def left() -> list[str]:
        return [
            " ".join(p.cmdline()[:4])
            for p in framepipe_processes(os.getpid())
            if p.pid not in world.baseline | {world.front.proc.pid}
        ]

    assert wait_until(lambda: not left(), 15.0), left()

    def leaked() -> set[str]:
        # the machine is shared: an entry whose owner lives outside this test's tree is not ours
        tree = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
        return {n for n in framepipe_shm_entries() - world.shm_before if _ours(n, tree)}

    assert wait_until(lambda: not leaked(), 10.0), (leaked(), world.seen)
