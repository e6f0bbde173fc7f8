"""The inference service as a real process: frames written into a real FrameRing by the test,
submitted as FrameRefs through RemoteInference, supervised by InferenceServices (crash and
hang restarts), and a connection nobody reads."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest

from framepipe.core.inference import (
    EngineOptions,
    FrameRef,
    InferenceUnavailableError,
    Outputs,
    StaleFrameError,
    SubmittedFrame,
)
from framepipe.core.processing import ModelSpec, ProcessingSettings
from framepipe.core.ring import FrameRing
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from framepipe.server.inference import _socket as _service_socket
from framepipe.server.inference.client import RemoteInference
from framepipe.server.inference.messages import Infer, RegisterChannel, ServiceAddress
from framepipe.server.inference.supervisor import (
    InferenceServices,
    ServicesOptions,
    ServiceState,
    ServiceStatistics,
)
from tests.models import centerface_registry, corners, demo_frames, demo_truth, iou

T = TypeVar("T")
FACES = ModelSpec("centerface")
WAIT_S = 60.0  # a bound for the test to fail instead of hanging; never a performance target
DETECTION_BOUND_S = 2.0  # the supervisor's promise: a crash or a hang is seen within 2 s


class LoopThread:
    """An event loop on a thread of its own, as the manager's: the supervisor keeps pinging
    while the test blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, func: Callable[[], T]) -> T:
        async def call() -> T:
            return func()

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Services:
    """InferenceServices on a LoopThread, with blocking helpers for the tests."""

    def __init__(self, options: ServicesOptions | None = None, **settings: Any) -> None:
        centerface_registry()  # fetched if a bare pytest run lacks it
        self.loop = LoopThread()
        self.services = InferenceServices(
            ProcessingSettings(providers=("cpu",), **settings), options=options
        )

    def ensure(self, model: str = "centerface") -> ServiceAddress:
        return self.loop.run(self.services.ensure(model))

    def statistics(self) -> ServiceStatistics:
        [stats] = self.loop.call(self.services.statistics)
        return stats

    def wait_for(self, predicate: Callable[[ServiceStatistics], bool]) -> ServiceStatistics:
        deadline = time.monotonic() + WAIT_S
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            assert time.monotonic() < deadline, f"gave up waiting; last: {stats}"
            time.sleep(0.02)

    def close(self) -> None:
        try:
            self.loop.run(self.services.close())
        finally:
            self.loop.close()


@pytest.fixture
def services() -> Iterator[Services]:
    running = Services(ServicesOptions(engine=EngineOptions(concurrency=2)))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    with FrameRing.create(8, (720, 1280, 3), tag="svctest") as ring:
        yield ring


class Feeder:
    """The producer side of a pipeline: writes frames into the ring and holds each frame's
    lease until its on_done, as a pipeline worker does."""

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring
        self.consumer = ring.register_consumer()
        self._frame_id = 0

    def put(self, frame: np.ndarray[Any, Any]) -> FrameRef:
        slot = self.ring.acquire(timeout=WAIT_S)
        assert slot is not None, "no free slot: a lease was never given back"
        self.ring.writable(slot)[:] = frame
        self._frame_id += 1
        descriptor = self.ring.publish(slot, frame_id=self._frame_id)
        self.ring.grant(self.consumer, slot)
        return FrameRef(self.ring.name, descriptor.slot, descriptor.seq)

    def done(self, ref: FrameRef) -> None:
        self.ring.release(self.consumer, ref.slot)


