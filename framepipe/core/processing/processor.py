"""Processors: a batch of frames (one per source) -> one JSON-able output dict per source.

``build_processor(spec, registry)`` turns a :data:`ProcessingSpec` into one of:

- :class:`PassthroughProcessor` — no model; ``{"frame_id", "source_id", "image": {...}}``;
- :class:`ModelProcessor` — ``{"image": {"width", "height"}, "predictions": [...]}``
  (detections: the reference's prediction records; classification adds ``top`` and
  ``confidence``);
- :class:`WorkflowProcessor` — the workflow subset: one dict keyed by the workflow's output
  names.

``process(frames, frames_metadata)`` reads the frames in place and keeps no reference to them.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from framepipe.core.processing.detections import detections_to_predictions
from framepipe.core.processing.model import FrameResult, LoadedModel
from framepipe.core.processing.postprocess import Thresholds
from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings
from framepipe.core.processing.spec import (
    ImageProperty,
    ModelSpec,
    PassthroughSpec,
    ProcessingSpec,
    PropertyStep,
    WorkflowSpec,
)
from framepipe.protocol.errors import InvalidPayloadError, OperationError

Frame = npt.NDArray[np.uint8]


class FrameMetadataLike(Protocol):
    @property
    def frame_id(self) -> int: ...


class Processor(ABC):
    """Turns one batch (a frame or None per source) into one output per source."""

    @abstractmethod
    def process(
        self, frames: Sequence[Frame | None], frames_metadata: Sequence[Any | None]
    ) -> list[dict[str, Any] | None]:
        """One JSON-able dict per source, None where the source had no frame."""

    def warmup(self) -> None:  # noqa: B027 (optional hook)
        """Make the first real frame as fast as the next ones (idempotent)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the model (idempotent)."""

    def __enter__(self) -> Processor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _image_size(frame: Frame) -> dict[str, int]:
    return {"width": int(frame.shape[1]), "height": int(frame.shape[0])}


def _check_lengths(frames: Sequence[Frame | None], frames_metadata: Sequence[Any | None]) -> None:
    if len(frames) != len(frames_metadata):
        raise InvalidPayloadError(
            f"{len(frames)} frames but {len(frames_metadata)} metadata entries"
        )


class PassthroughProcessor(Processor):
    """No model: frames flow and each output reports the frame's metadata."""

    def process(
        self, frames: Sequence[Frame | None], frames_metadata: Sequence[Any | None]
    ) -> list[dict[str, Any] | None]:
        _check_lengths(frames, frames_metadata)
        outputs: list[dict[str, Any] | None] = []
        for frame, meta in zip(frames, frames_metadata, strict=True):
            if frame is None:
                outputs.append(None)
                continue
            out: dict[str, Any] = {}
            if meta is not None:
                out["frame_id"] = getattr(meta, "frame_id", None)
                out["source_id"] = getattr(meta, "source_id", None)
            out["image"] = _image_size(frame)
            outputs.append(out)
        return outputs


class _ModelRunner:
    """A loaded model with the thresholds of one spec."""

    def __init__(self, spec: ModelSpec, registry: ModelRegistry) -> None:
        entry = registry.get(spec.model)
        self.model: LoadedModel | None = LoadedModel(
            entry, registry.settings, providers=spec.providers, task=spec.task
        )
        class_filter = (
            None if spec.class_filter is None else self.model.class_ids(spec.class_filter)
        )
        self.thresholds = Thresholds(
            confidence=spec.confidence if spec.confidence is not None else entry.default_confidence,
            iou=spec.iou_threshold if spec.iou_threshold is not None else entry.default_iou,
            max_detections=spec.max_detections,
            class_filter=class_filter,
        )
        self.top_k = spec.top_k

    def infer(self, frames: Sequence[Frame | None]) -> list[FrameResult | None]:
        if self.model is None:
            raise OperationError("the processor is closed")
        return self.model.infer(frames, self.thresholds, self.top_k)

    def to_wire(self, frame: Frame, result: FrameResult) -> dict[str, Any]:
        assert self.model is not None
        out: dict[str, Any] = {"image": _image_size(frame)}
        if result.classification is not None:
            names = self.model.class_names
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
                result.detections, self.model.class_names, self.model.keypoint_names
            )
        return out

    def warmup(self) -> None:
        if self.model is not None:
            self.model.warmup()

    def close(self) -> None:
        self.model = None


