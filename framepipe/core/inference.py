"""Inference engines: one model session shared by every pipeline that names the model.

A pipeline does not own a model. It opens a *channel* on an engine for the model its processor
needs (with its own thresholds), submits each batch's frames, and gets the predictions back
through a callback — per channel, in submission order. The frames stay leased by the pipeline
until the callback has run, so an engine reads them in place.

:func:`local_engine` gives the process-wide engine of a model (several local ``Pipeline``s share
one session); the stream manager runs engines in inference service processes, reached by the
same :class:`Inference` protocol.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from framepipe.core.processing.detections import detections_to_predictions
from framepipe.core.processing.model import FrameResult, LoadedModel
from framepipe.core.processing.postprocess import Thresholds
from framepipe.core.processing.registry import ModelRegistry, ModelTask, ProcessingSettings
from framepipe.core.processing.spec import ModelSpec
from framepipe.core.ring import FrameRef
from framepipe.protocol.errors import InvalidPayloadError, OperationError

__all__ = [
    "EngineChannel",
    "FrameRef",
    "Inference",
    "InferenceChannel",
    "InferenceEngine",
    "OnDone",
    "SubmittedFrame",
    "local_engine",
    "predictions_to_wire",
]

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
Predictions = dict[str, Any]
#: Called once per submitted batch: one prediction dict per frame (None where the frame was
#: None), or the exception that stopped the batch.
OnDone = Callable[[list[Predictions | None] | BaseException], None]


class SubmittedFrame(NamedTuple):
    """One frame of a batch: its pixels (in place) and where it is, for another process."""

    image: Frame
    ref: FrameRef | None = None


class InferenceChannel(Protocol):
    """One pipeline's way into an engine."""

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None: ...

    def close(self) -> None: ...


class Inference(Protocol):
    """Where a pipeline's model runs: an in-process engine or an inference service."""

    def open_channel(self, spec: ModelSpec, name: str) -> InferenceChannel: ...


def predictions_to_wire(model: LoadedModel, frame: Frame, result: FrameResult) -> Predictions:
    """One frame's predictions in the reference's shape."""
    out: dict[str, Any] = {"image": {"width": int(frame.shape[1]), "height": int(frame.shape[0])}}
    if result.classification is not None:
        names = model.class_names
        c = result.classification
        preds = [
            {
                "class": names[i] if i < len(names) else str(i),
                "class_id": int(i),
                "confidence": round(float(p), 4),
            }
            for i, p in zip(c.class_id.tolist(), c.confidence.tolist(), strict=True)
        ]
        out["predictions"] = preds
        out["top"] = preds[0]["class"]
        out["confidence"] = preds[0]["confidence"]
    else:
        assert result.detections is not None
        out["predictions"] = detections_to_predictions(
            result.detections, model.class_names, model.keypoint_names
        )
    return out


def _serves(model_task: ModelTask, asked: ModelTask | None) -> bool:
    """A model of ``model_task`` answers a request for ``asked``: any detector is an object
    detector (a face detector has one class)."""
    if asked is None or asked is model_task:
        return True
    return asked is ModelTask.OBJECT_DETECTION and model_task is ModelTask.FACE_DETECTION


@dataclass
class _Job:
    channel: EngineChannel
    frames: Sequence[SubmittedFrame | None]
    on_done: OnDone


class EngineChannel:
    """A pipeline's channel on an :class:`InferenceEngine` (its thresholds, its order)."""

    def __init__(self, engine: InferenceEngine, spec: ModelSpec, name: str) -> None:
        model = engine.model
        if not _serves(model.task, spec.task):
            raise InvalidPayloadError(
                f"model {spec.model!r} is a {model.task.value} model, not {spec.task.value if spec.task else '?'}"
            )
        self.engine = engine
        self.spec = spec
        self.name = name
        entry = model.entry
        class_filter = None if spec.class_filter is None else model.class_ids(spec.class_filter)
        self.thresholds = Thresholds(
            confidence=spec.confidence if spec.confidence is not None else entry.default_confidence,
            iou=spec.iou_threshold if spec.iou_threshold is not None else entry.default_iou,
            max_detections=spec.max_detections,
            class_filter=class_filter,
        )
        self.top_k = spec.top_k
        self.closed = False

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        if self.closed:
            raise OperationError(f"inference channel {self.name!r} is closed")
        self.engine._jobs.put(_Job(self, frames, on_done))

    def close(self) -> None:
        self.closed = True


class InferenceEngine:
    """One model session; channels' batches run one after another on a runner thread."""

    def __init__(
        self,
        model: str,
        *,
        providers: Sequence[str] | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        if registry is None:
            registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
        entry = registry.get(model)
        self.model = LoadedModel(entry, registry.settings, providers=providers)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._runner = threading.Thread(
            target=self._run, name=f"framepipe-engine-{model}", daemon=True
        )
        self._runner.start()

    def open_channel(self, spec: ModelSpec, name: str = "") -> EngineChannel:
        return EngineChannel(self, spec, name)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            channel = job.channel
            images = [None if f is None else f.image for f in job.frames]
            outcome: list[Predictions | None] | BaseException
            try:
                results = self.model.infer(images, channel.thresholds, channel.top_k)
                outcome = [
                    None
                    if image is None or result is None
                    else predictions_to_wire(self.model, image, result)
                    for image, result in zip(images, results, strict=True)
                ]
            except Exception as exc:
                outcome = exc
            try:
                job.on_done(outcome)
            except Exception:
                log.exception("an inference callback failed")

    def close(self) -> None:
        self._jobs.put(None)
        if self._runner is not threading.current_thread():
            self._runner.join(10.0)


_local: dict[tuple[str, tuple[str, ...] | None], tuple[InferenceEngine, int]] = {}
_local_lock = threading.Lock()


class _LocalInference:
    """The process-wide engines, by (model, providers): several local pipelines share one."""

    def open_channel(self, spec: ModelSpec, name: str) -> InferenceChannel:
        key = (spec.model, spec.providers)
        with _local_lock:
            engine, users = _local.get(key, (None, 0))
            if engine is None:
                engine = InferenceEngine(spec.model, providers=spec.providers)
            _local[key] = (engine, users + 1)
        try:
            channel = engine.open_channel(spec, name)
        except BaseException:
            _release(key)
            raise
        return _LocalChannel(channel, key)


class _LocalChannel:
    def __init__(self, channel: EngineChannel, key: tuple[str, tuple[str, ...] | None]) -> None:
        self._channel = channel
        self._key = key
        self._closed = False

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        self._channel.submit(frames, on_done)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._channel.close()
        _release(self._key)


def _release(key: tuple[str, tuple[str, ...] | None]) -> None:
    with _local_lock:
        engine, users = _local.get(key, (None, 0))
        if engine is None:
            return
        if users <= 1:
            del _local[key]
        else:
            _local[key] = (engine, users - 1)
            return
    engine.close()


def local_engine() -> Inference:
    """The in-process inference of this Python process (engines shared by model)."""
    return _LocalInference()
