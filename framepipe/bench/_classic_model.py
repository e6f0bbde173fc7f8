"""The classic baseline's model: what most Python video-inference services run per stream.

An ONNX Runtime session created as a user creates one (default session options: ORT picks its
thread count and spins), ``cv2.resize`` + ``cv2.copyMakeBorder`` + numpy normalisation into
fresh arrays, and — so that both architectures produce the same records from the same frame —
framepipe's own postprocessing (CenterFace / YOLO decoding, NMS, prediction records).
The geometry of the letterbox is taken from framepipe's ``ResizePlan``, which the decoders
need to map boxes back, so both sides resize to the same size and pad the same way.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.bench._threads import set_thread_name
from framepipe.core.processing import (
    ModelRegistry,
    ModelTask,
    ProcessingSettings,
    Thresholds,
    YoloFormat,
    classify_topk,
    decode_centerface,
    decode_yolo,
    detections_to_predictions,
    resolve_providers,
)
from framepipe.core.processing.model import CENTERFACE_OUTPUTS, DEFAULT_INPUT_SIDE
from framepipe.core.processing.postprocess import CENTERFACE_LANDMARKS, guess_yolo_format
from framepipe.ext._preprocess import ResizePlan


class ClassicModel:
    """One registered model with its own ONNX Runtime session (one per stream)."""

    def __init__(self, name: str) -> None:
        import onnxruntime as ort

        registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
        self.entry = entry = registry.get(name)
        providers = resolve_providers(None, ort.get_available_providers())
        # ORT's thread pool is created with the session: name it so its CPU counts as model CPU
        set_thread_name("bl-model")
        try:
            self.session = _session(ort, str(entry.path), providers)
        finally:
            set_thread_name("bl-infer")
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.fixed_hw = (
            (int(shape[2]), int(shape[3]))
            if isinstance(shape[2], int) and isinstance(shape[3], int)
            else None
        )
        self.dtype = np.float16 if "float16" in inputs[0].type else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        names = meta.get("names", "")
        self.labels: tuple[str, ...] = entry.labels or _parse_names(names)
        if entry.task is not None:
            self.task = entry.task
        elif outputs == list(CENTERFACE_OUTPUTS):
            self.task = ModelTask.FACE_DETECTION
        elif len(self.session.get_outputs()[0].shape) == 2:
            self.task = ModelTask.CLASSIFICATION
        else:
            self.task = ModelTask.OBJECT_DETECTION
        self.face_outputs = [
            outputs.index(n) if n in outputs else i for i, n in enumerate(CENTERFACE_OUTPUTS)
        ]
        self.thresholds = Thresholds(
            confidence=entry.default_confidence, iou=entry.default_iou, max_detections=300
        )
        norm = entry.normalisation
        self.scale = np.float32(norm.scale)
        self.mean = np.asarray(norm.mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(norm.std, np.float32).reshape(3, 1, 1)
        self._plans: dict[tuple[int, int], ResizePlan] = {}

    def input_hw(self, src_height: int, src_width: int) -> tuple[int, int]:
        """The model's input size for this frame size (the same rule as framepipe's)."""
        if self.fixed_hw is not None:
            return self.fixed_hw
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

    def plan(self, height: int, width: int) -> ResizePlan:
        plan = self._plans.get((height, width))
        if plan is None:
            dst_h, dst_w = self.input_hw(height, width)
            plan = ResizePlan(height, width, dst_h, dst_w, self.entry.letterbox)
            self._plans[(height, width)] = plan
        return plan

    def preprocess(self, frame: npt.NDArray[np.uint8], plan: ResizePlan) -> npt.NDArray[Any]:
        """cv2 + numpy, into fresh arrays, as the usual code does."""
        import cv2

        resized = cv2.resize(
            frame, (plan.new_width, plan.new_height), interpolation=cv2.INTER_LINEAR
        )
        pad = self.entry.pad_value
        padded = cv2.copyMakeBorder(
            resized,
            plan.pad_top,
            plan.dst_height - plan.new_height - plan.pad_top,
            plan.pad_left,
            plan.dst_width - plan.new_width - plan.pad_left,
            cv2.BORDER_CONSTANT,
            value=(pad, pad, pad),
        )
        if self.entry.normalisation.rgb:
            padded = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
        chw = padded.astype(np.float32).transpose(2, 0, 1) * self.scale
        chw = (chw - self.mean) / self.std
        return np.ascontiguousarray(chw[None], dtype=self.dtype)

    def process(self, frame: npt.NDArray[np.uint8]) -> tuple[dict[str, Any], int]:
        """The prediction record of one frame, and the CPU (ns) the calling thread spent
        inside ONNX Runtime's ``run`` (its pool threads are counted from the outside)."""
        height, width = frame.shape[:2]
        plan = self.plan(height, width)
        blob = self.preprocess(frame, plan)
        started = time.thread_time_ns()
        outputs = self.session.run(None, {self.input_name: blob})
        run_cpu_ns = time.thread_time_ns() - started
        out: dict[str, Any] = {"image": {"width": width, "height": height}}
        if self.task is ModelTask.CLASSIFICATION:
            result = classify_topk(outputs[0][0], 5)
            out["predictions"] = [
                {
                    "class": self.labels[i] if i < len(self.labels) else str(i),
                    "class_id": int(i),
                    "confidence": round(float(p), 4),
                }
                for i, p in zip(result.class_id.tolist(), result.confidence.tolist(), strict=True)
            ]
            return out, run_cpu_ns
        if self.task is ModelTask.FACE_DETECTION:
            hm, sc, of, lm = (outputs[k][0] for k in self.face_outputs)
            detections = decode_centerface(hm, sc, of, lm, plan, self.thresholds)
            keypoints: tuple[str, ...] = CENTERFACE_LANDMARKS
        else:
            raw = outputs[0]
            layout = (
                YoloFormat(self.entry.output_format)
                if self.entry.output_format
                else guess_yolo_format(raw.shape)
            )
            detections = decode_yolo(raw[0], layout, plan, self.thresholds)
            keypoints = ()
        out["predictions"] = detections_to_predictions(detections, self.labels, keypoints)
        return out, run_cpu_ns


def _session(ort: Any, path: str, providers: list[str]) -> Any:
    """A session with default options on the best provider that starts (a GPU build of ONNX
    Runtime on a machine without a GPU falls back to the CPU quietly, as framepipe does)."""
    if providers == ["CPUExecutionProvider"]:
        return ort.InferenceSession(path, providers=providers)
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(path, providers=providers)
    except Exception:
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)


def _parse_names(raw: str) -> tuple[str, ...]:
    from framepipe.core.processing.model import parse_names_metadata

    return parse_names_metadata(raw) if raw else ()
