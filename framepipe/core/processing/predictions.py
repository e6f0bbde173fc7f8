"""One frame's model results -> the reference's prediction dict, and a spec's thresholds.

Shared by every place that turns :class:`FrameResult` into what a client reads (the
in-process processors and the inference service), so the shape has one home::

    {"image": {"width": W, "height": H}, "predictions": [record, ...]}       # detections
    {"image": {...}, "predictions": [{"class", "class_id", "confidence"}, ...],
     "top": <best class>, "confidence": <its confidence>}                     # classification

Detection records are :func:`detections_to_predictions`'s (the reference's records; faces
carry ``keypoints``). The image size is the source frame's, taken from the result's plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from framepipe.core.processing.detections import detections_to_predictions
from framepipe.core.processing.model import FrameResult, LoadedModel
from framepipe.core.processing.postprocess import Thresholds
from framepipe.core.processing.spec import ModelSpec

__all__ = ["prediction_to_wire", "thresholds_for"]


def prediction_to_wire(
    result: FrameResult, class_names: Sequence[str], keypoint_names: Sequence[str] = ()
) -> dict[str, Any]:
    """The prediction dict of one frame (see the module docstring), JSON-able as it is."""
    plan = result.plan
    out: dict[str, Any] = {"image": {"width": int(plan.src_width), "height": int(plan.src_height)}}
    if result.classification is not None:
        c = result.classification
        preds = [
            {
                "class": class_names[i] if i < len(class_names) else str(i),
                "class_id": int(i),
                "confidence": round(float(p), 4),
            }
            for i, p in zip(c.class_id.tolist(), c.confidence.tolist(), strict=True)
        ]
        out["predictions"] = preds
        out["top"] = preds[0]["class"]
        out["confidence"] = preds[0]["confidence"]
    else:
        if result.detections is None:
            raise ValueError("a FrameResult holds detections or a classification, this holds none")
        out["predictions"] = detections_to_predictions(
            result.detections, class_names, keypoint_names
        )
    return out


def thresholds_for(spec: ModelSpec, model: LoadedModel) -> Thresholds:
    """The spec's thresholds, the model's defaults where the spec leaves them out; a class
    filter naming a class the model does not have is an InvalidPayloadError naming it."""
    entry = model.entry
    return Thresholds(
        confidence=spec.confidence if spec.confidence is not None else entry.default_confidence,
        iou=spec.iou_threshold if spec.iou_threshold is not None else entry.default_iou,
        max_detections=spec.max_detections,
        class_filter=None if spec.class_filter is None else model.class_ids(spec.class_filter),
    )
