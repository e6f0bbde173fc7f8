"""The bundled CenterFace model and the demo video's frames, for tests that run the real model."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from framepipe.core.processing import ModelRegistry, ProcessingSettings
from framepipe.data import demo_truth_path, demo_video_path

REPO = Path(__file__).resolve().parents[1]
Frame = npt.NDArray[np.uint8]


def centerface_registry(**settings: Any) -> ModelRegistry:
    """The registry with the bundled model, fetched first when a bare pytest run lacks it."""
    processing = ProcessingSettings(**settings)
    if not (processing.cache_dir / "centerface.onnx").is_file():
        subprocess.run(
            [sys.executable, "-m", "framepipe", "models", "fetch"], check=True, timeout=300
        )
    return ModelRegistry.from_settings(processing)


@cache
def _demo_frames(count: int, step: int) -> tuple[Frame, ...]:
    capture = cv2.VideoCapture(str(demo_video_path()))
    frames = []
    try:
        for index in range(count * step):
            ok, frame = capture.read()
            assert ok, f"cannot read frame {index} of {demo_video_path()}"
            if index % step == 0:
                frame.flags.writeable = False
                frames.append(frame)
    finally:
        capture.release()
    return tuple(frames)


def demo_frames(count: int = 200, step: int = 1) -> list[Frame]:
    """``count`` frames of the demo video (1280x720 BGR, read-only): frames 0, step, 2 step..."""
    return list(_demo_frames(count, step))


def demo_truth() -> list[dict[str, Any]]:
    """Per frame: ``{"frame", "face": [x1, y1, x2, y2], "visible": "full"|"partial"|"none"}``."""
    truth: list[dict[str, Any]] = json.loads(demo_truth_path().read_text())["per_frame"]
    return truth


def without_ids(output: dict[str, Any] | None) -> dict[str, Any] | None:
    """A prediction dict without its random ``detection_id``s, for comparing two runs."""
    if output is None:
        return None
    predictions = [
        {k: v for k, v in p.items() if k != "detection_id"} for p in output["predictions"]
    ]
    return {**output, "predictions": predictions}


def corners(prediction: dict[str, Any]) -> tuple[float, float, float, float]:
    x, y, w, h = prediction["x"], prediction["y"], prediction["width"], prediction["height"]
    return x - w / 2, y - h / 2, x + w / 2, y + h / 2


def iou(a: tuple[float, ...], b: tuple[float, ...] | list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