class ModelProcessor(Processor):
    """One registered model; outputs in the reference's prediction shape."""

    def __init__(self, spec: ModelSpec, registry: ModelRegistry) -> None:
        self.spec = spec
        self._runner = _ModelRunner(spec, registry)

    @property
    def model(self) -> LoadedModel:
        if self._runner.model is None:
            raise OperationError("the processor is closed")
        return self._runner.model

    def process(
        self, frames: Sequence[Frame | None], frames_metadata: Sequence[Any | None]
    ) -> list[dict[str, Any] | None]:
        _check_lengths(frames, frames_metadata)
        results = self._runner.infer(frames)
        return [
            None if frame is None or result is None else self._runner.to_wire(frame, result)
            for frame, result in zip(frames, results, strict=True)
        ]

    def warmup(self) -> None:
        self._runner.warmup()

    def close(self) -> None:
        self._runner.close()


def _image_property(frame: Frame, prop: ImageProperty) -> int | float:
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if prop is ImageProperty.SIZE:
        return h * w
    if prop is ImageProperty.WIDTH:
        return w
    if prop is ImageProperty.HEIGHT:
        return h
    return w / h if h else 0.0


def _jpeg_base64(frame: Frame) -> dict[str, str]:
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise InvalidPayloadError("the frame could not be JPEG-encoded")
    return {"type": "base64", "value": base64.b64encode(encoded.tobytes()).decode("ascii")}


class WorkflowProcessor(Processor):
    """The workflow subset: optional model step, image-property steps, JsonField outputs."""

    def __init__(self, spec: WorkflowSpec, registry: ModelRegistry) -> None:
        self.spec = spec
        step = spec.model_step
        self._model_step_name = step.name if step is not None else None
        self._runner = _ModelRunner(step.model, registry) if step is not None else None
        self._properties = {s.name: s.property for s in spec.steps if isinstance(s, PropertyStep)}

    def process(
        self, frames: Sequence[Frame | None], frames_metadata: Sequence[Any | None]
    ) -> list[dict[str, Any] | None]:
        _check_lengths(frames, frames_metadata)
        results: list[FrameResult | None] = [None] * len(frames)
        if self._runner is not None and any(
            o.step == self._model_step_name for o in self.spec.outputs
        ):
            results = self._runner.infer(frames)
        outputs: list[dict[str, Any] | None] = []
        for frame, result in zip(frames, results, strict=True):
            if frame is None:
                outputs.append(None)
                continue
            prediction = None
            if result is not None and self._runner is not None:
                prediction = self._runner.to_wire(frame, result)
            out: dict[str, Any] = {}
            for o in self.spec.outputs:
                if o.step is None:
                    out[o.name] = _jpeg_base64(frame)
                elif o.step == self._model_step_name:
                    out[o.name] = (
                        prediction if o.field == "predictions" else {"predictions": prediction}
                    )
                else:
                    value = _image_property(frame, self._properties[o.step])
                    out[o.name] = value if o.field == "output" else {"output": value}
            outputs.append(out)
        return outputs

    def warmup(self) -> None:
        if self._runner is not None:
            self._runner.warmup()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


def check_spec(spec: ProcessingSpec, registry: ModelRegistry) -> None:
    """Fail fast, without loading anything: every model the spec names is registered and on
    disk (for a manager that answers ``init`` before a worker loads the model)."""
    if isinstance(spec, ModelSpec):
        registry.get(spec.model)
    elif isinstance(spec, WorkflowSpec) and spec.model_step is not None:
        registry.get(spec.model_step.model.model)


def build_processor(spec: ProcessingSpec, registry: ModelRegistry | None = None) -> Processor:
    """A processor for ``spec``; models come from ``registry`` (by default the one the
    environment describes, read now: ``FRAMEPIPE_MODELS_DIR``, ``FRAMEPIPE_MODEL_CACHE``,
    ``FRAMEPIPE_INTRA_OP_THREADS``). The model is loaded and warmed up here."""
    if isinstance(spec, PassthroughSpec):
        return PassthroughProcessor()
    if registry is None:
        registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
    if isinstance(spec, ModelSpec):
        return ModelProcessor(spec, registry)
    if isinstance(spec, WorkflowSpec):
        return WorkflowProcessor(spec, registry)
    raise InvalidPayloadError(f"unknown processing spec {type(spec).__name__}")


__all__ = [
    "ModelProcessor",
    "PassthroughProcessor",
    "Processor",
    "WorkflowProcessor",
    "build_processor",
    "check_spec",
]
