"""A loaded model: fused preprocessing into a reused input buffer -> ONNX Runtime -> decode.

Frames are read in place (ring-slot views) by the Cython pass and never kept: after
:meth:`LoadedModel.infer` returns, only typed results that own their arrays remain.

One :class:`LoadedModel` may serve several threads at once (the inference service runs K
concurrent single-frame runs on one session): input buffers, like the runner's output
buffers, belong to the calling thread, so each thread reuses its own and a steady state
allocates nothing; the plan cache is shared under a lock.
"""

from __future__ import annotations

import ast
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from framepipe.core.pixels import (
    ColourMatrix,
    ColourRange,
    FrameImage,
    PixelFormat,
    YuvFrame,
)
from framepipe.core.processing.detections import Detections
from framepipe.core.processing.postprocess import (
    CENTERFACE_LANDMARKS,
    Classification,
    Thresholds,
    YoloFormat,
    classify_topk,
    decode_centerface,
    decode_yolo,
    guess_yolo_format,
)
from framepipe.core.processing.registry import (
    InputNormalisation,
    ModelEntry,
    ModelTask,
    ProcessingSettings,
)
from framepipe.core.processing.runner import OnnxRunner
from framepipe.ext._preprocess import Normalisation, ResizePlan, preprocess_bgr, preprocess_yuv420
from framepipe.protocol.errors import InvalidPayloadError

CENTERFACE_OUTPUTS = ("heatmap", "scale", "offset", "landmarks")
DEFAULT_INPUT_SIDE = 640
_PLAN_CACHE = 16
_BUFFER_CACHE = 8  # model input sizes with a buffer kept, per thread


class Preprocessor:
    """Plans cached per (source shape, input shape), one normalisation, any output dtype."""

    def __init__(
        self, normalisation: InputNormalisation, *, letterbox: bool, pad_value: float
    ) -> None:
        self.letterbox = letterbox
        self.normalisation = Normalisation(
            normalisation.scale, normalisation.mean, normalisation.std, normalisation.rgb, pad_value
        )
        self._plans: OrderedDict[tuple[int, int, int, int], ResizePlan] = OrderedDict()
        self._lock = threading.Lock()  # plans are immutable; only the cache is shared state

    def plan(self, src_height: int, src_width: int, dst_height: int, dst_width: int) -> ResizePlan:
        key = (src_height, src_width, dst_height, dst_width)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = ResizePlan(src_height, src_width, dst_height, dst_width, self.letterbox)
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    def write(
        self,
        frame: FrameImage,
        out: npt.NDArray[np.floating],
        index: int,
        plan: ResizePlan,
        fill_padding: bool = True,
    ) -> ResizePlan:
        """One fused pass from the frame (BGR, or 4:2:0 in its slot with its range and
        matrix) into ``out[index]``."""
        if isinstance(frame, YuvFrame):
            layout = frame.layout
            return preprocess_yuv420(
                frame.data,
                out,
                plan,
                self.normalisation,
                index,
                nv12=layout.pixel_format is PixelFormat.NV12,
                fill_padding=fill_padding,
                full_range=layout.colour_range is ColourRange.FULL,
                bt709=layout.matrix is ColourMatrix.BT709,
            )
        return preprocess_bgr(frame, out, plan, self.normalisation, index, fill_padding)


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How one frame's raw outputs become results (per pipeline: one model, many settings)."""

    thresholds: Thresholds
    top_k: int = 5


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the model found in one frame (source pixels)."""

    plan: ResizePlan
    detections: Detections | None = None
    classification: Classification | None = None


def parse_names_metadata(raw: str) -> tuple[str, ...]:
    """Ultralytics ``names`` metadata: a Python dict literal ``{0: 'person', ...}``."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ()
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        size = max(value) + 1 if value else 0
        return tuple(str(value.get(i, i)) for i in range(size))
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return ()


class _ThreadBuffers(threading.local):
    """The input buffers of one calling thread — one per model input size, as large as the
    largest batch so far; a batch of n uses its first n images — and which plan last filled
    the padding of each image."""

    def __init__(self) -> None:
        self.inputs: OrderedDict[tuple[int, int], npt.NDArray[np.floating]] = OrderedDict()
        self.padded: dict[tuple[int, int, int], ResizePlan] = {}  # (height, width, image)


