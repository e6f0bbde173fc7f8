"""The in-process inference engine on the real CenterFace model: per-channel order under
concurrency, fairness, stalled callers, the batching path, channels, local sharing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort
import pytest

from framepipe.core.inference import (
    EngineOptions,
    FrameRef,
    InferenceEngine,
    Outputs,
    StaleFrameError,
    SubmittedFrame,
    local_engine,
)
from framepipe.core.processing import ModelRegistry, ModelSpec, ModelTask
from framepipe.core.ring import FrameRing
from framepipe.core.ring_cache import RingCache
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from tests.models import centerface_registry, corners, demo_frames, demo_truth, iou, without_ids

FACES = ModelSpec("centerface")
WAIT_S = 120.0  # a bound for the test to fail instead of hanging; never a performance target


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return centerface_registry(providers=("cpu",))


@pytest.fixture(scope="module")
def engine(registry: ModelRegistry) -> Iterator[InferenceEngine]:
    with InferenceEngine(
        "centerface", registry=registry, options=EngineOptions(concurrency=2)
    ) as engine:
        yield engine


@dataclass
class Collector:
    """on_done of one channel: what came back, in the order it came."""

    expected: int
    outcomes: list[tuple[int, Outputs | BaseException]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def callback(self, tag: int) -> Any:
        def on_done(outcome: Outputs | BaseException) -> None:
            with self.lock:
                self.outcomes.append((tag, outcome))
                if len(self.outcomes) >= self.expected:
                    self.done.set()

        return on_done

    def wait(self) -> list[tuple[int, Outputs | BaseException]]:
        assert self.done.wait(WAIT_S), f"{len(self.outcomes)} of {self.expected} came back"
        return self.outcomes


def single(engine: InferenceEngine, frame: Any, spec: ModelSpec = FACES) -> dict[str, Any] | None:
    """The answer of one plain run on the calling thread (the reference)."""
    from framepipe.core.processing import prediction_to_wire, thresholds_for

    [result] = engine.model.infer([frame], thresholds_for(spec, engine.model), spec.top_k)
    assert result is not None
    model = engine.model
    return without_ids(prediction_to_wire(result, model.class_names, model.keypoint_names))


def test_results_come_back_in_submission_order_under_concurrency(
    engine: InferenceEngine,
) -> None:
    frames = demo_frames(48, step=4)
    expected = {i: single(engine, frame) for i, frame in enumerate(frames)}
    # submits of 1 and 3 sources alternate, so later submits often finish first
    batches: list[list[int | None]] = []
    i = 0
    while i < len(frames):
        size = 3 if len(batches) % 2 else 1
        batches.append([*range(i, min(i + size, len(frames))), None][: size + 1])
        i += size
    collector = Collector(len(batches))
    with engine.open_channel(FACES, "ordered") as channel:
        for tag, batch in enumerate(batches):
            channel.submit(
                [None if k is None else SubmittedFrame(frames[k]) for k in batch],
                collector.callback(tag),
            )
        outcomes = collector.wait()
        assert [tag for tag, _ in outcomes] == list(range(len(batches)))
        for (tag, outputs), batch in zip(outcomes, batches, strict=True):
            assert isinstance(outputs, list), outputs
            assert [without_ids(o) for o in outputs] == [
                None if k is None else expected[k] for k in batch
            ], f"submit {tag}"
        state = channel.state
    assert (state.submitted, state.completed, state.failed, state.in_flight) == (
        len(batches),
        len(batches),
        0,
        0,
    )
    stats = engine.statistics()
    assert stats.concurrency == 2 and not stats.batching and stats.frames >= len(frames)


def test_the_face_is_found_in_demo_frames_through_the_engine(engine: InferenceEngine) -> None:
    step = 5
    frames = demo_frames(40, step=step)
    truth = demo_truth()
    collector = Collector(len(frames))
    with engine.open_channel(ModelSpec("centerface", task=ModelTask.OBJECT_DETECTION), "od") as ch:
        for k, frame in enumerate(frames):
            ch.submit([SubmittedFrame(frame)], collector.callback(k))
        outcomes = collector.wait()
    misses = []
    for k, outputs in outcomes:
        assert isinstance(outputs, list)
        [out] = outputs
        assert out is not None and out["image"] == {"width": 1280, "height": 720}
        expected = truth[k * step]
        boxes = [corners(p) for p in out["predictions"]]
        assert all(p["class"] == "face" and len(p["keypoints"]) == 5 for p in out["predictions"])
        if expected["visible"] == "full":
            best = max((iou(b, expected["face"]) for b in boxes), default=0.0)
            if len(boxes) != 1 or best < 0.6:
                misses.append((k * step, len(boxes), best))
        elif expected["visible"] == "none" and boxes:
            misses.append((k * step, len(boxes), 0.0))
    assert not misses


def test_a_busy_channel_does_not_starve_a_slow_one(engine: InferenceEngine) -> None:
    """A greedy channel keeps 16 submits queued (far more than the engine runs); a paced
    one submits a frame, waits for it, then sleeps. Each paced frame must pass the greedy
    backlog: at most a couple of greedy frames finish while it waits (round-robin), where
    first-come-first-served would make it wait behind the whole backlog."""
    frames = demo_frames(8, step=20)
    backlog = 16
    lock = threading.Lock()
    greedy_done = 0
    stop = threading.Event()
    greedy = engine.open_channel(FACES, "greedy-60fps")
    slow = engine.open_channel(FACES, "paced-5fps")

    def resubmit(outcome: Outputs | BaseException) -> None:
        nonlocal greedy_done
        with lock:
            greedy_done += 1
        if not stop.is_set() and not isinstance(outcome, BaseException):
            greedy.submit([SubmittedFrame(frames[greedy_done % len(frames)])], resubmit)

    try:
        for k in range(backlog):
            greedy.submit([SubmittedFrame(frames[k % len(frames)])], resubmit)
        overtaken = []
        for k in range(8):
            stop.wait(0.2)  # 5 fps
            arrived = threading.Event()
            with lock:
                before = greedy_done
            slow.submit([SubmittedFrame(frames[k])], lambda _o, e=arrived: e.set())
            assert arrived.wait(WAIT_S)
            with lock:
                overtaken.append(greedy_done - before)
        assert greedy.statistics().queued > 0, "the greedy channel must keep the engine saturated"
    finally:
        stop.set()
        slow.close()
        greedy.close()
    # 2 runners: the greedy frames already running, and perhaps one more, finish first
    assert max(overtaken) <= 2 * engine.concurrency + 2, overtaken
    assert slow.state.completed == 8


def test_a_stalled_caller_does_not_block_another_channel(engine: InferenceEngine) -> None:
    frames = demo_frames(10, step=10)
    release = threading.Event()
    stalled_results = Collector(10)
    stalled_cb = stalled_results.callback

    def stuck(tag: int) -> Any:
        inner = stalled_cb(tag)

        def on_done(outcome: Outputs | BaseException) -> None:
            release.wait(WAIT_S)  # the caller stopped taking results
            inner(outcome)

        return on_done

    stalled = engine.open_channel(FACES, "stalled")
    try:
        for k in range(10):
            stalled.submit([SubmittedFrame(frames[k])], stuck(k))
        other = Collector(20)
        with engine.open_channel(FACES, "flowing") as flowing:
            for k in range(20):
                flowing.submit([SubmittedFrame(frames[k % 10])], other.callback(k))
            outcomes = other.wait()
        assert [tag for tag, _ in outcomes] == list(range(20))
        assert all(isinstance(o, list) and o[0] is not None for _, o in outcomes)
        blocked = stalled.statistics()
        # the stalled channel stopped being scheduled once its bound was reached
        assert blocked.in_flight <= blocked.max_in_flight
        assert blocked.frames <= blocked.max_in_flight + 1 and blocked.queued > 0
    finally:
        release.set()
    assert [tag for tag, _ in stalled_results.wait()] == list(range(10))
    stalled.close()


def test_batches_across_channels_give_the_single_frame_answers(registry: ModelRegistry) -> None:
    frames = demo_frames(12, step=15)
    specs = [FACES, ModelSpec("centerface", confidence=0.3, max_detections=1)]
    options = EngineOptions(batching=True, max_batch=4, max_wait_s=0.05, concurrency=1)
    with InferenceEngine("centerface", registry=registry, options=options) as batched:
        expected = [[single(batched, f, spec) for f in frames] for spec in specs]
        collectors = [Collector(len(frames)) for _ in specs]
        channels = [batched.open_channel(spec, f"c{n}") for n, spec in enumerate(specs)]
        for k, frame in enumerate(frames):
            for channel, collector in zip(channels, collectors, strict=True):
                channel.submit([SubmittedFrame(frame)], collector.callback(k))
        for n, collector in enumerate(collectors):
            outcomes = collector.wait()
            assert [tag for tag, _ in outcomes] == list(range(len(frames)))
            for (k, outputs), want in zip(outcomes, expected[n], strict=True):
                assert isinstance(outputs, list)
                assert_same_predictions(without_ids(outputs[0]), want, f"channel {n} frame {k}")
        for channel in channels:
            channel.close()
        stats = batched.statistics()
    assert stats.batching and stats.max_batch == 4
    assert stats.mean_batch > 1.5, stats.batch_sizes  # frames of both channels ran together


def assert_same_predictions(got: Any, want: Any, where: str) -> None:
    """Equal up to float noise: a batch of 4 and a batch of 1 may differ in the last bits."""
    assert got is not None and want is not None and got["image"] == want["image"], where
    assert len(got["predictions"]) == len(want["predictions"]), where
    for a, b in zip(got["predictions"], want["predictions"], strict=True):
        for key in ("x", "y", "width", "height"):
            assert a[key] == pytest.approx(b[key], abs=0.1), (where, key)
        assert a["confidence"] == pytest.approx(b["confidence"], abs=2e-3), where
        assert a["class"] == b["class"], where


def test_channels_are_checked_when_opened(engine: InferenceEngine) -> None:
    with pytest.raises(InvalidPayloadError, match=r"asks for model 'yolo'.*runs 'centerface'"):
        engine.open_channel(ModelSpec("yolo"), "p")
    with pytest.raises(InvalidPayloadError, match="face-detection model, not classification"):
        engine.open_channel(ModelSpec("centerface", task=ModelTask.CLASSIFICATION), "p")
    with pytest.raises(InvalidPayloadError, match=r"class_filter: \['person'\]"):
        engine.open_channel(ModelSpec("centerface", class_filter=("person",)), "p")


def test_a_bad_frame_fails_only_its_own_submit(engine: InferenceEngine) -> None:
    frame = demo_frames(1)[0]
    collector = Collector(3)
    with engine.open_channel(FACES, "bad") as channel:
        channel.submit([SubmittedFrame(frame)], collector.callback(0))
        channel.submit([None, SubmittedFrame(frame[:, :, 0])], collector.callback(1))
        channel.submit([None, None], collector.callback(2))
        outcomes = collector.wait()
        with pytest.raises(InvalidPayloadError, match="source 0: submit takes SubmittedFrame"):
            channel.submit([frame], collector.callback(3))  # type: ignore[list-item]
    assert [tag for tag, _ in outcomes] == [0, 1, 2]
    assert isinstance(outcomes[0][1], list) and outcomes[0][1][0] is not None
    error = outcomes[1][1]
    assert isinstance(error, InvalidPayloadError) and "frame of source 1" in error.message
    assert outcomes[2][1] == [None, None]
    with pytest.raises(OperationError, match="'bad' is closed"):
        channel.submit([SubmittedFrame(frame)], collector.callback(4))


def test_closing_a_channel_fails_what_is_queued_in_order(registry: ModelRegistry) -> None:
    frames = demo_frames(6, step=30)
    with InferenceEngine(
        "centerface", registry=registry, options=EngineOptions(concurrency=1)
    ) as single_runner:
        collector = Collector(len(frames))
        channel = single_runner.open_channel(FACES, "closing")
        for k, frame in enumerate(frames):
            channel.submit([SubmittedFrame(frame)], collector.callback(k))
        channel.close()  # returns once everything was delivered
        outcomes = collector.outcomes
    assert [tag for tag, _ in outcomes] == list(range(len(frames)))
    failed = [o for _, o in outcomes if isinstance(o, BaseException)]
    assert failed and all(isinstance(o, OperationError) and "closed" in str(o) for o in failed)
    # what had started ran to the end; everything after the first failure failed
    first = next(k for k, o in outcomes if isinstance(o, BaseException))
    assert all(isinstance(o, BaseException) for _, o in outcomes[first:])


def test_a_reused_ring_slot_is_reported_not_inferred(registry: ModelRegistry) -> None:
    frame = demo_frames(1)[0]
    with (
        FrameRing.create(2, frame.shape, tag="stale") as ring,
        RingCache() as rings,
        InferenceEngine(
            "centerface", registry=registry, options=EngineOptions(concurrency=1), resolver=rings
        ) as reader,
    ):
        slot = ring.try_acquire()
        assert slot is not None
        ring.writable(slot)[:] = frame
        first = ring.publish(slot, frame_id=1)
        current = FrameRef(ring.name, first.slot, first.seq)
        ok_back, stale_back = Collector(1), Collector(1)
        with reader.open_channel(FACES, "refs") as channel:
            channel.submit([SubmittedFrame(None, current)], ok_back.callback(0))
            [(_, ok)] = ok_back.wait()
            # the producer comes round to the slot again: the old ref names a frame that is gone
            for frame_id in range(2, 2 + ring.slots):
                reused = ring.try_acquire()
                assert reused is not None
                ring.publish(reused, frame_id=frame_id)
                if reused == first.slot:
                    break
            assert not ring.is_current(first)
            channel.submit([SubmittedFrame(None, current)], stale_back.callback(1))
            [(_, stale)] = stale_back.wait()
    assert isinstance(ok, list) and ok[0] is not None and len(ok[0]["predictions"]) == 1
    assert isinstance(stale, StaleFrameError) and f"slot {first.slot}" in str(stale)


def test_local_engines_are_shared_and_closed_with_the_last_user(registry: ModelRegistry) -> None:
    local = local_engine(registry=registry)
    first = local.open_channel(ModelSpec("centerface", providers=("cpu",)), "a")
    second = local_engine(registry=registry).open_channel(
        ModelSpec("centerface", providers=("CPUExecutionProvider",), confidence=0.9), "b"
    )
    try:
        assert first.engine is second.engine  # one session for both pipelines
        assert [s.model for s in local.statistics()] == ["centerface"]
        frame = demo_frames(1)[0]
        collector = Collector(2)
        first.submit([SubmittedFrame(frame)], collector.callback(0))
        second.submit([SubmittedFrame(frame)], collector.callback(1))
        assert all(isinstance(o, list) for _, o in collector.wait())
        first.close()
        first.close()  # idempotent: gives the engine back once
        assert not second.engine.closed
    finally:
        second.close()
    assert second.engine.closed and local.statistics() == []
    with pytest.raises(OperationError, match="'b' is closed"):
        second.submit([SubmittedFrame(frame)], collector.callback(2))
    with pytest.raises(InvalidPayloadError, match="class_filter"):
        local.open_channel(ModelSpec("centerface", class_filter=("cat",)), "refused")
    assert local.statistics() == []  # a refused channel gives its engine back
    third = local.open_channel(FACES, "c")
    try:
        assert third.engine is not first.engine and not third.engine.closed
    finally:
        third.close()


def test_no_gpu_means_the_cpu_path_with_one_warning(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    with caplog.at_level(logging.WARNING, logger="framepipe.core.processing.runner"):
        engine = InferenceEngine("centerface", providers=["cuda", "cpu"], registry=registry)
    with engine:
        warnings = [r for r in caplog.records if r.name == "framepipe.core.processing.runner"]
        if engine.provider == "CUDAExecutionProvider":
            assert engine.batching and warnings == []
        else:
            assert engine.provider == "CPUExecutionProvider" and not engine.batching
            assert len(warnings) == 1
        collector = Collector(1)
        with engine.open_channel(FACES, "gpu") as channel:
            channel.submit([SubmittedFrame(demo_frames(1)[0])], collector.callback(0))
            [(_, outputs)] = collector.wait()
    assert isinstance(outputs, list) and outputs[0] is not None
