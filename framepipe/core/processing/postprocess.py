"""Model outputs -> detections: YOLO heads, class-aware NMS, CenterFace, classification top-k.

Everything is vectorised numpy over the candidates of one image; the only Python loop is the
greedy NMS over the boxes it keeps.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from framepipe.core.processing.detections import Detections, FloatArray, clip_boxes, unletterbox
from framepipe.ext._preprocess import ResizePlan


class YoloFormat(StrEnum):
    """Output layouts of the common YOLO exports."""

    V8 = "yolov8"  # [B, 4 + nc, N]: cx, cy, w, h, class scores (YOLOv8, YOLO11)
    V5 = "yolov5"  # [B, N, 5 + nc]: cx, cy, w, h, objectness, class scores
    END2END = "end2end"  # [B, N, 6]: x1, y1, x2, y2, score, class (NMS-free: YOLOv10, YOLO26)


@dataclass(frozen=True, slots=True)
class Thresholds:
    confidence: float
    iou: float
    max_detections: int
    class_filter: frozenset[int] | None = None  # class ids to keep; None keeps all


def guess_yolo_format(shape: tuple[int, ...]) -> YoloFormat:
    """The layout of a 3-D detection output from its shape (a sidecar may say it instead)."""
    if len(shape) != 3:
        raise ValueError(f"a YOLO detection output is 3-D [batch, a, b], got shape {shape}")
    _, a, b = shape
    if b == 6 and a <= 1000:
        return YoloFormat.END2END
    if a < b:
        return YoloFormat.V8
    return YoloFormat.V5


def nms(
    xyxy: FloatArray,
    scores: FloatArray,
    iou_threshold: float,
    class_id: npt.NDArray[np.int64] | None = None,
    max_detections: int = 300,
) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; class-aware when ``class_id`` is given (boxes of
    different classes never suppress each other). Returns kept indices, best first."""
    if xyxy.shape[0] == 0:
        return np.zeros((0,), np.intp)
    boxes = xyxy.astype(np.float32, copy=True)
    if class_id is not None:
        # shift each class to its own region of the plane: one pass handles every class
        span = float(boxes.max() - min(float(boxes.min()), 0.0)) + 1.0
        boxes += (class_id.astype(np.float32) * span)[:, None]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def _class_mask(
    class_id: npt.NDArray[np.int64], class_filter: Collection[int] | None
) -> npt.NDArray[np.bool_] | None:
    if class_filter is None:
        return None
    return np.isin(class_id, np.fromiter(class_filter, dtype=np.int64))


def decode_yolo(
    output: npt.NDArray[np.floating],
    fmt: YoloFormat,
    plan: ResizePlan,
    thresholds: Thresholds,
) -> Detections:
    """One image's raw YOLO output (the batch row, 2-D) -> detections in source pixels."""
    if output.ndim != 2:
        raise ValueError(f"expected one image's 2-D output, got shape {output.shape}")
    preds = output.T if fmt is YoloFormat.V8 else output
    preds = np.asarray(preds, dtype=np.float32)
    if fmt is YoloFormat.END2END:
        confidence = preds[:, 4]
        class_id = preds[:, 5].astype(np.int64)
        keep = confidence >= thresholds.confidence
        mask = _class_mask(class_id, thresholds.class_filter)
        if mask is not None:
            keep &= mask
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-confidence[idx], kind="stable")][: thresholds.max_detections]
        xyxy = preds[idx, :4].copy()
        confidence, class_id = confidence[idx], class_id[idx]
    else:
        if fmt is YoloFormat.V8:
            class_scores = preds[:, 4:]
            objectness = None
        else:
            class_scores = preds[:, 5:]
            objectness = preds[:, 4]
        if class_scores.shape[1] == 0:
            raise ValueError(f"the {fmt.value} output has no class columns (shape {output.shape})")
        # cheap first cut on the best class score before touching anything else
        best = class_scores.max(axis=1)
        if objectness is not None:
            best = best * objectness
        idx = np.flatnonzero(best >= thresholds.confidence)
        class_id = class_scores[idx].argmax(axis=1).astype(np.int64)
        confidence = best[idx]
        mask = _class_mask(class_id, thresholds.class_filter)
        if mask is not None:
            idx, class_id, confidence = idx[mask], class_id[mask], confidence[mask]
        cxcywh = preds[idx, :4]
        xyxy = np.empty_like(cxcywh)
        xyxy[:, :2] = cxcywh[:, :2] - cxcywh[:, 2:] / 2
        xyxy[:, 2:] = cxcywh[:, :2] + cxcywh[:, 2:] / 2
        keep_idx = nms(xyxy, confidence, thresholds.iou, class_id, thresholds.max_detections)
        xyxy, confidence, class_id = xyxy[keep_idx], confidence[keep_idx], class_id[keep_idx]
    unletterbox(xyxy, plan)
    clip_boxes(xyxy, plan.src_width, plan.src_height)
    return Detections(xyxy, confidence.astype(np.float32), class_id)