def serves_task(model_task: ModelTask, requested: ModelTask | None) -> bool:
    """Whether a model of ``model_task`` answers a request for ``requested`` (None: anything).
    A face detector is an object detector with one class, so it serves object detection."""
    return (
        requested is None
        or requested is model_task
        or (requested is ModelTask.OBJECT_DETECTION and model_task is ModelTask.FACE_DETECTION)
    )


class LoadedModel:
    """One registry entry, loaded and warmed up; safe for concurrent :meth:`infer` calls."""

    def __init__(
        self,
        entry: ModelEntry,
        settings: ProcessingSettings,
        *,
        providers: Sequence[str] | None = None,
        task: ModelTask | None = None,
    ) -> None:
        self.entry = entry
        self.runner = OnnxRunner(
            entry.path,
            providers=providers if providers is not None else settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        meta = self.runner.metadata
        self.labels: tuple[str, ...] = entry.labels or parse_names_metadata(meta.get("names", ""))
        if entry.task is not None:
            self.task = entry.task
        elif task is ModelTask.OBJECT_DETECTION and self._centerface_outputs():
            self.task = ModelTask.FACE_DETECTION  # decoded as faces, served as detections
        else:
            self.task = task or self._task_from_model()
        self.check_task(task)
        self.yolo_format: YoloFormat | None = None
        if self.task is ModelTask.OBJECT_DETECTION:
            shape = self.runner.outputs[0].shape
            if entry.output_format is not None:
                self.yolo_format = YoloFormat(entry.output_format)
            elif len(shape) == 3 and all(isinstance(d, int) for d in shape[1:]):
                self.yolo_format = guess_yolo_format((1, int(shape[1]), int(shape[2])))  # type: ignore[arg-type]
            # else: decided from the first real output
        elif self.task is ModelTask.FACE_DETECTION:
            names = [o.name for o in self.runner.outputs]
            self._face_outputs = [
                names.index(n) if n in names else i for i, n in enumerate(CENTERFACE_OUTPUTS)
            ]
            if len(names) != 4:
                raise InvalidPayloadError(
                    f"model {entry.name!r}: a face detector needs 4 outputs (CenterFace), got {names}"
                )
        self.preprocessor = Preprocessor(
            entry.normalisation, letterbox=entry.letterbox, pad_value=entry.pad_value
        )
        self._buffers = _ThreadBuffers()
        self.warmup(720, 1280)

    def check_task(self, requested: ModelTask | None) -> None:
        """Raise InvalidPayloadError unless this model serves ``requested``."""
        if not serves_task(self.task, requested):
            assert requested is not None
            raise InvalidPayloadError(
                f"model {self.entry.name!r} is a {self.task.value} model, not {requested.value}"
            )

    def _task_from_model(self) -> ModelTask:
        meta_task = self.runner.metadata.get("task")
        if meta_task in ("detect", "object-detection"):
            return ModelTask.OBJECT_DETECTION
        if meta_task in ("classify", "classification"):
            return ModelTask.CLASSIFICATION
        outputs = self.runner.outputs
        if self._centerface_outputs():
            return ModelTask.FACE_DETECTION
        if len(outputs) == 1 and len(outputs[0].shape) == 2:
            return ModelTask.CLASSIFICATION
        if len(outputs) == 1 and len(outputs[0].shape) == 3:
            return ModelTask.OBJECT_DETECTION
        raise InvalidPayloadError(
            f"model {self.entry.name!r}: cannot tell its task from outputs "
            f'{[(o.name, o.shape) for o in outputs]}; add a sidecar {self.entry.name}.json with "task"'
        )

    def _centerface_outputs(self) -> bool:
        return [o.name for o in self.runner.outputs] == list(CENTERFACE_OUTPUTS)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.labels

    def class_ids(self, names: Sequence[str]) -> frozenset[int]:
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            raise InvalidPayloadError(
                f"class_filter: {unknown} not among the classes of model {self.entry.name!r}"
                f" ({', '.join(self.labels[:20])}{', ...' if len(self.labels) > 20 else ''})"
            )
        return frozenset(i for i, n in enumerate(self.labels) if n in names)

    def input_hw(self, src_height: int, src_width: int) -> tuple[int, int]:
        """The model input size for frames of this size."""
        fixed = self.runner.fixed_hw
        if fixed is not None:
            return fixed
        size = self.entry.input_size
        if isinstance(size, tuple):
            return size
        side = size or DEFAULT_INPUT_SIDE
        r = side / max(src_height, src_width)
        stride = self.entry.stride
        return (
            max(stride, math.ceil(src_height * r / stride) * stride),
            max(stride, math.ceil(src_width * r / stride) * stride),
        )

    def warmup(self, src_height: int = 720, src_width: int = 1280) -> None:
        h, w = self.input_hw(src_height, src_width)
        self.runner.warmup(h, w)

    def _buffer(self, batch: int, height: int, width: int) -> npt.NDArray[np.floating]:
        mine = self._buffers
        key = (height, width)
        buf = mine.inputs.get(key)
        if buf is None or buf.shape[0] < batch:
            buf = np.zeros((batch, 3, height, width), self.runner.input.dtype)
            mine.inputs[key] = buf
            mine.padded = {k: v for k, v in mine.padded.items() if k[:2] != key}
            if len(mine.inputs) > _BUFFER_CACHE:
                old_key, _ = mine.inputs.popitem(last=False)
                mine.padded = {k: v for k, v in mine.padded.items() if k[:2] != old_key}
        else:
            mine.inputs.move_to_end(key)
        return buf[:batch]  # the first images of a C-contiguous buffer: contiguous too

    def infer(
        self, frames: Sequence[FrameImage | None], thresholds: Thresholds, top_k: int = 5
    ) -> list[FrameResult | None]:
        """Results per frame (None where the frame is None). Frames that share a model input
        size are batched when the model takes a dynamic batch."""
        options = DecodeOptions(thresholds, top_k)
        return self.infer_frames(frames, [options] * len(frames))

    def infer_frames(
        self,
        frames: Sequence[FrameImage | None],
        options: Sequence[DecodeOptions | None],
    ) -> list[FrameResult | None]:
        """Like :meth:`infer`, with decode options per frame (frames of several pipelines in
        one batch, each pipeline with its own thresholds)."""
        if len(options) != len(frames):
            raise InvalidPayloadError(f"{len(frames)} frames but {len(options)} decode options")
        results: list[FrameResult | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            if frame is None:
                continue
            if not isinstance(frame, YuvFrame) and (
                frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8
            ):
                raise InvalidPayloadError(
                    f"frame {i}: expected BGR uint8 HxWx3, got {frame.dtype} {frame.shape}"
                )
            if options[i] is None:
                raise InvalidPayloadError(f"frame {i} has no decode options")
            groups.setdefault(self.input_hw(frame.shape[0], frame.shape[1]), []).append(i)
        fixed_batch = self.runner.fixed_batch
        for (dst_h, dst_w), indices in groups.items():
            chunk = fixed_batch or len(indices)
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                buf = self._buffer(fixed_batch or len(part), dst_h, dst_w)
                padded = self._buffers.padded  # after _buffer: a new buffer starts a new record
                plans: list[ResizePlan] = []
                for b, i in enumerate(part):
                    frame = frames[i]
                    assert frame is not None
                    plan = self.preprocessor.plan(frame.shape[0], frame.shape[1], dst_h, dst_w)
                    key = (dst_h, dst_w, b)
                    # the padding of a reused buffer is already there for the same plan
                    fill = padded.get(key) is not plan
                    self.preprocessor.write(frame, buf, b, plan, fill_padding=fill)
                    padded[key] = plan
                    plans.append(plan)
                outputs = self.runner.run(buf)
                for b, (i, plan) in enumerate(zip(part, plans, strict=True)):
                    option = options[i]
                    assert option is not None
                    results[i] = self._decode(outputs, b, plan, option.thresholds, option.top_k)
        return results

    def _decode(
        self,
        outputs: list[npt.NDArray[np.float32]],
        b: int,
        plan: ResizePlan,
        thresholds: Thresholds,
        top_k: int,
    ) -> FrameResult:
        if self.task is ModelTask.FACE_DETECTION:
            hm, sc, of, lm = (outputs[k][b] for k in self._face_outputs)
            return FrameResult(plan, detections=decode_centerface(hm, sc, of, lm, plan, thresholds))
        if self.task is ModelTask.CLASSIFICATION:
            return FrameResult(plan, classification=classify_topk(outputs[0][b], top_k))
        out = outputs[0]
        if out.ndim != 3:
            raise InvalidPayloadError(
                f"model {self.entry.name!r}: detection output has shape {out.shape}, expected 3-D"
            )
        if self.yolo_format is None:
            self.yolo_format = guess_yolo_format(out.shape)
        return FrameResult(plan, detections=decode_yolo(out[b], self.yolo_format, plan, thresholds))

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return CENTERFACE_LANDMARKS if self.task is ModelTask.FACE_DETECTION else ()
