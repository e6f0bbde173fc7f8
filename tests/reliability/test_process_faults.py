"""Faults of every process kind, mid-stream, with several pipelines: nothing lost, leaked or hidden.

Each test runs a real manager with real pipelines, kills (SIGKILL) or stops (SIGSTOP) one of
its processes, and checks that: the fault is reported for what it is (killed by which signal,
stuck, never "ended"); the other pipelines keep producing; and afterwards no process of the
manager's tree is alive and no ``fp-`` entry of theirs is left in /dev/shm (the suite's guard
checks that too). The manager's own death is covered: its reaper unlinks what was left without
waiting for a manager to start again.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from framepipe._serve_process import ServeProcess, serve_command
from framepipe.client import SyncStreamManagerClient
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing import make_test_video
from tests.conftest import framepipe_shm_entries
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for
from tests.rtsp import RtspServer, system_python_has_gst_rtsp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {
        # a minute at 30 fps, replayed in real time: outlives every test here
        "long": make_test_video(
            root / "long.mp4", frames=1800, width=320, height=240, fps=30.0
        ).path,
        # Matroska can be read up to where it is cut
        "mkv": make_test_video(root / "cut.mkv", frames=300, width=320, height=240, fps=30.0).path,
        # 0.9 MB frames: 64 of them in flight (a ring's capacity) are more than a 24 MB /dev/shm
        "vga": make_test_video(root / "vga.mp4", frames=150, width=640, height=480, fps=30.0).path,
    }


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    if not system_python_has_gst_rtsp():
        pytest.skip("GStreamer RTSP server not installed (make system-deps)")
    server = RtspServer(fps=15)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def client_for(manager: ManagerProcess) -> SyncStreamManagerClient:
    return SyncStreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=30)


def start(client: SyncStreamManagerClient, reference: str, **video: Any) -> str:
    pipeline_id = client.initialise_pipeline(
        InitialisePipelinePayload(
            video_configuration=VideoConfiguration(video_reference=reference, **video),
            processing_configuration=ModelConfiguration(model="passthrough"),
            sink_configuration=MemorySinkConfiguration(results_buffer_size=256),
        )
    ).context.pipeline_id
    assert pipeline_id
    return pipeline_id


def produced(client: SyncStreamManagerClient, pipeline_id: str) -> int:
    client.consume_pipeline_result(pipeline_id, max_entries=1000)
    extra = client.get_status(pipeline_id).report["framepipe"]
    return int(extra["results_produced"])


def shm_used(pid: int) -> int:
    """Bytes used in the /dev/shm of the mount namespace of process ``pid``."""
    df = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "df", "-B1", "--output=used", "/dev/shm"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return int(df.stdout.split()[-1])


def keeps_producing(client: SyncStreamManagerClient, pipeline_id: str, more: int = 10) -> None:
    before = produced(client, pipeline_id)
    wait_for(lambda: produced(client, pipeline_id) >= before + more, 20, f"{more} more results")


def state_of(client: SyncStreamManagerClient, pipeline_id: str) -> dict[str, Any]:
    extra: dict[str, Any] = client.get_status(pipeline_id).report["framepipe"]
    return extra


def worker_running(
    manager: ManagerProcess, client: SyncStreamManagerClient, pipeline_id: str
) -> psutil.Process:
    pid = state_of(client, pipeline_id)["pid"]
    return psutil.Process(pid)


def decoder_of(client: SyncStreamManagerClient, pipeline_id: str) -> int:
    pid = int(state_of(client, pipeline_id)["sources"][0]["decoder_pid"])
    assert pid > 0
    return pid


def segments_of(pids: set[int]) -> set[str]:
    owned = set()
    for name in framepipe_shm_entries():
        pid_text = name.removeprefix("sem.").removeprefix("fp-").split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) in pids:
            owned.add(name)
    return owned


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
    return out


def test_a_killed_manager_leaves_no_process_and_no_segment(videos: dict[str, Path]) -> None:
    manager = ManagerProcess()
    try:
        client = client_for(manager)
        ids = [start(client, str(videos["long"]), realtime_replay=True) for _ in range(2)]
        ids.append(start(client, str(videos["mkv"])))
        for pipeline_id in ids[:2]:
            keeps_producing(client, pipeline_id, 3)
        tree = {p.pid for p in manager.tree()} | {manager.pid}
        # (a process may exit between the listing and the reading of its command line)
        reapers = [p for p in manager.tree() if "framepipe.server.manager.reaper" in _cmdline(p)]
        assert len(reapers) == 1, "the manager runs a reaper"
        assert segments_of(tree), "running pipelines hold shared memory"
        os.kill(manager.pid, signal.SIGKILL)
        assert manager.stop(10) == -signal.SIGKILL  # collects it; sends nothing more
    except BaseException:
        manager.kill()
        raise
    others = tree - {reapers[0].pid, manager.pid}
    wait_for(lambda: not alive(others), 5, "the manager's processes to die with it")
    # the reaper unlinks what they left, without a manager starting again
    wait_for(lambda: not segments_of(tree), 10, "the reaper to unlink the segments")
    wait_for(lambda: not alive({reapers[0].pid}), 15, "the reaper to finish")


def test_a_manager_starting_unlinks_what_a_dead_one_left() -> None:
    """The start-up sweep: segments and semaphores whose owner is dead (a manager killed with
    its reaper, a machine's earlier run) are unlinked by the next manager as it starts; those
    of a live owner are left alone. (Any manager's health ticks sweep the same way.)"""
    import posix_ipc

    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(exited.stdout)
    assert not psutil.pid_exists(dead)
    left = posix_ipc.SharedMemory(f"/fp-{dead}-ring0xleft", posix_ipc.O_CREX, size=4096)
    left.close_fd()
    posix_ipc.Semaphore(f"/fp-{dead}-ring0xleft-p", posix_ipc.O_CREX).close()
    ours = posix_ipc.SharedMemory(f"/fp-{os.getpid()}-ring0xours", posix_ipc.O_CREX, size=4096)
    ours.close_fd()
    try:
        assert {f"fp-{dead}-ring0xleft", f"sem.fp-{dead}-ring0xleft-p"} <= framepipe_shm_entries()
        with running_manager():
            # (it listens first, then starts: the sweep runs within moments of listening)
            left_names = {f"fp-{dead}-ring0xleft", f"sem.fp-{dead}-ring0xleft-p"}
            wait_for(lambda: not left_names & framepipe_shm_entries(), 5, "the start-up sweep")
            assert f"fp-{os.getpid()}-ring0xours" in framepipe_shm_entries()
    finally:
        ours.unlink()
        for unlink in (
            lambda: posix_ipc.unlink_shared_memory(f"/fp-{dead}-ring0xleft"),
            lambda: posix_ipc.unlink_semaphore(f"/fp-{dead}-ring0xleft-p"),
        ):
            with contextlib.suppress(posix_ipc.ExistentialError):
                unlink()


def test_killed_and_stopped_workers_among_several_pipelines() -> None:
    env = {"FRAMEPIPE_COMMAND_TIMEOUT": "2", "FRAMEPIPE_HEALTH_INTERVAL": "0.5"}
    with running_manager(env) as manager:
        client = client_for(manager)
        video = str(
            make_test_video(
                Path(os.environ.get("TMPDIR", "/tmp")) / f"fp-faults-{os.getpid()}.mp4",
                frames=900,
                width=160,
                height=120,
                fps=30.0,
            ).path
        )
        try:
            killed, stopped, survivor = (
                start(client, video, realtime_replay=True) for _ in range(3)
            )
            for pipeline_id in (killed, stopped, survivor):
                keeps_producing(client, pipeline_id, 3)
            victims = {
                killed: worker_running(manager, client, killed),
                stopped: worker_running(manager, client, stopped),
            }
            trees = {
                pid: {p.pid, *(c.pid for c in p.children(recursive=True))}
                for pid, p in victims.items()
            }
            victims[killed].kill()
            victims[stopped].send_signal(signal.SIGSTOP)
            keeps_producing(client, survivor, 30)  # the others never wait for them

            def failed(pipeline_id: str) -> dict[str, Any] | None:
                extra = state_of(client, pipeline_id)
                return extra if extra["state"] == "FAILED" else None

            extra = wait_for(lambda: failed(killed), 5, "the killed worker's pipeline to fail")
            assert "was killed by SIGKILL" in extra["failure"]
            extra = wait_for(lambda: failed(stopped), 10, "the stopped worker's pipeline to fail")
            assert "did not answer" in extra["failure"] and "killed" in extra["failure"]
            assert sorted(client.list_pipelines().pipelines) == sorted([killed, stopped, survivor])
            for tree in trees.values():
                wait_for(lambda tree=tree: not segments_of(tree), 5, "their segments to be freed")
                wait_for(lambda tree=tree: not alive(tree), 5, "their processes to be gone")
            keeps_producing(client, survivor, 10)
            for pipeline_id in (killed, stopped, survivor):
                client.terminate_pipeline(pipeline_id)
            wait_for(lambda: not manager.decoders(), 10, "the decoders to stop")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(video)


def inference_service(manager: ManagerProcess) -> psutil.Process:
    """The manager's one inference service: the child that listens on a service address."""
    from framepipe.bench._procs import Kind, classify_framepipe, process_info

    root = process_info(manager.pid)
    [service] = [
        p
        for p in manager.tree()
        if p.ppid() == manager.pid
        and (info := process_info(p.pid)) is not None
        and classify_framepipe(info, root, manager.pid) == Kind.SERVICE
    ]
    return service


def test_a_killed_or_stopped_inference_service_is_replaced_and_its_pipelines_go_on(
    videos: dict[str, Path],
) -> None:
    """Two pipelines on one model's service and a passthrough one: SIGKILL of the service, then
    SIGSTOP of its replacement. Each time a new service is running within seconds, the model's
    pipelines report the gap (and the frames it cost, by reason) and keep producing, RUNNING,
    and the passthrough pipeline never notices."""
    env = {"FRAMEPIPE_PRELOAD_MODELS": "centerface", "STREAM_API_PRELOADED_PROCESSES": "0"}
    with running_manager(env) as manager:
        wait_for(
            lambda: "service for model 'centerface' started ahead of time" in manager.output(),
            60,
            "the model's service",
        )
        client = client_for(manager)
        model_ids = [
            client.initialise_pipeline(
                InitialisePipelinePayload(
                    video_configuration=VideoConfiguration(
                        video_reference=str(videos["long"]), realtime_replay=True, max_fps=10
                    ),
                    processing_configuration=ModelConfiguration(model="centerface"),
                    sink_configuration=MemorySinkConfiguration(results_buffer_size=256),
                )
            ).context.pipeline_id
            for _ in range(2)
        ]
        plain = start(client, str(videos["long"]), realtime_replay=True)
        for pipeline_id in [*model_ids, plain]:
            keeps_producing(client, pipeline_id, 3)
        first = inference_service(manager)

        def replaced(old: int) -> psutil.Process | None:
            with contextlib.suppress(ValueError, psutil.Error):
                service = inference_service(manager)
                if service.pid != old and service.status() != psutil.STATUS_STOPPED:
                    return service
            return None

        def gaps_closed(count: int) -> bool:
            for pipeline_id in model_ids:
                inference = state_of(client, pipeline_id)["inference"]
                if inference["gap_count"] < count or not inference["connected"]:
                    return False
                if any(gap["ended_at"] is None for gap in inference["gaps"]):
                    return False
            return True

        first.kill()
        second = wait_for(lambda: replaced(first.pid), 10, "a new service after SIGKILL")
        wait_for(lambda: gaps_closed(1), 15, "the pipelines to report the gap and reconnect")
        for pipeline_id in [*model_ids, plain]:
            keeps_producing(client, pipeline_id, 10)

        stopped_at = time.monotonic()
        second.send_signal(signal.SIGSTOP)
        third = wait_for(lambda: replaced(second.pid), 10, "a new service after SIGSTOP")
        # hung: no answer to the supervisor's pings for 1.5 s, then killed and restarted
        assert time.monotonic() - stopped_at < 2.0 + 6.0, "a hang is found within 2 s (+ start)"
        assert not alive({second.pid})
        wait_for(lambda: gaps_closed(2), 15, "the pipelines to report the second gap")
        for pipeline_id in [*model_ids, plain]:
            keeps_producing(client, pipeline_id, 10)

        for pipeline_id in model_ids:
            extra = state_of(client, pipeline_id)
            assert extra["state"] == "RUNNING", extra
            inference = extra["inference"]
            assert all(gap["reason"].startswith("connection lost") for gap in inference["gaps"])
            # what the gaps cost is counted, by reason: the frames in flight when the service
            # went away and those submitted while it was away; nothing else failed
            assert inference["failed"] > 0, inference
            assert extra["frames_failed"] == {"inference_unavailable": inference["failed"]}
        assert state_of(client, plain)["inference"] is None
        assert third.is_running()
        for pipeline_id in [*model_ids, plain]:
            client.terminate_pipeline(pipeline_id)


def test_a_killed_decoder_fails_a_file_and_is_replaced_for_a_camera(
    videos: dict[str, Path], rtsp: RtspServer
) -> None:
    with running_manager() as manager:
        client = client_for(manager)
        on_file = start(client, str(videos["long"]), realtime_replay=True)
        on_camera = start(client, rtsp.url)
        for pipeline_id in (on_file, on_camera):
            keeps_producing(client, pipeline_id, 3)
        file_decoder, camera_decoder = decoder_of(client, on_file), decoder_of(client, on_camera)
        os.kill(file_decoder, signal.SIGKILL)
        os.kill(camera_decoder, signal.SIGKILL)

        def file_failed() -> dict[str, Any] | None:
            extra = state_of(client, on_file)
            return extra if extra["state"] == "FAILED" else None

        extra = wait_for(file_failed, 10, "the file's pipeline to fail")
        source = extra["sources"][0]
        assert source["state"] == "ERROR"
        assert (
            f"the decode process (pid {file_decoder}) was killed by SIGKILL" in source["last_error"]
        )
        keeps_producing(client, on_camera, 10)  # a new decode process, the same ring
        camera = state_of(client, on_camera)["sources"][0]
        assert camera["decoder_restarts"] == 1 and camera["decoder_pid"] != camera_decoder
        assert "was killed by SIGKILL" in camera["last_error"]
        for pipeline_id in (on_file, on_camera):
            client.terminate_pipeline(pipeline_id)


def test_a_stopped_decoder_is_killed_and_replaced(rtsp: RtspServer) -> None:
    env = {"FRAMEPIPE_SOURCE_OPEN_TIMEOUT": "1", "FRAMEPIPE_SOURCE_READ_TIMEOUT": "1"}
    with running_manager(env) as manager:
        client = client_for(manager)
        pipeline_id = start(client, rtsp.url)
        keeps_producing(client, pipeline_id, 3)
        stuck = decoder_of(client, pipeline_id)
        os.kill(stuck, signal.SIGSTOP)

        def replaced() -> dict[str, Any] | None:
            source = state_of(client, pipeline_id)["sources"][0]
            return (
                source if source["decoder_restarts"] >= 1 and source["state"] == "RUNNING" else None
            )

        # alive but silent for 2 x (1 + 1) s: killed, and the camera gets a new decode process
        source = wait_for(replaced, 20, "the stuck decode process to be replaced")
        assert f"the decode process (pid {stuck}) gave no sign of life" in source["last_error"]
        assert not alive({stuck})
        keeps_producing(client, pipeline_id, 10)
        client.terminate_pipeline(pipeline_id)


def test_a_camera_that_dies_and_returns_or_freezes(rtsp: RtspServer) -> None:
    env = {"FRAMEPIPE_SOURCE_OPEN_TIMEOUT": "1", "FRAMEPIPE_SOURCE_READ_TIMEOUT": "1"}
    with running_manager(env) as manager:
        client = client_for(manager)
        pipeline_id = start(client, rtsp.url)
        keeps_producing(client, pipeline_id, 3)

        def source_state() -> str:
            return str(state_of(client, pipeline_id)["sources"][0]["state"])

        rtsp.kill()
        wait_for(lambda: source_state() == "RESTARTING", 10, "RESTARTING after the camera died")
        rtsp.start()
        wait_for(lambda: source_state() == "RUNNING", 15, "RUNNING once it is back")
        keeps_producing(client, pipeline_id, 5)
        rtsp.freeze()
        wait_for(lambda: source_state() == "RESTARTING", 15, "RESTARTING when it froze")
        rtsp.thaw()
        wait_for(lambda: source_state() == "RUNNING", 20, "RUNNING once it answers again")
        keeps_producing(client, pipeline_id, 5)
        assert state_of(client, pipeline_id)["sources"][0]["reconnects"] >= 2
        client.terminate_pipeline(pipeline_id)


def test_a_file_cut_short_is_read_to_where_it_ends(videos: dict[str, Path], tmp_path: Path) -> None:
    whole = videos["mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: len(whole) * 6 // 10])
    with running_manager() as manager:
        client = client_for(manager)
        pipeline_id = start(client, str(cut))
        ids: list[int] = []

        def ended() -> dict[str, Any] | None:
            for entry in client.consume_pipeline_result(pipeline_id, max_entries=1000).entries:
                ids.extend(m.frame_id for m in entry.frames_metadata if m is not None)
            extra = state_of(client, pipeline_id)
            return extra if extra["finished"] else None

        extra = wait_for(ended, 30, "the cut file to end")
        assert extra["state"] == "FINISHED", extra
        assert 0 < len(ids) < 300 and ids == list(range(1, len(ids) + 1))
        client.terminate_pipeline(pipeline_id)


def _unshare_works() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs root and mount namespaces (unshare -m)")
def test_a_full_dev_shm_is_refused_cleanly(videos: dict[str, Path]) -> None:
    """A 24 MB /dev/shm (a private tmpfs in a mount namespace of its own): a pipeline whose
    rings' resident floor (metadata + frames in flight: three 4K frames, 75 MB) does not fit is
    refused at admission with the sizes, one that fits runs; a WAIT pipeline whose ring's
    capacity does not fit grows its ring until /dev/shm is full and then waits (no SIGBUS, no
    error), and loses no frame once drained; the manager leaves the filesystem empty."""
    script = f"mount -t tmpfs -o size=24m tmpfs /dev/shm && exec {shlex.join(serve_command())}"
    server = ServeProcess(
        env={"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        command=["unshare", "-m", "--propagation", "private", "sh", "-c", script],
    )
    proc = server.proc  # sh execs the manager: the same pid, in the namespace
    try:
        port = server.port
        client = SyncStreamManagerClient(host="127.0.0.1", port=port, operations_timeout=30)
        with pytest.raises(Exception) as refused:
            client.initialise_pipeline(
                InitialisePipelinePayload(
                    video_configuration=VideoConfiguration(
                        video_reference=str(videos["long"]),
                        video_source_properties={"frame_width": 3840.0, "frame_height": 2160.0},
                    ),
                    processing_configuration=ModelConfiguration(model="passthrough"),
                    decoding_buffer_size=64,
                )
            )
        error = refused.value
        assert getattr(error, "error_class", "") == "ShmExhaustedError", error
        assert "/dev/shm" in str(error)
        small = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(
                    video_reference=str(videos["long"]), realtime_replay=True
                ),
                processing_configuration=ModelConfiguration(model="passthrough"),
                decoding_buffer_size=2,
            )
        ).context.pipeline_id
        assert small
        keeps_producing(client, small, 5)
        client.terminate_pipeline(small)
        stalled = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(video_reference=str(videos["vga"])),
                processing_configuration=ModelConfiguration(model="passthrough"),
                sink_configuration=MemorySinkConfiguration(results_buffer_size=4),
                decoding_buffer_size=64,
            )
        ).context.pipeline_id
        assert stalled
        # nobody consumes: the sink fills, the worker stops taking frames, the ring grows
        wait_for(lambda: shm_used(proc.pid) > 20 * 2**20, 30, "/dev/shm to fill up")
        time.sleep(1.0)
        report = client.get_status(stalled).report
        assert report["sources_metadata"][0]["state"] == "RUNNING", report
        produced_so_far = 0
        deadline = time.monotonic() + 60
        while produced_so_far < 150 and time.monotonic() < deadline:
            produced_so_far = produced(client, stalled)
            time.sleep(0.05)
        assert produced_so_far == 150  # WAIT: every frame, none lost to the full /dev/shm
        assert state_of(client, stalled)["sources"][0]["state"] != "ERROR"
        client.terminate_pipeline(stalled)
        leftover = subprocess.run(
            ["nsenter", "-t", str(proc.pid), "-m", "ls", "-A", "/dev/shm"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert [n for n in leftover.stdout.split() if n.startswith(("fp-", "sem.fp-"))] == []
    finally:
        server.stop()