CENTERFACE_STRIDE = 4
CENTERFACE_LANDMARKS = ("left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner")


def decode_centerface(
    heatmap: npt.NDArray[np.floating],
    scale: npt.NDArray[np.floating],
    offset: npt.NDArray[np.floating],
    landmarks: npt.NDArray[np.floating],
    plan: ResizePlan,
    thresholds: Thresholds,
) -> Detections:
    """One image's CenterFace outputs (heatmap (1,h,w), scale (2,h,w), offset (2,h,w),
    landmarks (10,h,w) at 1/4 of the input) -> faces with 5 landmarks, in source pixels."""
    # flat indices: np.flatnonzero is ~10x cheaper than a 2-D np.nonzero on the whole map
    width = heatmap.shape[-1]
    hm = heatmap[0].reshape(-1)
    found = np.flatnonzero(hm > thresholds.confidence)
    if found.size == 0:
        return Detections.empty(len(CENTERFACE_LANDMARKS))
    ys, xs = np.divmod(found, width)
    in_h = float(plan.dst_height)
    in_w = float(plan.dst_width)
    score = hm[found].astype(np.float32)
    sc = scale.reshape(scale.shape[0], -1)[:, found].astype(np.float32)
    box_h = np.exp(sc[0]) * CENTERFACE_STRIDE
    box_w = np.exp(sc[1]) * CENTERFACE_STRIDE
    of = offset.reshape(offset.shape[0], -1)[:, found]
    cy = (ys + of[0] + 0.5) * CENTERFACE_STRIDE
    cx = (xs + of[1] + 0.5) * CENTERFACE_STRIDE
    x1 = np.clip(cx - box_w / 2, 0, in_w)
    y1 = np.clip(cy - box_h / 2, 0, in_h)
    xyxy = np.stack(
        [x1, y1, np.minimum(x1 + box_w, in_w), np.minimum(y1 + box_h, in_h)], axis=1
    ).astype(np.float32)
    # (10, n): y0, x0, y1, x1, ...
    lm = landmarks.reshape(landmarks.shape[0], -1)[:, found].astype(np.float32)
    points = np.empty((ys.size, len(CENTERFACE_LANDMARKS), 2), np.float32)
    points[:, :, 0] = (lm[1::2] * box_w + x1).T
    points[:, :, 1] = (lm[0::2] * box_h + y1).T
    keep = nms(xyxy, score, thresholds.iou, None, thresholds.max_detections)
    xyxy, score, points = xyxy[keep], score[keep], points[keep]
    unletterbox(xyxy, plan)
    clip_boxes(xyxy, plan.src_width, plan.src_height)
    unletterbox(points.reshape(-1, 2 * len(CENTERFACE_LANDMARKS)), plan)
    return Detections(xyxy, score, np.zeros((keep.size,), np.int64), points)


@dataclass(frozen=True, slots=True)
class Classification:
    class_id: npt.NDArray[np.int64]  # top-k, best first
    confidence: FloatArray


def classify_topk(scores: npt.NDArray[np.floating], k: int) -> Classification:
    """One image's class scores -> the top k. Logits (anything that is not already a
    probability vector) go through a softmax first."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    if s.size == 0:
        raise ValueError("the classification output has no classes")
    if s.min() < 0 or s.max() > 1 or abs(float(s.sum()) - 1.0) > 1e-3:
        e = np.exp(s - s.max())
        s = e / e.sum()
    k = max(1, min(k, s.size))
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.argsort(-s[top], kind="stable")]
    return Classification(top.astype(np.int64), s[top])
