"""Typed detections and their wire form (the reference's prediction records)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.ext._preprocess import ResizePlan

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Detections:
    """N boxes in source-image pixels: corners ``xyxy`` (N, 4), ``confidence`` (N,),
    ``class_id`` (N,), optional ``keypoints`` (N, K, 2)."""

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray
    keypoints: FloatArray | None = None

    @staticmethod
    def empty(num_keypoints: int = 0) -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0, num_keypoints, 2), np.float32) if num_keypoints else None,
        )

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Detections:
        return Detections(
            self.xyxy[index],
            self.confidence[index],
            self.class_id[index],
            None if self.keypoints is None else self.keypoints[index],
        )


def unletterbox(xy: FloatArray, plan: ResizePlan) -> FloatArray:
    """Map model-input coordinates (..., 2k) of x, y pairs back to source pixels, in place."""
    xy[..., 0::2] = (xy[..., 0::2] - plan.pad_left) / plan.ratio_x
    xy[..., 1::2] = (xy[..., 1::2] - plan.pad_top) / plan.ratio_y
    return xy


def clip_boxes(xyxy: FloatArray, width: int, height: int) -> FloatArray:
    np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
    return xyxy


def detections_to_predictions(
    detections: Detections,
    class_names: Sequence[str],
    keypoint_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The reference's prediction records: centre x/y, width, height, confidence, class,
    class_id, detection_id (a uuid4 string); faces add ``keypoints`` in Roboflow's keypoint
    shape (x, y, confidence, class_id, class)."""
    xyxy = detections.xyxy.astype(np.float64)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2.0
    size = xyxy[:, 2:] - xyxy[:, :2]
    confidence = detections.confidence.astype(np.float64).tolist()
    class_ids = detections.class_id.tolist()
    cx, cy = centre[:, 0].tolist(), centre[:, 1].tolist()
    w, h = size[:, 0].tolist(), size[:, 1].tolist()
    records: list[dict[str, Any]] = []
    for i in range(len(detections)):
        cid = int(class_ids[i])
        record: dict[str, Any] = {
            "x": round(cx[i], 2),
            "y": round(cy[i], 2),
            "width": round(w[i], 2),
            "height": round(h[i], 2),
            "confidence": round(confidence[i], 4),
            "class": class_names[cid] if 0 <= cid < len(class_names) else str(cid),
            "class_id": cid,
            "detection_id": str(uuid.uuid4()),
        }
        if detections.keypoints is not None:
            points = detections.keypoints[i].astype(np.float64).tolist()
            record["keypoints"] = [
                {
                    "x": round(px, 2),
                    "y": round(py, 2),
                    "confidence": record["confidence"],
                    "class_id": k,
                    "class": keypoint_names[k] if k < len(keypoint_names) else str(k),
                }
                for k, (px, py) in enumerate(points)
            ]
        records.append(record)
    return records
