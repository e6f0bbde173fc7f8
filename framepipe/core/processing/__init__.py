"""Frames -> predictions: fused preprocessing, ONNX Runtime, postprocessing, model registry.

Public surface::

    spec = processing_spec_from_wire({"type": "ModelConfiguration", "model": "centerface"})
    with build_processor(spec, registry) as processor:
        outputs = processor.process(frames, frames_metadata)   # one dict | None per source
"""

from framepipe.core.processing.annotate import annotate
from framepipe.core.processing.detections import Detections, detections_to_predictions
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
