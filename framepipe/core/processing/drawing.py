"""Draw predictions on a copy of a frame (for WebRTC and ``framepipe run --output``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

# a fixed palette (BGR) so a class keeps its colour from frame to frame
_PALETTE = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
    (147, 69, 52),
    (255, 115, 100),
    (236, 24, 0),
    (255, 56, 132),
    (133, 0, 82),
    (255, 56, 203),
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[class_id % len(_PALETTE)]


def annotate(
    frame: npt.NDArray[np.uint8],
    output: Mapping[str, Any] | None,
    *,
    thickness: int = 2,
    draw_labels: bool = True,
    draw_keypoints: bool = True,
) -> npt.NDArray[np.uint8]:
    """A copy of ``frame`` (BGR) with the boxes, labels and keypoints of one output dict in
    the reference's prediction shape. The frame itself is never modified."""
    canvas = frame.copy()
    if not output:
        return canvas
    predictions = output.get("predictions")
    if not isinstance(predictions, list):
        return canvas
    height, width = canvas.shape[:2]
    scale = max(0.4, min(width, height) / 1000.0)
    for pred in predictions:
        if not isinstance(pred, Mapping) or "width" not in pred:
            continue  # classification records carry no box
        cx, cy, w, h = (
            float(pred["x"]),
            float(pred["y"]),
            float(pred["width"]),
            float(pred["height"]),
        )
        x1, y1 = round(cx - w / 2), round(cy - h / 2)
        x2, y2 = round(cx + w / 2), round(cy + h / 2)
        colour = class_colour(int(pred.get("class_id", 0)))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if draw_labels:
            label = f"{pred.get('class', '')} {float(pred.get('confidence', 0.0)):.2f}"
            (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
            top = max(y1 - th - baseline - 2, 0)
            cv2.rectangle(canvas, (x1, top), (x1 + tw + 4, top + th + baseline + 2), colour, -1)
            cv2.putText(
                canvas,
                label,
                (x1 + 2, top + th + 1),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        if draw_keypoints:
            for point in pred.get("keypoints", ()) or ():
                centre = (round(float(point["x"])), round(float(point["y"])))
                cv2.circle(canvas, centre, max(2, thickness + 1), (0, 255, 255), -1, cv2.LINE_AA)
    return canvas
