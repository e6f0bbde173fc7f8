"""Frames -> predictions: fused preprocessing, ONNX Runtime, postprocessing, model registry.

Public surface::

    spec = processing_spec_from_wire({"type": "ModelConfiguration", "model": "centerface"})
    processor = build_processor(spec)        # what a pipeline makes of each batch
    processor.model                          # the ModelSpec it needs run (None: none)
    outputs = processor.compose(frames, frames_metadata, predictions)

Models run in inference engines (:mod:`framepipe.core.inference`), one per model, shared.
"""

# Names load on first use: the parts that need ONNX Runtime (model, runner) or OpenCV
# (annotate) are imported only by the processes that use them.

from typing import TYPE_CHECKING

from framepipe._lazy import lazy_getattr

if TYPE_CHECKING:
    from framepipe.core.processing.detections import Detections, detections_to_predictions
    from framepipe.core.processing.drawing import annotate
    from framepipe.core.processing.model import (
        DecodeOptions,
        FrameResult,
        LoadedModel,
        Preprocessor,
        serves_task,
    )
    from framepipe.core.processing.postprocess import (
        Classification,
        Thresholds,
        YoloFormat,
        classify_topk,
        decode_centerface,
        decode_yolo,
        nms,
    )
    from framepipe.core.processing.predictions import prediction_to_wire, thresholds_for
    from framepipe.core.processing.processor import (
        FrameTap,
        ModelProcessor,
        PassthroughProcessor,
        Processor,
        WorkflowProcessor,
        build_processor,
        check_spec,
    )
    from framepipe.core.processing.registry import (
        InputNormalisation,
        ModelEntry,
        ModelRegistry,
        ModelTask,
        ProcessingSettings,
    )
    from framepipe.core.processing.runner import OnnxRunner, resolve_providers
    from framepipe.core.processing.spec import (
        ModelSpec,
        ModelStep,
        PassthroughSpec,
        ProcessingSpec,
        PropertyStep,
        WorkflowOutput,
        WorkflowSpec,
        processing_spec_from_wire,
    )

_EXPORTS = {
    "Classification": "framepipe.core.processing.postprocess",
    "DecodeOptions": "framepipe.core.processing.model",
    "Detections": "framepipe.core.processing.detections",
    "FrameResult": "framepipe.core.processing.model",
    "FrameTap": "framepipe.core.processing.processor",
    "InputNormalisation": "framepipe.core.processing.registry",
    "LoadedModel": "framepipe.core.processing.model",
    "ModelEntry": "framepipe.core.processing.registry",
    "ModelProcessor": "framepipe.core.processing.processor",
    "ModelRegistry": "framepipe.core.processing.registry",
    "ModelSpec": "framepipe.core.processing.spec",
    "ModelStep": "framepipe.core.processing.spec",
    "ModelTask": "framepipe.core.processing.registry",
    "OnnxRunner": "framepipe.core.processing.runner",
    "PassthroughProcessor": "framepipe.core.processing.processor",
    "PassthroughSpec": "framepipe.core.processing.spec",
    "Preprocessor": "framepipe.core.processing.model",
    "ProcessingSettings": "framepipe.core.processing.registry",
    "ProcessingSpec": "framepipe.core.processing.spec",
    "Processor": "framepipe.core.processing.processor",
    "PropertyStep": "framepipe.core.processing.spec",
    "Thresholds": "framepipe.core.processing.postprocess",
    "WorkflowOutput": "framepipe.core.processing.spec",
    "WorkflowProcessor": "framepipe.core.processing.processor",
    "WorkflowSpec": "framepipe.core.processing.spec",
    "YoloFormat": "framepipe.core.processing.postprocess",
    "annotate": "framepipe.core.processing.drawing",
    "build_processor": "framepipe.core.processing.processor",
    "check_spec": "framepipe.core.processing.processor",
    "classify_topk": "framepipe.core.processing.postprocess",
    "decode_centerface": "framepipe.core.processing.postprocess",
    "decode_yolo": "framepipe.core.processing.postprocess",
    "detections_to_predictions": "framepipe.core.processing.detections",
    "nms": "framepipe.core.processing.postprocess",
    "prediction_to_wire": "framepipe.core.processing.predictions",
    "processing_spec_from_wire": "framepipe.core.processing.spec",
    "resolve_providers": "framepipe.core.processing.runner",
    "serves_task": "framepipe.core.processing.model",
    "thresholds_for": "framepipe.core.processing.predictions",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(_EXPORTS)


__all__ = [
    "Classification",
    "DecodeOptions",
    "Detections",
    "FrameResult",
    "FrameTap",
    "InputNormalisation",
    "LoadedModel",
    "ModelEntry",
    "ModelProcessor",
    "ModelRegistry",
    "ModelSpec",
    "ModelStep",
    "ModelTask",
    "OnnxRunner",
    "PassthroughProcessor",
    "PassthroughSpec",
    "Preprocessor",
    "ProcessingSettings",
    "ProcessingSpec",
    "Processor",
    "PropertyStep",
    "Thresholds",
    "WorkflowOutput",
    "WorkflowProcessor",
    "WorkflowSpec",
    "YoloFormat",
    "annotate",
    "build_processor",
    "check_spec",
    "classify_topk",
    "decode_centerface",
    "decode_yolo",
    "detections_to_predictions",
    "nms",
    "prediction_to_wire",
    "processing_spec_from_wire",
    "resolve_providers",
    "serves_task",
    "thresholds_for",
]
