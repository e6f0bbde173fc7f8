"""Processors: what a pipeline makes of each batch (one frame or None per video source).

A :class:`Processor` names the model it needs (``model``: a :class:`ModelSpec`, or None) and
composes the pipeline's outputs from the frames and that model's predictions. It never loads or
runs a model: models run in an inference engine shared by every pipeline that names them
(:mod:`framepipe.core.inference`), and a pipeline hands the engine's predictions to
:meth:`Processor.compose`. A processor without a model never touches an engine.

``build_processor(spec)`` turns a :data:`ProcessingSpec` into one of:

- :class:`PassthroughProcessor` — no model; ``{"frame_id", "source_id", "image": {...}}``;
- :class:`ModelProcessor` — the model's predictions as they are:
  ``{"image": {"width", "height"}, "predictions": [...]}`` (classification adds ``top`` and
  ``confidence``);
- :class:`WorkflowProcessor` — the workflow subset: one dict keyed by the workflow's output
  names (an image output is the frame as base64 JPEG with its ``video_metadata``).

``compose`` reads the frames in place and keeps no reference to them.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.core.pixels import FrameImage, as_bgr
from framepipe.core.processing.registry import PASSTHROUGH, ModelRegistry
from framepipe.core.processing.spec import (
    ImageProperty,
    ModelSpec,
    PassthroughSpec,
    ProcessingSpec,
    PropertyStep,
    WorkflowSpec,
)
from framepipe.protocol.errors import InvalidPayloadError

Frame = FrameImage  # a BGR array, or a 4:2:0 frame made BGR only where an output needs it
Output = dict[str, Any] | None
Predictions = dict[str, Any]


class Processor(ABC):
    """Turns one batch (a frame or None per source) and its model predictions into one output
    per source."""

    #: The model this processor needs predictions from (None: it needs none).
    model: ModelSpec | None = None
    #: Whether ``compose`` takes frames as they are in their ring (a 4:2:0
    #: :class:`~framepipe.core.pixels.YuvFrame` is read with ``as_bgr`` only where pixels
    #: are needed). A processor that leaves this False (user code) gets BGR arrays.
    reads_native_frames: bool = False
    #: Whether ``compose`` reads pixels at all. A processor that reads only the frames' size
    #: and metadata (passthrough) sets this False: its sources then write no pixels for a
    #: frame that no other consumer reads (the decoder decodes it, and copies nothing).
    reads_pixels: bool = True

    @abstractmethod
    def compose(
        self,
        frames: Sequence[Frame | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Predictions | None] | None,
    ) -> list[Output]:
        """One JSON-able dict per source, None where the source had no frame.

        ``predictions``: one per source from ``model`` (None where there was no frame), or None
        when the processor needs no model.
        """


def _image_size(frame: Frame) -> dict[str, int]:
    return {"width": int(frame.shape[1]), "height": int(frame.shape[0])}


def _check_lengths(
    frames: Sequence[Frame | None],
    frames_metadata: Sequence[Any | None],
    predictions: Sequence[Predictions | None] | None,
) -> None:
    if len(frames) != len(frames_metadata):
        raise InvalidPayloadError(
            f"{len(frames)} frames but {len(frames_metadata)} metadata entries"
        )
    if predictions is not None and len(predictions) != len(frames):
        raise InvalidPayloadError(f"{len(frames)} frames but {len(predictions)} predictions")


class PassthroughProcessor(Processor):
    """No model: frames flow and each output reports the frame's metadata and size."""

    reads_native_frames = True
    reads_pixels = False

    def compose(
        self,
        frames: Sequence[Frame | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Predictions | None] | None = None,
    ) -> list[Output]:
        _check_lengths(frames, frames_metadata, None)
        outputs: list[Output] = []
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


def _require_predictions(
    predictions: Sequence[Predictions | None] | None, model: ModelSpec
) -> Sequence[Predictions | None]:
    if predictions is None:
        raise InvalidPayloadError(f"no predictions of model {model.model!r} were given")
    return predictions


class ModelProcessor(Processor):
    """One registered model; outputs in the reference's prediction shape."""

    reads_native_frames = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model = spec

    def compose(
        self,
        frames: Sequence[Frame | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Predictions | None] | None,
    ) -> list[Output]:
        _check_lengths(frames, frames_metadata, predictions)
        found = _require_predictions(predictions, self.spec)
        return [
            None if frame is None or p is None else p
            for frame, p in zip(frames, found, strict=True)
        ]


def _image_property(frame: Frame, prop: ImageProperty) -> int | float:
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if prop is ImageProperty.SIZE:
        return h * w
    if prop is ImageProperty.WIDTH:
        return w
    if prop is ImageProperty.HEIGHT:
        return h
    return w / h if h else 0.0


