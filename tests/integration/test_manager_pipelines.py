"""The real manager running real pipelines (worker processes, decode processes, shared memory).

Every test starts its own manager process and talks to it over TCP: with the typed client for
the lifecycle, with raw frames where the exact bytes matter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from framepipe.client import NotFoundError, OperationError, SyncStreamManagerClient
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing.media import make_test_video
from tests.conftest import framepipe_shm_entries
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        # 20 s at 30 fps: runs for the whole of any test here.
        "long": make_test_video(
            root / "long.mp4", frames=600, width=320, height=240, fps=30.0
        ).path,
        # 1 s: ends on its own.
        "short": make_test_video(
            root / "short.mp4", frames=30, width=320, height=240, fps=30.0
        ).path,
    }


def payload(video: Path, **extra: Any) -> InitialisePipelinePayload:
    """A passthrough pipeline on ``video`` replayed in real time, like a camera."""
    return InitialisePipelinePayload(
        video_configuration=VideoConfiguration(video_reference=str(video), realtime_replay=True),
        processing_configuration=ModelConfiguration(model="passthrough"),
        sink_configuration=MemorySinkConfiguration(
            results_buffer_size=extra.pop("results_buffer_size", 64)
        ),
        decoding_buffer_size=extra.pop("decoding_buffer_size", 8),
        **extra,
    )


def client_for(manager: ManagerProcess, timeout: float = 30.0) -> SyncStreamManagerClient:
    return SyncStreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=timeout)


def start(client: SyncStreamManagerClient, video: Path, **extra: Any) -> str:
    pipeline_id = client.initialise_pipeline(payload(video, **extra)).context.pipeline_id
    assert pipeline_id
    return pipeline_id


def first_result(client: SyncStreamManagerClient, pipeline_id: str, timeout: float = 20.0) -> Any:
    def poll() -> Any:
        response = client.consume_pipeline_result(pipeline_id)
        return response if response.outputs else None

    return wait_for(poll, timeout, "a first result", interval=0.02)


def worker_of(manager: ManagerProcess, known: set[int] = frozenset()) -> psutil.Process:  # type: ignore[assignment]
    candidates = [w for w in manager.workers() if w.pid not in known]
    assert len(candidates) == 1, candidates
    return candidates[0]


def segments_of(pids: set[int]) -> set[str]:
    owned = set()
    for name in framepipe_shm_entries():
        pid_text = name.removeprefix("sem.").removeprefix("fp-").split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) in pids:
            owned.add(name)
    return owned


def tree_of(proc: psutil.Process) -> set[int]:
    try:
        return {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    except psutil.Error:
        return set()


@pytest.fixture
def manager() -> Iterator[ManagerProcess]:
    with running_manager({"FRAMEPIPE_COMMAND_TIMEOUT": "3"}) as running:
        yield running


def test_pipeline_lifecycle_over_tcp(manager: ManagerProcess, videos: dict[str, Path]) -> None:
    client = client_for(manager)
    pipeline_id = start(client, videos["long"])
    assert client.list_pipelines().pipelines == [pipeline_id]

    first = first_result(client, pipeline_id)
    assert len(first.outputs) == len(first.frames_metadata) == 1
    assert first.frames_metadata[0].source_id == 0
    assert first.frames_metadata[0].frame_id >= 0

    raw = manager.request(
        {"type": "consume_result", "pipeline_id": pipeline_id, "excluded_fields": []}
    )
    assert list(raw) == ["request_id", "response", "pipeline_id"]
    assert list(raw["response"]) == ["status", "outputs", "frames_metadata"]

    time.sleep(0.3)
    drained = client.consume_pipeline_result(pipeline_id, max_entries=100)
    assert len(drained.entries) >= 2, "a multi-entry drain returns every buffered entry"
    ids = [entry.frames_metadata[0].frame_id for entry in drained.entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    report = client.get_status(pipeline_id).report
    assert report["sources_metadata"][0]["source_reference"].endswith("long.mp4")
    assert client.pause_pipeline(pipeline_id).status == "success"
    assert client.resume_pipeline(pipeline_id).status == "success"
    first_result(client, pipeline_id)

    assert client.terminate_pipeline(pipeline_id).status == "success"
    assert client.list_pipelines().pipelines == []
    with pytest.raises(NotFoundError):
        client.get_status(pipeline_id)
    reply = manager.request({"type": "terminate", "pipeline_id": pipeline_id})
    assert reply["response"]["error_type"] == "not_found"
    wait_for(lambda: manager.workers() == [], 10, "the worker to be gone")


def framepipe_report(client: SyncStreamManagerClient, pipeline_id: str) -> dict[str, Any]:
    report: dict[str, Any] = client.get_status(pipeline_id).report
    return report


def test_hung_worker_does_not_block_other_pipelines(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    client = client_for(manager)
    hung_id = start(client, videos["long"])
    hung = worker_of(manager)
    healthy_id = start(client, videos["long"])
    first_result(client, healthy_id)
    hung_tree = tree_of(hung)
    os.kill(hung.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    # Status is read from shared memory: the hung pipeline's own status answers at once (its
    # last report, whose age grows), and nobody waits behind it. Its reports stop coming, so
    # the health check asks the worker itself, which does not answer, and is killed.
    latencies = []
    hung_report: dict[str, Any] = {}
    while time.monotonic() - stopped_at < 20:
        began = time.monotonic()
        hung_report = framepipe_report(client, hung_id)["framepipe"]
        assert client.get_status(healthy_id).status == "success"
        assert client.list_pipelines().pipelines
        latencies.append(time.monotonic() - began)
        if hung_report["state"] == "FAILED":
            break
        time.sleep(0.05)
    detected_after = time.monotonic() - stopped_at
    assert hung_report["state"] == "FAILED", hung_report
    assert "killed" in hung_report["failure"]
    assert detected_after < 12.0
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, f"status waited {max(latencies):.2f} s while a worker hung"
    wait_for(
        lambda: not psutil.pid_exists(hung.pid) or hung.status() == psutil.STATUS_ZOMBIE,
        5,
        "the hung worker to die",
    )
    # The hung pipeline failed, and says so (it is not silently gone).
    assert sorted(client.list_pipelines().pipelines) == sorted([hung_id, healthy_id])
    wait_for(lambda: not segments_of(hung_tree), 5, "the hung worker's segments to be freed")
    client.terminate_pipeline(healthy_id)
    client.terminate_pipeline(hung_id)


def test_killed_worker_is_reported_as_killed_and_reaped_within_two_seconds(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    client = client_for(manager)
    pipeline_id = start(client, videos["long"])
    first_result(client, pipeline_id)
    worker = worker_of(manager)
    tree = tree_of(worker)
    decoders_before = manager.decoders()
    assert decoders_before, "the manager runs the pipeline's decoder"
    worker.kill()
    killed_at = time.monotonic()

    def reported_killed() -> dict[str, Any] | None:
        extra = framepipe_report(client, pipeline_id)["framepipe"]
        return extra if extra["state"] == "FAILED" else None

    extra = wait_for(reported_killed, 2.0, "the dead pipeline to be reported")
    assert "was killed by SIGKILL" in extra["failure"], extra
    assert pipeline_id in client.list_pipelines().pipelines
    wait_for(
        lambda: not segments_of(tree),
        2.0 - (time.monotonic() - killed_at) + 0.5,
        "segments to be freed",
    )
    # Nobody reads the source any more: its decoder stops and its ring goes.
    wait_for(lambda: not manager.decoders(), 5, "the source's decoder to end")
    client.terminate_pipeline(pipeline_id)
    assert client.list_pipelines().pipelines == []


def test_sigterm_with_three_running_pipelines_exits_cleanly(videos: dict[str, Path]) -> None:
    manager = ManagerProcess()
    try:
        client = client_for(manager)
        ids = [start(client, videos["long"]) for _ in range(3)]
        for pipeline_id in ids:
            first_result(client, pipeline_id)
        tree = {p.pid for p in manager.tree()}
        assert len(manager.workers()) == 3
        assert segments_of(tree | {manager.pid}), "running pipelines hold shared memory"
    except BaseException:
        manager.kill()
        raise
    assert manager.stop(30) == 0, manager.output()

    def alive() -> list[int]:
        return [
            p
            for p in tree
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]

    # multiprocessing's helpers (the decoders' forkserver, the resource tracker) notice their
    # parent's exit on their own, a moment later.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not alive(), 5, "every process to end")
    assert alive() == [], f"processes left behind: {alive()}"
    assert segments_of(tree | {manager.pid}) == set()


def test_idle_pool_worker_takes_the_next_init(videos: dict[str, Path]) -> None:
    with running_manager({"STREAM_API_PRELOADED_PROCESSES": "1"}) as manager:
        idle = wait_for(lambda: manager.workers(), 30, "an idle worker")[0]
        time.sleep(1.0)  # let it finish importing
        client = client_for(manager)
        pipeline_id = start(client, videos["long"])
        first_result(client, pipeline_id)
        assert framepipe_report(client, pipeline_id)["framepipe"]["pid"] == idle.pid, (
            "the idle worker now runs the pipeline"
        )
        wait_for(lambda: len(manager.workers()) == 2, 30, "the pool to be refilled")
        client.terminate_pipeline(pipeline_id)
        assert idle.wait(10) is not None or not idle.is_running()


def test_consumption_timeout_ends_the_pipeline_and_says_so(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    client = client_for(manager)
    pipeline_id = start(client, videos["long"], consumption_timeout=1.0)
    started = time.monotonic()

    def expired() -> dict[str, Any] | None:
        extra = framepipe_report(client, pipeline_id)["framepipe"]
        return extra if extra["state"] == "FAILED" else None

    extra = wait_for(expired, 8, "the unconsumed pipeline to expire")
    assert time.monotonic() - started >= 0.9
    assert "consumption_timeout=1 s" in extra["failure"] and "discarded" in extra["failure"]
    wait_for(lambda: manager.workers() == [], 5, "its worker to exit")
    assert client.consume_pipeline_result(pipeline_id).outputs == []
    client.terminate_pipeline(pipeline_id)


def test_a_finished_pipeline_keeps_its_results_until_they_are_drained(
    videos: dict[str, Path],
) -> None:
    with running_manager({"FRAMEPIPE_ENDED_LINGER": "1"}) as manager:
        client = client_for(manager)
        pipeline_id = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(video_reference=str(videos["short"])),
                processing_configuration=ModelConfiguration(model="passthrough"),
            )
        ).context.pipeline_id
        assert pipeline_id

        def finished() -> dict[str, Any] | None:
            extra = framepipe_report(client, pipeline_id)["framepipe"]
            return extra if extra["state"] == "FINISHED" else None

        extra = wait_for(finished, 15, "the video to be processed")
        time.sleep(1.5)  # longer than the linger: results still waiting keep it listed
        assert client.list_pipelines().pipelines == [pipeline_id]
        report = framepipe_report(client, pipeline_id)
        assert report["sources_metadata"][0]["state"] == "ENDED"
        ids = []
        while entries := client.consume_pipeline_result(pipeline_id, max_entries=7).entries:
            ids += [entry.frames_metadata[0].frame_id for entry in entries]
        # The client's default strategies (DROP_OLDEST/EAGER) may skip frames: what is
        # produced is delivered, in order, and the rest is counted.
        assert ids == sorted(ids) and len(ids) == extra["results_produced"]
        wait_for(lambda: client.list_pipelines().pipelines == [], 5, "removal once drained")
        wait_for(lambda: manager.workers() == [], 5, "its worker to exit")


def test_failed_init_leaves_no_process_and_is_not_listed(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    message = payload(videos["long"]).to_wire() | {"type": "init"}
    message["processing_configuration"] = {"type": "ModelConfiguration", "model": "no-such-model"}
    response = manager.request(message)["response"]
    assert response["error_type"] == "invalid_payload", response
    assert "no-such-model" in response["error_message"]
    assert manager.request({"type": "list_pipelines"})["response"]["pipelines"] == []
    wait_for(lambda: manager.workers() == [], 5, "no worker left behind")


@pytest.mark.parametrize("missing", ["/nonexistent/video.mp4", "directory"])
def test_a_missing_source_fails_visibly_until_its_status_is_read(
    tmp_path: Path, missing: str
) -> None:
    """As in the reference, ``init`` succeeds and the source goes to ERROR; framepipe keeps the
    pipeline listed with the cause until a client has read it (then ``linger``)."""
    reference = str(tmp_path) if missing == "directory" else missing
    with running_manager({"FRAMEPIPE_ENDED_LINGER": "1"}) as manager:
        client = client_for(manager)
        pipeline_id = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(video_reference=reference),
                processing_configuration=ModelConfiguration(model="passthrough"),
            )
        ).context.pipeline_id
        assert pipeline_id
        time.sleep(2.5)  # nobody has read it yet: it stays
        assert client.list_pipelines().pipelines == [pipeline_id]
        report = framepipe_report(client, pipeline_id)
        assert report["framepipe"]["state"] == "FAILED"
        assert report["sources_metadata"][0]["state"] == "ERROR"
        events = [(e["event_type"], e["payload"]) for e in report["video_source_status_updates"]]
        kinds = [kind for kind, _ in events]
        assert kinds[:2] == ["INFERENCE_THREAD_STARTED", "SOURCE_STATE_UPDATE"]
        error = next(payload for kind, payload in events if kind == "INFERENCE_ERROR")
        assert error["error_type"] == "SourceConnectionError"
        assert error["error_context"] == "inference_thread"
        assert reference in error["error_message"]
        assert kinds[-1] == "INFERENCE_THREAD_FINISHED"
        wait_for(lambda: client.list_pipelines().pipelines == [], 5, "removal once read")
        wait_for(lambda: manager.workers() == [], 5, "no worker left behind")


def test_fifty_concurrent_clients_with_running_pipelines(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    client = client_for(manager)
    ids = [start(client, videos["long"]) for _ in range(2)]

    def status(i: int) -> float:
        began = time.monotonic()
        reply = manager.request({"type": "status", "pipeline_id": ids[i % 2]})
        assert reply["response"]["status"] == "success", reply
        return time.monotonic() - began

    with ThreadPoolExecutor(50) as pool:
        latencies = sorted(pool.map(status, range(200)))
    assert latencies[-1] < 5.0
    for pipeline_id in ids:
        client.terminate_pipeline(pipeline_id)


def test_operation_error_for_a_worker_that_died_during_a_command(
    manager: ManagerProcess, videos: dict[str, Path]
) -> None:
    client = client_for(manager)
    pipeline_id = start(client, videos["long"])
    worker = worker_of(manager)
    os.kill(worker.pid, signal.SIGSTOP)
    with pytest.raises(OperationError, match="killed"):
        client.pause_pipeline(pipeline_id)  # a command the worker itself must answer
    extra = framepipe_report(client, pipeline_id)["framepipe"]
    assert extra["state"] == "FAILED" and "did not answer" in extra["failure"]
    client.terminate_pipeline(pipeline_id)


def _centerface_available() -> bool:
    try:
        from framepipe.core.processing import ModelRegistry, ProcessingSettings

        return "centerface" in ModelRegistry.from_settings(ProcessingSettings.from_env()).names()
    except Exception:
        return False


@pytest.mark.skipif(
    not _centerface_available(), reason="the bundled model is not fetched (make models)"
)
def test_pipelines_on_one_model_share_its_inference_service() -> None:
    """The model's service starts with the manager (FRAMEPIPE_PRELOAD_MODELS); two pipelines on
    it share that one process, their workers never load ONNX Runtime, and a passthrough
    pipeline touches no service."""
    demo = Path(__file__).resolve().parents[2] / "framepipe" / "data" / "demo_faces.mp4"
    env = {"STREAM_API_PRELOADED_PROCESSES": "1", "FRAMEPIPE_PRELOAD_MODELS": "centerface"}
    with running_manager(env) as manager:
        wait_for(
            lambda: "service for model 'centerface' started ahead of time" in manager.output(),
            60,
            "the model's service",
        )
        client = client_for(manager)
        ids = []
        for _ in range(2):
            message = payload(demo).to_wire() | {"type": "init"}
            message["processing_configuration"] = {
                "type": "ModelConfiguration",
                "model": "centerface",
            }
            reply = manager.request(message)
            assert reply["response"]["status"] == "success", reply
            ids.append(reply["pipeline_id"])
        plain = start(client, demo)
        for pipeline_id in ids:
            first = first_result(client, pipeline_id)
            assert "predictions" in first.outputs[0]
            inference = framepipe_report(client, pipeline_id)["framepipe"]["inference"]
            assert inference["connected"] and inference["completed"] >= 1
        assert framepipe_report(client, plain)["framepipe"]["inference"] is None
        services = [
            p
            for p in manager.tree()
            if "framepipe-inference" in " ".join(p.cmdline()) or (p.name() == "framepipe-inference")
        ]
        workers = [psutil.Process(framepipe_report(client, i)["framepipe"]["pid"]) for i in ids]
        for worker in workers:
            maps = {m.path for m in worker.memory_maps()}
            assert not any("onnxruntime" in path for path in maps), "a worker loaded the model"
        loaded = [p for p in manager.tree() if any("onnxruntime" in m.path for m in _maps(p))]
        assert len(loaded) == 1, f"one process holds the model, not {loaded} ({services})"
        for pipeline_id in [*ids, plain]:
            client.terminate_pipeline(pipeline_id)


def _maps(proc: psutil.Process) -> list[Any]:
    try:
        return list(proc.memory_maps())
    except psutil.Error:
        return []


def test_multi_source_batches_report_a_source_without_a_frame_as_null(
    videos: dict[str, Path],
) -> None:
    """Two sources in one pipeline; once the short one has ended, each batch has no frame of
    it: the client receives ``null`` in both ``outputs`` and ``frames_metadata`` at its place."""
    with running_manager() as manager:
        client = client_for(manager)
        pipeline_id = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(
                    video_reference=[str(videos["short"]), str(videos["long"])],
                    realtime_replay=True,
                    batch_collection_timeout=0.05,
                ),
                processing_configuration=ModelConfiguration(model="passthrough"),
                sink_configuration=MemorySinkConfiguration(results_buffer_size=256),
            )
        ).context.pipeline_id
        assert pipeline_id

        def a_batch_without_the_short_source() -> Any:
            entries = client.consume_pipeline_result(pipeline_id, max_entries=64).entries
            for entry in entries:
                assert len(entry.outputs) == len(entry.frames_metadata) == 2
                if entry.frames_metadata[0] is None:
                    return entry
            return None

        entry = wait_for(a_batch_without_the_short_source, 20.0, "a batch without source 0")
        assert entry.outputs[0] is None
        assert entry.frames_metadata[1] is not None and entry.frames_metadata[1].source_id == 1
        assert entry.outputs[1] is not None
        client.terminate_pipeline(pipeline_id)
