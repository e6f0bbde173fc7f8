"""Decode once, fan out across pipeline workers: the real manager's shared decoders.

Two pipelines on the same video reference share one decode process (a child of the manager,
through its decode forkserver) and one ring; each keeps its own queue, strategy and max_fps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.core.ring import ConsumerState, FrameRing
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing.media import make_test_video
from tests.conftest import framepipe_shm_entries
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for
from tests.rtsp import RtspServer


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared-videos")
    # 20 s at 30 fps: runs for the whole of any test here.
    return make_test_video(root / "long.mp4", frames=600, width=320, height=240, fps=30.0).path


def payload(reference: str, **video: Any) -> InitialisePipelinePayload:
    return InitialisePipelinePayload(
        video_configuration=VideoConfiguration(video_reference=reference, **video),
        processing_configuration=ModelConfiguration(model="passthrough"),
        sink_configuration=MemorySinkConfiguration(results_buffer_size=64),
        decoding_buffer_size=8,
    )


def client_for(manager: ManagerProcess) -> SyncStreamManagerClient:
    return SyncStreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=30)


def start(client: SyncStreamManagerClient, reference: str, **video: Any) -> str:
    pipeline_id = client.initialise_pipeline(payload(reference, **video)).context.pipeline_id
    assert pipeline_id
    return pipeline_id


def results_flow(client: SyncStreamManagerClient, pipeline_id: str, count: int = 3) -> list[int]:
    """Wait until ``count`` new results came out of the pipeline; their frame ids."""
    seen: list[int] = []

    def poll() -> bool:
        response = client.consume_pipeline_result(pipeline_id, max_entries=16)
        for entry in response.entries:
            seen.extend(m.frame_id for m in entry.frames_metadata if m is not None)
        return len(seen) >= count

    wait_for(poll, 20, f"{count} results from {pipeline_id}", interval=0.05)
    return seen


def source_stats(client: SyncStreamManagerClient, pipeline_id: str) -> dict[str, Any]:
    stats: dict[str, Any] = client.get_status(pipeline_id).report["framepipe"]["sources"][0]
    return stats


def manager_rings(manager: ManagerProcess) -> set[str]:
    """The frame rings the manager owns (each source also has a small status block)."""
    prefix = f"fp-{manager.pid}-src"
    return {name for name in framepipe_shm_entries() if name.startswith(prefix)}


def manager_segments(manager: ManagerProcess) -> set[str]:
    prefix = f"fp-{manager.pid}-"
    return {name for name in framepipe_shm_entries() if name.startswith(prefix)}


def worker_for(manager: ManagerProcess, known: set[int]) -> psutil.Process:
    fresh = [w for w in manager.workers() if w.pid not in known]
    assert len(fresh) == 1, fresh
    return fresh[0]


@pytest.fixture
def manager() -> Iterator[ManagerProcess]:
    with running_manager({"FRAMEPIPE_COMMAND_TIMEOUT": "5"}) as running:
        yield running


def test_two_pipelines_on_one_file_share_one_decoder(
    manager: ManagerProcess, long_video: Path
) -> None:
    client = client_for(manager)
    # Replayed in real time, a file is shared like a camera.
    every = start(
        client,
        str(long_video),
        realtime_replay=True,
        source_buffer_filling_strategy="WAIT",
        source_buffer_consumption_strategy="LAZY",
    )
    slow = start(
        client,
        str(long_video),
        realtime_replay=True,
        max_fps=10,
        source_buffer_filling_strategy="DROP_OLDEST",
        source_buffer_consumption_strategy="EAGER",
    )
    every_ids = results_flow(client, every, 10)
    results_flow(client, slow, 3)
    decoders = manager.decoders()
    assert len(decoders) == 1, decoders
    forkserver = decoders[0].parent()
    assert forkserver is not None and forkserver.ppid() == manager.pid  # the manager's, no worker's
    assert len(manager_rings(manager)) == 1, manager_rings(manager)
    time.sleep(1.0)
    a, b = source_stats(client, every), source_stats(client, slow)
    assert a["shared_with"] == 1 and b["shared_with"] == 1
    assert a["state"] == b["state"] == "RUNNING"
    # Each its own strategy: every frame, in order, for WAIT/LAZY.
    assert every_ids == list(range(every_ids[0], every_ids[0] + len(every_ids)))
    metadata = [client.get_status(p).report["sources_metadata"][0] for p in (every, slow)]
    assert [(m["buffer_filling_strategy"], m["buffer_consumption_strategy"]) for m in metadata] == [
        ("WAIT", "LAZY"),
        ("DROP_OLDEST", "EAGER"),
    ]

    # Muting one pipeline does not mute the other.
    client.pause_pipeline(slow)
    assert source_stats(client, slow)["state"] == "MUTED"
    results_flow(client, every, 5)
    client.resume_pipeline(slow)

    # Terminating one leaves the other flowing; the last one stops the decoder.
    client.terminate_pipeline(every)
    results_flow(client, slow, 3)
    assert len(manager.decoders()) == 1
    client.terminate_pipeline(slow)
    wait_for(lambda: not manager.decoders(), 10, "the shared decoder to stop")
    wait_for(lambda: not manager_segments(manager), 5, "the shared ring to be unlinked")


def test_a_later_pipeline_on_a_file_gets_every_frame_from_the_first(
    manager: ManagerProcess, long_video: Path
) -> None:
    """A file read as fast as its consumer goes is not joined mid-stream: a pipeline opened
    2 s after another gets a decoder of its own and frames from 1."""
    client = client_for(manager)
    # Nobody reads the first one: with a small result buffer under WAIT it is held back, so
    # it is still running (in the middle of the file) when the second one starts.
    first = client.initialise_pipeline(
        InitialisePipelinePayload(
            video_configuration=VideoConfiguration(video_reference=str(long_video)),
            processing_configuration=ModelConfiguration(model="passthrough"),
            sink_configuration=MemorySinkConfiguration(results_buffer_size=8),
        )
    ).context.pipeline_id
    assert first
    time.sleep(2.0)
    second = start(client, str(long_video))
    ids = results_flow(client, second, 40)
    assert ids == list(range(1, len(ids) + 1))
    assert len(manager.decoders()) == 2 and len(manager_rings(manager)) == 2
    assert source_stats(client, first)["state"] == "RUNNING"
    assert source_stats(client, second)["shared_with"] == 0
    first_ids = results_flow(client, first, 3)
    assert first_ids[:3] == [1, 2, 3]
    client.terminate_pipeline(first)
    client.terminate_pipeline(second)
    wait_for(lambda: not manager.decoders(), 10, "both decoders to stop")


def test_killed_worker_leaves_the_other_pipeline_flowing(
    manager: ManagerProcess, long_video: Path
) -> None:
    client = client_for(manager)
    survivor = start(
        client,
        str(long_video),
        realtime_replay=True,
        source_buffer_filling_strategy="WAIT",
        source_buffer_consumption_strategy="LAZY",
    )
    survivor_worker = worker_for(manager, set())
    victim = start(
        client,
        str(long_video),
        realtime_replay=True,
        source_buffer_filling_strategy="WAIT",
        source_buffer_consumption_strategy="LAZY",
    )
    victim_worker = worker_for(manager, {survivor_worker.pid})
    results_flow(client, survivor, 3)
    results_flow(client, victim, 3)
    # The victim stops consuming and is killed while holding leases under WAIT: the decode
    # process must reclaim them, or it would wait for that consumer for ever.
    victim_worker.kill()
    wait_for(
        lambda: client.get_status(victim).report["framepipe"]["state"] == "FAILED",
        5,
        "the victim reported as failed",
    )
    results_flow(client, survivor, 30)
    assert len(manager.decoders()) == 1
    wait_for(
        lambda: source_stats(client, survivor)["shared_with"] == 0, 5, "the victim's lease freed"
    )
    (ring_name,) = manager_rings(manager)
    ring = FrameRing.attach("/" + ring_name)
    try:
        consumers = {c.pid: c.state for c in ring.consumers()}
        assert consumers.get(victim_worker.pid, ConsumerState.FREE) is ConsumerState.FREE
        assert consumers[survivor_worker.pid] is ConsumerState.ACTIVE
    finally:
        ring.close()
    client.terminate_pipeline(survivor)
    client.terminate_pipeline(victim)
    wait_for(lambda: not manager.decoders(), 10, "the shared decoder to stop")


def test_two_pipelines_on_one_camera_share_one_decoder(
    manager: ManagerProcess, rtsp_server: RtspServer
) -> None:
    client = client_for(manager)
    full = start(client, rtsp_server.url)
    slow = start(client, rtsp_server.url, max_fps=3)
    results_flow(client, full, 5)
    results_flow(client, slow, 2)
    assert len(manager.decoders()) == 1
    assert len(manager_rings(manager)) == 1
    time.sleep(1.0)
    a, b = source_stats(client, full), source_stats(client, slow)
    assert a["shared_with"] == 1 and b["shared_with"] == 1
    # Each at its own max_fps: the decoder drops for the slow one only.
    assert b["frames_dropped"].get("max_fps", 0) > 0
    assert "max_fps" not in a["frames_dropped"]
    client.terminate_pipeline(full)
    results_flow(client, slow, 3)
    client.terminate_pipeline(slow)
    wait_for(lambda: not manager.decoders(), 10, "the shared decoder to stop")


def test_sharing_turned_off_gives_each_pipeline_its_decoder(long_video: Path) -> None:
    with running_manager({"FRAMEPIPE_SHARE_DECODERS": "0"}) as manager:
        client = client_for(manager)
        a = start(client, str(long_video), realtime_replay=True)
        b = start(client, str(long_video), realtime_replay=True)
        results_flow(client, a, 3)
        results_flow(client, b, 3)
        assert len(manager.decoders()) == 2
        assert len(manager_rings(manager)) == 2  # one ring each (the manager owns both)
        assert source_stats(client, a)["shared_with"] == 0