class Stream:
    """Submits frames through a channel continuously, ``depth`` in flight, and records every
    outcome in the order on_done saw them."""

    def __init__(self, channel: Any, feeder: Feeder, frames: list[Any], depth: int = 4) -> None:
        self.channel = channel
        self.feeder = feeder
        self.frames = frames
        self.outcomes: list[tuple[int, float, Outputs | BaseException]] = []
        self._slots = threading.Semaphore(depth)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        for n in range(5000):
            if not self._slots.acquire(timeout=WAIT_S) or self._stop.is_set():
                return
            ref = self.feeder.put(self.frames[n % len(self.frames)])

            def on_done(outcome: Outputs | BaseException, n: int = n, ref: FrameRef = ref) -> None:
                self.feeder.done(ref)
                with self._lock:
                    self.outcomes.append((n, time.monotonic(), outcome))
                self._slots.release()

            self.channel.submit([SubmittedFrame(None, ref)], on_done)
            if self.failures():
                time.sleep(0.01)  # while the service is away, submits fail at once

    def failures(self) -> int:
        with self._lock:
            return sum(isinstance(o, BaseException) for _, _, o in self.outcomes)

    def successes_after(self, when: float) -> int:
        with self._lock:
            return sum(t > when and isinstance(o, list) for _, t, o in self.outcomes)

    def wait_until(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, f"stream stuck after {len(self.outcomes)} outcomes"
            time.sleep(0.01)

    def stop(self) -> list[tuple[int, float, Outputs | BaseException]]:
        """Stop submitting; returns every outcome once all submits came back."""
        self._stop.set()
        self._slots.release()  # in case the thread waits for room
        self._thread.join(WAIT_S)
        submitted = self.channel.state.submitted
        self.wait_until(lambda: len(self.outcomes) >= submitted)
        return self.outcomes


def wait_outcome(channel: Any, frames: list[SubmittedFrame | None]) -> Outputs | BaseException:
    done = threading.Event()
    box: list[Outputs | BaseException] = []
    channel.submit(frames, lambda outcome: (box.append(outcome), done.set()))
    assert done.wait(WAIT_S)
    return box[0]


def test_frames_from_a_ring_come_back_as_predictions(services: Services, ring: FrameRing) -> None:
    step = 5
    frames = demo_frames(30, step=step)
    truth = demo_truth()
    address = services.ensure()
    pid = services.statistics().pid
    assert services.ensure() == address and services.statistics().pid == pid  # started once
    assert pickle.loads(pickle.dumps(address)) == address  # it travels to the workers
    assert address.authkey.hex() not in repr(address)
    feeder = Feeder(ring)
    with RemoteInference(address) as client:
        faces = client.open_channel(FACES, "faces")
        strict = client.open_channel(ModelSpec("centerface", confidence=0.999), "strict")
        results: list[tuple[str, int, Outputs | BaseException]] = []
        lock = threading.Lock()
        done = threading.Event()
        for k, frame in enumerate(frames):
            ref = feeder.put(frame)
            pending = [2]

            def on_done(
                outcome: Outputs | BaseException,
                name: str,
                k: int = k,
                ref: FrameRef = ref,
                pending: list[int] = pending,
            ) -> None:
                with lock:
                    results.append((name, k, outcome))
                    pending[0] -= 1
                    if pending[0] == 0:
                        feeder.done(ref)  # both channels read it: the slot may be reused
                    if len(results) == 2 * len(frames):
                        done.set()

            faces.submit([SubmittedFrame(None, ref), None], lambda o, f=on_done: f(o, "faces"))
            strict.submit([SubmittedFrame(None, ref)], lambda o, f=on_done: f(o, "strict"))
        assert done.wait(WAIT_S)
        for name in ("faces", "strict"):
            mine = [(k, o) for n, k, o in results if n == name]
            assert [k for k, _ in mine] == list(range(len(frames))), f"{name} out of order"
        misses = []
        for name, k, outcome in results:
            assert isinstance(outcome, list), outcome
            if name == "strict":
                assert outcome[0] is not None and outcome[0]["predictions"] == []
                continue
            out, nothing = outcome
            assert nothing is None and out is not None
            expected = truth[k * step]
            boxes = [corners(p) for p in out["predictions"]]
            if expected["visible"] == "full":
                best = max((iou(b, expected["face"]) for b in boxes), default=0.0)
                if len(boxes) != 1 or best < 0.6:
                    misses.append((k * step, len(boxes), best))
        assert not misses
        assert faces.state.completed == len(frames) and faces.state.gap_count == 0
        # a ref to a slot that was written again since: a typed error, never another frame's answer
        stale = feeder.put(frames[0])
        feeder.done(stale)
        while True:
            again = feeder.put(frames[1])
            feeder.done(again)
            if again.slot == stale.slot:
                break
        outcome = wait_outcome(faces, [SubmittedFrame(None, stale)])
        assert isinstance(outcome, StaleFrameError) and f"slot {stale.slot}" in str(outcome)
        assert isinstance(wait_outcome(faces, [SubmittedFrame(None, again)]), list)
    stats = services.wait_for(lambda s: s.engine is not None and s.engine.frames >= 2 * len(frames))
    assert stats.state is ServiceState.RUNNING and stats.restarts == 0
    assert stats.engine is not None and stats.engine.concurrency == 2
    assert stats.pid is not None and services.loop.call(services.services.pids) == [stats.pid]


def test_kill_9_mid_stream_fails_in_flight_then_recovers(
    services: Services, ring: FrameRing
) -> None:
    address = services.ensure()
    first_pid = services.statistics().pid
    assert first_pid is not None
    with RemoteInference(address) as client:
        channel = client.open_channel(FACES, "kill9")
        stream = Stream(channel, Feeder(ring), demo_frames(8, step=25)).start()
        stream.wait_until(lambda: stream.successes_after(0.0) >= 6)
        killed_at = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        stats = services.wait_for(lambda s: s.restarts == 1 and s.state is ServiceState.RUNNING)
        assert stats.crashes == 1 and stats.pid not in (None, first_pid)
        assert stats.last_failure_detected_at is not None
        assert stats.last_failure_detected_at - killed_at < DETECTION_BOUND_S
        stream.wait_until(lambda: stream.successes_after(killed_at) >= 6)
        outcomes = stream.stop()
        state = channel.state
    assert [n for n, _, _ in outcomes] == sorted(n for n, _, _ in outcomes)  # in order
    lost = [o for _, t, o in outcomes if isinstance(o, BaseException)]
    assert lost and all(isinstance(o, InferenceUnavailableError) for o in lost)
    assert "centerface" in str(lost[0])
    assert state.gap_count == 1 and state.gaps[0].ended_at is not None
    assert state.gaps[0].started_at <= state.gaps[0].ended_at
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"


def test_a_stopped_service_is_found_hung_and_replaced(services: Services, ring: FrameRing) -> None:
    address = services.ensure()
    first_pid = services.statistics().pid
    assert first_pid is not None
    with RemoteInference(address) as client:
        channel = client.open_channel(FACES, "sigstop")
        stream = Stream(channel, Feeder(ring), demo_frames(8, step=25)).start()
        stream.wait_until(lambda: stream.successes_after(0.0) >= 4)
        stopped_at = time.monotonic()
        os.kill(first_pid, signal.SIGSTOP)
        stats = services.wait_for(lambda s: s.restarts == 1 and s.state is ServiceState.RUNNING)
        assert stats.hangs == 1 and stats.crashes == 0 and stats.last_failure is not None
        assert "hung" in stats.last_failure or "no answer" in stats.last_failure
        assert stats.last_failure_detected_at is not None
        assert stats.last_failure_detected_at - stopped_at < DETECTION_BOUND_S
        stream.wait_until(lambda: stream.successes_after(stats.last_failure_detected_at or 0) >= 4)
        outcomes = stream.stop()
        assert channel.state.gap_count == 1
    assert any(isinstance(o, InferenceUnavailableError) for _, _, o in outcomes)
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"


def test_a_connection_nobody_reads_does_not_stall_other_pipelines(ring: FrameRing) -> None:
    running = Services(ServicesOptions(engine=EngineOptions(concurrency=2), max_unanswered=64))
    try:
        address = running.ensure()
        # a peer that sends and never reads: replies of ~4 KB each fill its socket buffer,
        # so the service's sender for it blocks, and its reader stops taking more
        stuck = _service_socket.connect(address.address, address.authkey)
        flooded = threading.Event()

        def flood() -> None:
            try:
                stuck.send(RegisterChannel(0, "never-reads", FACES))
                for seq in range(400):
                    stuck.send(Infer(0, seq, (None,) * 4000))
                flooded.set()
            except OSError:
                pass  # shut down by the test

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        feeder = Feeder(ring)
        frames = demo_frames(8, step=25)
        with RemoteInference(address) as client:
            channel = client.open_channel(FACES, "reads")
            for k in range(16):
                ref = feeder.put(frames[k % len(frames)])
                outcome = wait_outcome(channel, [SubmittedFrame(None, ref)])
                feeder.done(ref)
                assert isinstance(outcome, list) and outcome[0] is not None
        stats = running.wait_for(lambda s: s.engine is not None and len(s.engine.channels) == 1)
        assert stats.engine is not None
        [never_reads] = [c for c in stats.engine.channels if c.name == "never-reads"]
        # the service stopped reading the stuck peer long before its 400 requests
        assert never_reads.submitted < 400 and not flooded.is_set()
        assert stats.restarts == 0 and stats.state is ServiceState.RUNNING
        _service_socket.shut_down(stuck)
        flooder.join(WAIT_S)
        stuck.close()
        running.wait_for(lambda s: s.engine is not None and s.engine.channels == ())
    finally:
        running.close()


def test_models_are_checked_and_start_failures_say_why(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"this is not an onnx model")
    running = Services(models_dir=tmp_path)
    try:
        with pytest.raises(InvalidPayloadError, match="model 'nosuch' is not registered"):
            running.ensure("nosuch")
        with pytest.raises(OperationError, match=r"'broken' could not start: .*broken"):
            running.ensure("broken")
        assert running.loop.call(running.services.pids) == []
        assert running.loop.call(running.services.statistics) == []
    finally:
        running.close()


def test_concurrent_ensures_share_one_start_and_close_is_orderly() -> None:
    running = Services()
    try:

        async def both() -> list[ServiceAddress]:
            return await asyncio.gather(*(running.services.ensure("centerface") for _ in range(3)))

        addresses = running.loop.run(both())
        assert len(set(addresses)) == 1
        [pid] = running.loop.call(running.services.pids)
        assert running.statistics().pid == pid
    finally:
        running.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_the_service_refuses_a_bad_spec_and_strangers(services: Services) -> None:
    address = services.ensure()
    with RemoteInference(address) as client:
        with pytest.raises(InvalidPayloadError, match=r"class_filter: \['person'\]"):
            client.open_channel(ModelSpec("centerface", class_filter=("person",)), "bad")
        with pytest.raises(InvalidPayloadError, match="asks for model 'yolo'"):
            client.open_channel(ModelSpec("yolo"), "other")
        channel = client.open_channel(FACES, "good")  # the connection is still fine
        assert isinstance(wait_outcome(channel, [None]), list)
    stranger = ServiceAddress(address.address, b"not the key", address.model, address.providers)
    with (
        RemoteInference(stranger, open_timeout_s=1.0) as client,
        pytest.raises(InferenceUnavailableError, match="AuthenticationError"),
    ):
        client.open_channel(FACES, "stranger")
    assert services.statistics().restarts == 0


def test_without_a_service_opening_a_channel_says_so_in_time() -> None:
    nobody = ServiceAddress("\0framepipe-test-nobody-listens", b"k" * 32, "centerface", ("cpu",))
    started = time.monotonic()
    with (
        RemoteInference(nobody, open_timeout_s=0.5) as client,
        pytest.raises(InferenceUnavailableError, match="ConnectionRefusedError"),
    ):
        client.open_channel(FACES, "p")
    assert time.monotonic() - started < WAIT_S
    assert not client.connected and client.state().gap_count == 0


MANAGER = """
import asyncio, sys
from framepipe.core.processing import ProcessingSettings
from framepipe.server.inference.supervisor import InferenceServices

async def main() -> None:
    services = InferenceServices(ProcessingSettings(providers=("cpu",)))
    await services.ensure("centerface")
    print(services.pids()[0], flush=True)
    await asyncio.sleep(600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_the_service_dies_with_its_manager(tmp_path: Path) -> None:
    import subprocess
    import sys

    centerface_registry()
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as manager:
        try:
            assert manager.stdout is not None
            service_pid = int(manager.stdout.readline())
            service = psutil.Process(service_pid)
            assert service.ppid() == manager.pid
            manager.kill()  # SIGKILL: nothing of the manager runs any more
            manager.wait(WAIT_S)
            gone, _ = psutil.wait_procs([service], timeout=WAIT_S)
            assert gone, f"inference service {service_pid} outlived its manager"
        finally:
            manager.kill()


def test_two_pipelines_share_one_service_reading_the_decoders_rings(services: Services) -> None:
    """Real Pipelines on the demo video: the decode processes write into rings, the
    pipelines send FrameRefs only, the service reads the slots in place (one session)."""
    from framepipe.core.pipeline import Pipeline
    from framepipe.data import demo_video_path

    address = services.ensure()
    truth = demo_truth()
    with RemoteInference(address) as first, RemoteInference(address) as second:
        pipelines = [
            Pipeline(str(demo_video_path()), model="centerface", max_fps=5, inference=client)
            for client in (first, second)
        ]
        seen: list[list[int]] = [[], []]
        misses: list[tuple[int, int]] = []
        for pipeline in pipelines:
            pipeline.start()
        try:
            for k, pipeline in enumerate(pipelines):
                for result in pipeline.results(timeout=WAIT_S):
                    [meta], [out] = result.frames_metadata, result.outputs
                    assert meta is not None and out is not None
                    seen[k].append(meta.frame_id)
                    expected = truth[min(round(meta.frame_id - 1), len(truth) - 1)]
                    boxes = [corners(p) for p in out["predictions"]]
                    if expected["visible"] == "full" and (
                        len(boxes) != 1 or iou(boxes[0], expected["face"]) < 0.5
                    ):
                        misses.append((k, meta.frame_id))
                assert pipeline.join(WAIT_S)
        finally:
            for pipeline in pipelines:
                pipeline.terminate()
    # 8 s of video at max_fps 5: every 5th frame, in order, for each pipeline
    assert seen[0] == seen[1] == list(range(1, 201, 5)), seen
    assert not misses
    stats = services.wait_for(
        lambda s: s.engine is not None and s.engine.frames >= len(seen[0]) + len(seen[1])
    )
    assert stats.restarts == 0 and stats.engine is not None
    assert stats.engine.frames == len(seen[0]) + len(seen[1])  # every frame, one session
