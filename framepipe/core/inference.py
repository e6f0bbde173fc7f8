"""The inference engine: one model session shared by every pipeline that runs the model.

The engine owns one :class:`LoadedModel` (one ONNX Runtime session) and a few runner
threads. Each pipeline opens a *channel* with its own thresholds, class filter and top-k
(from its :class:`ModelSpec`) and submits one batch per step — a frame, or None, per video
source — with a callback::

    engine = InferenceEngine("centerface")
    channel = engine.open_channel(spec, name="pipeline-1")
    channel.submit([SubmittedFrame(frame)], on_done)        # on_done([prediction dict]) later
    channel.close(); engine.close()

    channel = local_engine().open_channel(spec, "pipeline-2")  # the process's shared engines

How the work is done (docs/ARCHITECTURE.md, "The inference service"):

* CPU provider: K runner threads, each taking one frame at a time and running it on the
  shared session with 1 intra-op thread (ONNX Runtime releases the GIL, so K runs go in
  parallel on K cores without a spinning thread pool). K defaults to the usable cores.
* GPU providers (or ``batching=True``, which works on the CPU too and is tested there):
  a runner collects up to ``max_batch`` frames across channels, waits at most
  ``max_wait_s`` for more, preprocesses them into one batch (frames sharing a model input
  size together), runs once and splits the results.
* Fairness: runners take frames round-robin across the channels that have work, one frame
  per channel per turn, and skip a channel that has ``max_in_flight_per_channel`` frames
  running or finished-but-undelivered. A 60 fps channel therefore cannot starve a 5 fps
  one, and a channel whose caller stopped taking results (its ``on_done`` blocks) stops
  being scheduled instead of holding runners.
* Order: each channel has its own delivery thread that calls ``on_done`` in submission
  order, whatever order the runs finish in. A blocking ``on_done`` delays only its channel.

Frames are read in place: a :class:`SubmittedFrame` carries the pixels (an in-process
caller) or a :class:`FrameRef` to a ring slot, which a :class:`FrameResolver` (the
inference service's cache of attached rings) turns into a view. A frame read through a
ref is checked after the run: if its slot was reused meanwhile, the submit fails with
:class:`StaleFrameError` instead of returning another frame's result. Frames must stay
valid until ``on_done`` is called (the caller holds its ring leases until then).

:func:`local_engine` shares one engine per (model, providers) between the pipelines of one
Python process, counted by open channel. :class:`Inference` / :class:`InferenceChannel` are
what a pipeline codes against; the inference service's client
(:class:`~framepipe.server.inference.client.RemoteInference`) implements them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from framepipe.core.pixels import FrameImage, YuvFrame
from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings
from framepipe.core.processing.spec import ModelSpec
from framepipe.core.ring import FrameRef, StaleFrameError
from framepipe.protocol.errors import InvalidPayloadError, OperationError

if TYPE_CHECKING:
    # ONNX Runtime (and the model code) load with the first engine, not with this module:
    # a pipeline worker that sends its frames to an inference service never imports it.
    from framepipe.core.processing.model import DecodeOptions, FrameResult, LoadedModel

__all__ = [
    "ChannelState",
    "ChannelStatistics",
    "EngineChannel",
    "EngineOptions",
    "EngineStatistics",
    "FrameRef",
    "FrameResolver",
    "Inference",
    "InferenceChannel",
    "InferenceEngine",
    "InferenceUnavailableError",
    "LocalChannel",
    "LocalInference",
    "OnDone",
    "Outputs",
    "ServiceGap",
    "StaleFrameError",
    "SubmittedFrame",
    "local_engine",
    "predictions_to_wire",
]

log = logging.getLogger(__name__)

Frame = FrameImage  # a BGR array, or a 4:2:0 frame in its slot
#: One prediction dict per submitted frame, None where the frame was None.
Outputs = list[dict[str, Any] | None]
#: Called once per submit, with the outputs or the exception that stopped them.
OnDone = Callable[[Outputs | BaseException], None]

_JOIN_TIMEOUT_S = 10.0


class InferenceUnavailableError(OperationError):
    """The inference service cannot be reached (it crashed, is restarting, or is gone).
    Submits in flight when it went away fail with this; later ones succeed once it is back."""

    reason = "inference_unavailable"  # the frames it cost, in a pipeline's frames_failed


class SubmittedFrame(NamedTuple):
    """One source's frame: its pixels (read in place), and where it is for another process
    (:class:`FrameRef`: the inference service reads the ring slot itself). The service's
    own engine gets refs only (``image`` None) and resolves them."""

    image: Frame | None
    ref: FrameRef | None = None


class FrameResolver(Protocol):
    """Turns a :class:`FrameRef` into the frame, in place (the inference service's rings)."""

    def acquire(self, ref: FrameRef) -> Frame:
        """A read-only view of the slot; StaleFrameError if it no longer holds the frame."""

    def release(self, ref: FrameRef) -> None:
        """The view from :meth:`acquire` is no longer used."""

    def is_current(self, ref: FrameRef) -> bool:
        """The slot still holds that frame (its sequence number did not change)."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How an engine uses the device. ``None`` fields are decided from the provider."""

    concurrency: int | None = None  # runner threads; None: usable cores (CPU) or 2 (batches)
    batching: bool | None = None  # None: batches on GPU providers, single frames on the CPU
    max_batch: int = 8
    max_wait_s: float = 0.004  # how long a batch waits for more frames
    max_in_flight_per_channel: int | None = None  # None: concurrency + 1 (CPU) or max_batch

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_in_flight_per_channel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidPayloadError(f"EngineOptions.{name} must be >= 1, got {value!r}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise InvalidPayloadError(
                f"EngineOptions.max_batch must be >= 1, got {self.max_batch!r}"
            )
        if not self.max_wait_s >= 0:
            raise InvalidPayloadError(
                f"EngineOptions.max_wait_s must be >= 0, got {self.max_wait_s!r}"
            )


@dataclass(frozen=True, slots=True)
class ServiceGap:
    """A time the inference service was unreachable (wall clock, ``time.time()``)."""

    started_at: float
    ended_at: float | None  # None: still going on
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a pipeline reports about its inference: counts per submit, and service gaps."""

    name: str
    connected: bool
    submitted: int
    completed: int
    failed: int
    in_flight: int  # submits whose on_done has not been called yet
    gap_count: int = 0  # every gap since the channel opened
    gaps: tuple[ServiceGap, ...] = ()  # the most recent ones; the last may still be open


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    name: str
    submitted: int  # submits
    completed: int  # submits delivered with outputs
    failed: int  # submits delivered with an exception
    frames: int  # frames run
    queued: int  # frames waiting for a runner
    in_flight: int  # frames running, or done and waiting for the caller's on_done
    max_in_flight: int


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    model: str
    provider: str
    batching: bool
    concurrency: int
    max_batch: int
    queue_depth: int  # frames waiting for a runner
    in_flight: int  # frames being run now
    runs: int  # session runs (a batch is one run)
    frames: int  # frames run
    batch_sizes: tuple[int, ...]  # runs by batch size: index i counts runs of i + 1 frames
    busy_s: float  # runner time spent on frames, all runners together
    uptime_s: float
    channels: tuple[ChannelStatistics, ...] = ()

    @property
    def mean_batch(self) -> float:
        return self.frames / self.runs if self.runs else 0.0

    @property
    def busy_fraction(self) -> float:
        """Share of the runners' time spent working since the engine started (0..1)."""
        capacity = self.uptime_s * self.concurrency
        return min(1.0, self.busy_s / capacity) if capacity > 0 else 0.0


class InferenceChannel(Protocol):
    """One pipeline's way into a shared model (in-process engine or inference service)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> ChannelState: ...

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        """Queue one batch (an entry per source, None without a frame). ``on_done`` is called
        once, on another thread, with one prediction dict per frame or an exception; the
        calls of one channel come in submission order. Frames stay valid until then."""

    def close(self) -> None:
        """Stop: queued submits fail, running ones finish and are delivered (idempotent)."""


class Inference(Protocol):
    """Where a pipeline's model runs: an :class:`InferenceEngine`, the process's shared
    engines (:func:`local_engine`) or an inference service (``RemoteInference``)."""

    def open_channel(self, spec: ModelSpec, name: str) -> InferenceChannel: ...


def predictions_to_wire(model: LoadedModel, frame: Frame, result: FrameResult) -> dict[str, Any]:
    """One frame's predictions in the reference's shape (see
    :func:`~framepipe.core.processing.predictions.prediction_to_wire`, their one home)."""
    from framepipe.core.processing.predictions import prediction_to_wire

    del frame  # the source size is the result's (its plan's)
    return prediction_to_wire(result, model.class_names, model.keypoint_names)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_image(image: object, index: int) -> Frame:
    if isinstance(image, YuvFrame):
        return image
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
    ):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise InvalidPayloadError(
            f"frame of source {index}: expected BGR uint8 HxWx3 or a YuvFrame, got {got}"
        )
    return image


@dataclass(eq=False, slots=True)
class _Job:
    """One submit: its frames, their outputs as they finish, and the caller's callback."""

    channel: _Channel
    frames: list[SubmittedFrame | None]
    on_done: OnDone
    outputs: Outputs
    size: int  # frames that are not None
    remaining: int  # frames not finished yet (run, failed or dropped)
    error: BaseException | None = None
    done: bool = False


@dataclass(eq=False, slots=True)
class _Channel:
    name: str
    options: DecodeOptions
    max_in_flight: int
    wake: threading.Condition  # shares the engine's lock
    jobs: deque[_Job] = field(default_factory=deque)  # submission order, until delivered
    queued: deque[tuple[_Job, int]] = field(default_factory=deque)  # frames for the runners
    running: int = 0
    undelivered: int = 0  # frames of finished submits whose on_done has not returned
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    frames: int = 0
    closed: bool = False
    deliverer: threading.Thread | None = None

    def eligible(self) -> bool:
        return bool(self.queued) and self.running + self.undelivered < self.max_in_flight


class EngineChannel:
    """One pipeline on an :class:`InferenceEngine` (see :class:`InferenceChannel`)."""

    def __init__(self, engine: InferenceEngine, state: _Channel, spec: ModelSpec) -> None:
        self._engine = engine
        self._state = state
        self.spec = spec

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def state(self) -> ChannelState:
        return self._engine._channel_state(self._state)

    def statistics(self) -> ChannelStatistics:
        with self._engine._lock:
            return self._engine._channel_statistics(self._state)

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        self._engine._submit(self._state, frames, on_done)

    def close(self) -> None:
        self._engine._close_channel(self._state)

    def __enter__(self) -> EngineChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InferenceEngine:
    """One model session, K runner threads, fair per-channel scheduling (module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        providers: Sequence[str] | None = None,
        registry: ModelRegistry | None = None,
        options: EngineOptions | None = None,
        resolver: FrameResolver | None = None,
    ) -> None:
        from framepipe.core.processing.model import LoadedModel
        from framepipe.core.processing.runner import CPU

        if registry is None:
            registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
        options = options if options is not None else EngineOptions()
        self.model_name = model
        self.model = LoadedModel(registry.get(model), registry.settings, providers=providers)
        self.provider = self.model.runner.provider
        self.batching = options.batching if options.batching is not None else self.provider != CPU
        self.concurrency = options.concurrency or (2 if self.batching else _usable_cores())
        self.max_batch = options.max_batch if self.batching else 1
        self.max_wait_s = options.max_wait_s
        # One frame more than runners: a runner that finished a channel's frame takes the
        # channel's next one while the last is still being delivered (on a loaded machine the
        # delivery thread may wait for a core for milliseconds; the runner must not).
        self.max_in_flight = options.max_in_flight_per_channel or (
            self.max_batch if self.batching else self.concurrency + 1
        )
        self._resolver = resolver
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._channels: deque[_Channel] = deque()  # round-robin order
        self._closing = False
        self._queued = 0
        self._running = 0
        self._runs = 0
        self._frames = 0
        self._batch_sizes = [0] * self.max_batch
        self._busy_s = 0.0
        self._started = time.monotonic()
        self._runners = [
            threading.Thread(target=self._run_forever, name=f"infer-{model}-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for runner in self._runners:
            runner.start()

    # ---- channels -----------------------------------------------------------------------------

    def open_channel(self, spec: ModelSpec, name: str = "") -> EngineChannel:
        """A channel with ``spec``'s thresholds, class filter and top-k. The spec must name
        this engine's model and ask for a task it serves (InvalidPayloadError otherwise)."""
        if spec.model != self.model_name:
            raise InvalidPayloadError(
                f"pipeline {name!r} asks for model {spec.model!r}; this engine runs {self.model_name!r}"
            )
        from framepipe.core.processing.model import DecodeOptions
        from framepipe.core.processing.predictions import thresholds_for

        self.model.check_task(spec.task)
        options = DecodeOptions(thresholds_for(spec, self.model), spec.top_k)
        with self._lock:
            if self._closing:
                raise OperationError(f"the inference engine of {self.model_name!r} is closed")
            state = _Channel(name, options, self.max_in_flight, threading.Condition(self._lock))
            self._channels.append(state)
        state.deliverer = threading.Thread(
            target=self._deliver_forever, args=(state,), name=f"deliver-{name}", daemon=True
        )
        state.deliverer.start()
        return EngineChannel(self, state, spec)

    def _submit(
        self, ch: _Channel, frames: Sequence[SubmittedFrame | None], on_done: OnDone
    ) -> None:
        entries = list(frames)
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            if not isinstance(entry, SubmittedFrame):
                raise InvalidPayloadError(
                    f"source {i}: submit takes SubmittedFrame or None, got {type(entry).__name__}"
                )
            if entry.image is None and (entry.ref is None or self._resolver is None):
                raise InvalidPayloadError(
                    f"source {i}: a frame without pixels needs a ref and an engine with a resolver"
                )
        size = sum(e is not None for e in entries)
        job = _Job(ch, entries, on_done, [None] * len(entries), size, size)
        with self._lock:
            if ch.closed or self._closing:
                raise OperationError(f"inference channel {ch.name!r} is closed")
            ch.submitted += 1
            ch.jobs.append(job)
            if size == 0:
                job.done = True
                ch.wake.notify()
                return
            ch.queued.extend((job, i) for i, e in enumerate(entries) if e is not None)
            self._queued += size
            if size == 1:
                self._work.notify()
            else:
                self._work.notify_all()

    def _close_channel(self, ch: _Channel) -> None:
        with self._lock:
            if not ch.closed:
                ch.closed = True
                with contextlib.suppress(ValueError):
                    self._channels.remove(ch)
                self._drop_queued(ch, OperationError(f"inference channel {ch.name!r} was closed"))
                ch.wake.notify()
        self._join_deliverer(ch)

    def _join_deliverer(self, ch: _Channel) -> None:
        thread = ch.deliverer
        if thread is None or thread is threading.current_thread():
            return
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            log.warning(
                "inference channel %r: on_done did not return within %.0f s of close",
                ch.name,
                _JOIN_TIMEOUT_S,
            )

    def _drop_queued(self, ch: _Channel, error: BaseException) -> None:
        """Fail the frames of ``ch`` no runner took yet (lock held)."""
        while ch.queued:
            job, _ = ch.queued.popleft()
            self._queued -= 1
            if job.error is None:
                job.error = error
            self._frame_finished(job)

    # ---- scheduling (lock held) ---------------------------------------------------------------

    def _take(self, limit: int) -> list[tuple[_Job, int]]:
        """Up to ``limit`` frames, one per eligible channel per round-robin turn."""
        taken: list[tuple[_Job, int]] = []
        while len(taken) < limit:
            found = False
            for _ in range(len(self._channels)):
                ch = self._channels[0]
                self._channels.rotate(-1)
                if not ch.eligible():
                    continue
                job, index = ch.queued.popleft()
                self._queued -= 1
                if job.error is not None:  # another frame of this submit failed already
                    self._frame_finished(job)
                    found = True
                    break
                ch.running += 1
                self._running += 1
                taken.append((job, index))
                found = True
                break
            if not found:
                break
        return taken

    def _frame_finished(
        self, job: _Job, index: int | None = None, output: dict[str, Any] | None = None
    ) -> None:
        if index is not None:
            job.outputs[index] = output
        job.remaining -= 1
        if job.remaining == 0:
            job.done = True
            job.channel.undelivered += job.size
            job.channel.wake.notify()

    def _wait_for_work(self) -> list[tuple[_Job, int]]:
        with self._lock:
            while True:
                if self._closing:
                    return []
                taken = self._take(self.max_batch)
                if taken:
                    break
                self._work.wait()
            if self.batching and len(taken) < self.max_batch and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(taken) < self.max_batch and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                    taken.extend(self._take(self.max_batch - len(taken)))
            return taken

    # ---- runners ------------------------------------------------------------------------------

    def _run_forever(self) -> None:
        try:
            self.model.warmup()  # this thread's buffers, before the first real frame
        except Exception:
            log.exception("warm-up of %r failed", self.model_name)
        while True:
            taken = self._wait_for_work()
            if not taken:
                return
            started = time.monotonic()
            finished = self._run(taken)
            busy = time.monotonic() - started
            with self._lock:
                self._busy_s += busy
                for (job, index), (output, error) in zip(taken, finished, strict=True):
                    ch = job.channel
                    ch.running -= 1
                    self._running -= 1
                    if error is not None:
                        if job.error is None:
                            job.error = error
                    else:
                        ch.frames += 1
                    self._frame_finished(job, index, output)
                self._work.notify_all()  # channels may be eligible again

    def _run(
        self, taken: list[tuple[_Job, int]]
    ) -> list[tuple[dict[str, Any] | None, BaseException | None]]:
        """Read, run and decode ``taken`` (no lock held). One (output, error) per frame."""
        finished: list[tuple[dict[str, Any] | None, BaseException | None]] = [(None, None)] * len(
            taken
        )
        images: list[Frame] = []
        options: list[DecodeOptions | None] = []
        slots: list[int] = []  # indices into ``taken`` of the frames that go to the model
        held: list[FrameRef] = []
        try:
            for k, (job, index) in enumerate(taken):
                entry = job.frames[index]
                assert entry is not None
                try:
                    image = entry.image
                    if image is None:
                        assert entry.ref is not None and self._resolver is not None
                        image = self._resolver.acquire(entry.ref)
                        held.append(entry.ref)
                    images.append(_check_image(image, index))
                    options.append(job.channel.options)
                    slots.append(k)
                except Exception as exc:
                    finished[k] = (None, exc)
            if not images:
                return finished
            try:
                results = self.model.infer_frames(images, options)
            except Exception as exc:
                for k in slots:
                    finished[k] = (None, exc)
                return finished
            with self._lock:
                self._runs += 1
                self._frames += len(images)
                self._batch_sizes[min(len(images), self.max_batch) - 1] += 1
            for k, result in zip(slots, results, strict=True):
                job, index = taken[k]
                finished[k] = self._output(job.frames[index], index, result)
            return finished
        finally:
            if self._resolver is not None:
                for ref in held:
                    self._resolver.release(ref)

    def _output(
        self, entry: SubmittedFrame | None, index: int, result: FrameResult | None
    ) -> tuple[dict[str, Any] | None, BaseException | None]:
        assert entry is not None and result is not None
        ref = entry.ref
        # checked after the run: a slot that still holds the frame now held it all along
        if ref is not None and self._resolver is not None and not self._resolver.is_current(ref):
            return None, StaleFrameError(
                f"frame of source {index} (ring {ref.ring}, slot {ref.slot}, seq {ref.seq}) "
                "was overwritten while it was being read: its ring slot was reused"
            )
        from framepipe.core.processing.predictions import prediction_to_wire

        try:
            return prediction_to_wire(
                result, self.model.class_names, self.model.keypoint_names
            ), None
        except Exception as exc:
            return None, exc

    # ---- delivery -----------------------------------------------------------------------------

    def _deliver_forever(self, ch: _Channel) -> None:
        while True:
            with self._lock:
                while not (ch.jobs and ch.jobs[0].done):
                    if ch.closed and not ch.jobs:
                        return
                    ch.wake.wait()
                job = ch.jobs.popleft()
            outcome: Outputs | BaseException = job.error if job.error is not None else job.outputs
            try:
                job.on_done(outcome)
            except Exception:
                log.exception("on_done of inference channel %r raised", ch.name)
            with self._lock:
                ch.undelivered -= job.size
                if job.error is None:
                    ch.completed += 1
                else:
                    ch.failed += 1
                self._work.notify_all()

    # ---- statistics ---------------------------------------------------------------------------

    def _channel_statistics(self, ch: _Channel) -> ChannelStatistics:
        return ChannelStatistics(
            name=ch.name,
            submitted=ch.submitted,
            completed=ch.completed,
            failed=ch.failed,
            frames=ch.frames,
            queued=len(ch.queued),
            in_flight=ch.running + ch.undelivered,
            max_in_flight=ch.max_in_flight,
        )

    def _channel_state(self, ch: _Channel) -> ChannelState:
        with self._lock:
            return ChannelState(
                name=ch.name,
                connected=not self._closing,
                submitted=ch.submitted,
                completed=ch.completed,
                failed=ch.failed,
                in_flight=len(ch.jobs),
            )

    def statistics(self) -> EngineStatistics:
        with self._lock:
            return EngineStatistics(
                model=self.model_name,
                provider=self.provider,
                batching=self.batching,
                concurrency=self.concurrency,
                max_batch=self.max_batch,
                queue_depth=self._queued,
                in_flight=self._running,
                runs=self._runs,
                frames=self._frames,
                batch_sizes=tuple(self._batch_sizes),
                busy_s=self._busy_s,
                uptime_s=time.monotonic() - self._started,
                channels=tuple(self._channel_statistics(ch) for ch in self._channels),
            )

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Fail what is queued, let running frames finish and be delivered, stop (idempotent)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            channels = list(self._channels)
            self._channels.clear()
            error = OperationError(f"the inference engine of {self.model_name!r} was closed")
            for ch in channels:
                ch.closed = True
                self._drop_queued(ch, error)
                ch.wake.notify()
            self._work.notify_all()
        for runner in self._runners:
            if runner is not threading.current_thread():
                runner.join(_JOIN_TIMEOUT_S)
        for ch in channels:
            self._join_deliverer(ch)

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- one engine per (model, providers) in this process ------------------------------------------

_Key = tuple[str, tuple[str, ...] | None]  # (model, providers asked for; None: default)


class LocalChannel:
    """A channel on one of the process's shared engines; closing it gives the engine back
    (the engine closes with its last channel)."""

    def __init__(self, channel: EngineChannel, key: _Key, engines: _LocalEngines) -> None:
        self._channel = channel
        self._key = key
        self._engines = engines
        self._closed = False

    @property
    def name(self) -> str:
        return self._channel.name

    @property
    def state(self) -> ChannelState:
        return self._channel.state

    @property
    def engine(self) -> InferenceEngine:
        return self._channel._engine

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        self._channel.submit(frames, on_done)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._channel.close()
        finally:
            self._engines.release(self._key)

    def __enter__(self) -> LocalChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LocalEngines:
    """Engines by (model, resolved providers), each with its count of open channels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[_Key, tuple[InferenceEngine, int]] = {}

    def acquire(
        self, key: _Key, registry: ModelRegistry, options: EngineOptions | None
    ) -> InferenceEngine:
        with self._lock:  # loading under the lock: two pipelines never load one model twice
            engine, users = self._engines.get(key, (None, 0))
            if engine is None:
                engine = InferenceEngine(
                    key[0], providers=key[1], registry=registry, options=options
                )
            self._engines[key] = (engine, users + 1)
        return engine

    def release(self, key: _Key) -> None:
        with self._lock:
            engine, users = self._engines[key]
            if users > 1:
                self._engines[key] = (engine, users - 1)
                return
            del self._engines[key]
        engine.close()

    def engines(self) -> list[InferenceEngine]:
        with self._lock:
            return [engine for engine, _ in self._engines.values()]


_LOCAL_ENGINES = _LocalEngines()


class LocalInference:
    """The engines of this Python process, shared by (model, providers): an
    :class:`Inference` whose channels pick (or start) the engine their spec names."""

    def __init__(
        self, registry: ModelRegistry | None = None, options: EngineOptions | None = None
    ) -> None:
        self._registry = registry
        self._options = options

    def _key(self, spec: ModelSpec, registry: ModelRegistry) -> _Key:
        import onnxruntime as ort

        from framepipe.core.processing.runner import resolve_providers

        wanted = spec.providers if spec.providers is not None else registry.settings.providers
        if wanted is None:  # the default, kept as such: a GPU that is absent is no surprise then
            return spec.model, None
        return spec.model, tuple(resolve_providers(wanted, ort.get_available_providers()))

    def open_channel(self, spec: ModelSpec, name: str) -> LocalChannel:
        registry = self._registry
        if registry is None:
            registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
        key = self._key(spec, registry)
        engine = _LOCAL_ENGINES.acquire(key, registry, self._options)
        try:
            channel = engine.open_channel(spec, name)
        except BaseException:
            _LOCAL_ENGINES.release(key)
            raise
        return LocalChannel(channel, key, _LOCAL_ENGINES)

    def statistics(self) -> list[EngineStatistics]:
        """Every engine of this process that has a channel open."""
        return [engine.statistics() for engine in _LOCAL_ENGINES.engines()]


def local_engine(
    *, registry: ModelRegistry | None = None, options: EngineOptions | None = None
) -> LocalInference:
    """The in-process inference of this Python process: engines shared by every local
    pipeline on the same (model, providers), started on a pipeline's first channel with
    ``registry`` (default: the environment's) and ``options``, closed with its last one."""
    return LocalInference(registry, options)


if TYPE_CHECKING:  # mypy checks that both implement what a pipeline codes against

    def _backends(engine: InferenceEngine, local: LocalInference) -> list[Inference]:
        return [engine, local]