def video_metadata(meta: Any) -> dict[str, Any]:
    """The reference's ``video_metadata`` of an image output."""
    timestamp = getattr(meta, "frame_timestamp", None)
    return {
        "video_identifier": str(getattr(meta, "source_id", 0)),
        "frame_number": int(getattr(meta, "frame_id", 0)),
        "frame_timestamp": timestamp.isoformat() if timestamp is not None else None,
        "fps": getattr(meta, "fps", None),
        "measured_fps": getattr(meta, "measured_fps", None),
        "comes_from_video_file": bool(getattr(meta, "comes_from_video_file", False)),
        "total_frames": getattr(meta, "total_frames", None),
    }


def _jpeg_base64(frame: Frame, meta: Any) -> dict[str, Any]:
    import cv2  # only pipelines with an image output need it

    ok, encoded = cv2.imencode(".jpg", as_bgr(frame), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise InvalidPayloadError("the frame could not be JPEG-encoded")
    image: dict[str, Any] = {
        "type": "base64",
        "value": base64.b64encode(encoded.tobytes()).decode("ascii"),
    }
    if meta is not None:
        image["video_metadata"] = video_metadata(meta)
    return image


class WorkflowProcessor(Processor):
    """The workflow subset: optional model step, image-property steps, JsonField outputs."""

    reads_native_frames = True

    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        step = spec.model_step
        self._model_step_name = step.name if step is not None else None
        if step is not None and any(o.step == step.name for o in spec.outputs):
            self.model = step.model  # only when an output selects it
        self._properties = {s.name: s.property for s in spec.steps if isinstance(s, PropertyStep)}

    def compose(
        self,
        frames: Sequence[Frame | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Predictions | None] | None,
    ) -> list[Output]:
        _check_lengths(frames, frames_metadata, predictions)
        if self.model is not None:
            found: Sequence[Predictions | None] = _require_predictions(predictions, self.model)
        else:
            found = [None] * len(frames)
        outputs: list[Output] = []
        for frame, meta, prediction in zip(frames, frames_metadata, found, strict=True):
            if frame is None:
                outputs.append(None)
                continue
            out: dict[str, Any] = {}
            for o in self.spec.outputs:
                if o.step is None:
                    out[o.name] = _jpeg_base64(frame, meta)
                elif o.step == self._model_step_name:
                    out[o.name] = (
                        prediction if o.field == "predictions" else {"predictions": prediction}
                    )
                else:
                    value = _image_property(frame, self._properties[o.step])
                    out[o.name] = value if o.field == "output" else {"output": value}
            outputs.append(out)
        return outputs


FrameCallback = Callable[[npt.NDArray[np.uint8], Output, Any], None]


class FrameTap(Processor):
    """Another processor, whose every frame is also shown to ``on_frame(frame, output,
    metadata)`` — in place, while it is still leased, right after its output was composed.

    For whoever needs the pixels of the frames as they pass (drawing the results on them for a
    return video track or a recording): ``frame`` is BGR (a 4:2:0 frame is converted, once
    for all of this frame's outputs) and valid only during the call, so a callee that keeps
    it copies it (``annotate`` draws on a copy).
    """

    def __init__(self, inner: Processor, on_frame: FrameCallback) -> None:
        self.inner = inner
        self.model = inner.model
        self.reads_native_frames = inner.reads_native_frames
        self.reads_pixels = True  # on_frame is shown every frame's pixels
        self._on_frame = on_frame

    def compose(
        self,
        frames: Sequence[Frame | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Predictions | None] | None,
    ) -> list[Output]:
        outputs = self.inner.compose(frames, frames_metadata, predictions)
        for frame, output, meta in zip(frames, outputs, frames_metadata, strict=True):
            if frame is not None:
                self._on_frame(as_bgr(frame), output, meta)
        return outputs


def check_spec(spec: ProcessingSpec, registry: ModelRegistry) -> None:
    """Fail fast, without loading anything: every model the spec names is registered and on
    disk (for a manager that answers ``init`` before the model is loaded)."""
    if isinstance(spec, ModelSpec):
        registry.get(spec.model)
    elif isinstance(spec, WorkflowSpec) and spec.model_step is not None:
        registry.get(spec.model_step.model.model)


def build_processor(spec: ProcessingSpec | str | None) -> Processor:
    """The processor for ``spec`` (a registered model's name is a :class:`ModelSpec`; None is
    passthrough). Nothing is loaded here."""
    if spec is None or isinstance(spec, PassthroughSpec):
        return PassthroughProcessor()
    if isinstance(spec, str):
        if spec == PASSTHROUGH:
            return PassthroughProcessor()
        return ModelProcessor(ModelSpec(model=spec))
    if isinstance(spec, ModelSpec):
        return ModelProcessor(spec)
    if isinstance(spec, WorkflowSpec):
        return WorkflowProcessor(spec)
    raise InvalidPayloadError(f"unknown processing spec {type(spec).__name__}")


__all__ = [
    "FrameTap",
    "ModelProcessor",
    "PassthroughProcessor",
    "Processor",
    "WorkflowProcessor",
    "build_processor",
    "check_spec",
    "video_metadata",
]
