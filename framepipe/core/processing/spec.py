"""``processing_configuration`` (the wire dict) -> a typed :data:`ProcessingSpec`.

Accepted forms::

    {"type": "ModelConfiguration", "model": "centerface", "task": "face-detection",
     "confidence": 0.5, "iou_threshold": 0.3, "max_detections": 100,
     "class_filter": ["face"], "providers": ["cuda", "cpu"]}
    {"type": "ModelConfiguration", "model": "passthrough"}
    {"type": "WorkflowConfiguration", "image_input_name": "image",
     "workflow_specification": {"version": "1.0", "inputs": [...], "steps": [...], "outputs": [...]}}

The workflow subset framepipe runs locally: at most one object-detection or classification
model step (``model_id`` is a registry name), any number of
``roboflow_core/property_definition@v1`` steps extracting an image property (size, width,
height, aspect_ratio), and ``JsonField`` outputs selecting ``$steps.<name>.<field>``,
``$steps.<name>.*`` or ``$inputs.<image>``. Anything else is an ``InvalidPayloadError``
naming the step or field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from framepipe.core.processing.registry import PASSTHROUGH, ModelTask
from framepipe.protocol.errors import InvalidPayloadError


@dataclass(frozen=True, slots=True)
class PassthroughSpec:
    """No model: frames flow and each output reports the frame's metadata."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One registered model; ``None`` thresholds take the model's defaults."""

    model: str
    task: ModelTask | None = None
    confidence: float | None = None
    iou_threshold: float | None = None
    max_detections: int = 300
    class_filter: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    top_k: int = 5


class ModelStepKind(StrEnum):
    OBJECT_DETECTION = "object-detection"
    CLASSIFICATION = "classification"


class ImageProperty(StrEnum):
    SIZE = "size"
    WIDTH = "width"
    HEIGHT = "height"
    ASPECT_RATIO = "aspect_ratio"


@dataclass(frozen=True, slots=True)
class ModelStep:
    name: str
    kind: ModelStepKind
    model: ModelSpec


@dataclass(frozen=True, slots=True)
class PropertyStep:
    name: str
    property: ImageProperty


WorkflowStep = ModelStep | PropertyStep


@dataclass(frozen=True, slots=True)
class WorkflowOutput:
    """A ``JsonField`` output: ``step`` is None for the input image itself; ``field`` is the
    selected step output (``"*"`` for all of them)."""

    name: str
    step: str | None
    field: str


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    steps: tuple[WorkflowStep, ...]
    outputs: tuple[WorkflowOutput, ...]
    image_input_name: str = "image"

    @property
    def model_step(self) -> ModelStep | None:
        return next((s for s in self.steps if isinstance(s, ModelStep)), None)


ProcessingSpec = PassthroughSpec | ModelSpec | WorkflowSpec

OBJECT_DETECTION_STEPS = frozenset(
    {
        "roboflow_core/roboflow_object_detection_model@v1",
        "roboflow_core/roboflow_object_detection_model@v2",
        "RoboflowObjectDetectionModel",
        "ObjectDetectionModel",
    }
)
CLASSIFICATION_STEPS = frozenset(
    {
        "roboflow_core/roboflow_classification_model@v1",
        "roboflow_core/roboflow_classification_model@v2",
        "RoboflowClassificationModel",
        "ClassificationModel",
    }
)
PROPERTY_STEPS = frozenset({"roboflow_core/property_definition@v1", "PropertyDefinition"})
MODEL_STEP_FIELDS = frozenset({"predictions", "*"})
PROPERTY_STEP_FIELDS = frozenset({"output", "*"})
_SELECTOR = re.compile(r"^\$(inputs|steps)\.([A-Za-z0-9_\-]+)(?:\.([A-Za-z0-9_\-]+|\*))?$")

_MISSING = object()


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    value = data.get(key, _MISSING)
    if value is _MISSING:
        raise InvalidPayloadError(f"{where}.{key} is required")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidPayloadError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _unit_float(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise InvalidPayloadError(f"{where} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _positive_int(value: Any, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPayloadError(f"{where} must be a positive integer, got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidPayloadError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def _model_spec(data: Mapping[str, Any], where: str, model_key: str) -> ModelSpec:
    model = _string(_require(data, model_key, where), f"{where}.{model_key}")
    task = data.get("task")
    return ModelSpec(
        model=model,
        task=ModelTask.parse(task, f"{where}.task") if isinstance(task, str) else None,
        confidence=_unit_float(data.get("confidence"), f"{where}.confidence"),
        iou_threshold=_unit_float(data.get("iou_threshold"), f"{where}.iou_threshold"),
        max_detections=_positive_int(data.get("max_detections"), f"{where}.max_detections", 300),
        class_filter=_strings(data.get("class_filter"), f"{where}.class_filter"),
        providers=_strings(data.get("providers"), f"{where}.providers"),
        top_k=_positive_int(data.get("top_k"), f"{where}.top_k", 5),
    )


def _model_configuration(data: Mapping[str, Any]) -> ProcessingSpec:
    where = "processing_configuration"
    if data.get("model") == PASSTHROUGH:
        return PassthroughSpec()
    if "task" in data and data["task"] is not None and not isinstance(data["task"], str):
        raise InvalidPayloadError(f"{where}.task must be a string, got {data['task']!r}")
    return _model_spec(data, where, "model")


def _image_selector(value: Any, where: str, image_input: str) -> None:
    if value != f"$inputs.{image_input}":
        raise InvalidPayloadError(
            f"{where} must be '$inputs.{image_input}' (the video frame), got {value!r}"
        )


def _step(raw: Any, index: int, image_input: str) -> WorkflowStep:
    where = f"workflow_specification.steps[{index}]"
    if not isinstance(raw, dict):
        raise InvalidPayloadError(f"{where} must be an object")
    step_type = raw.get("type")
    name = _string(_require(raw, "name", where), f"{where}.name")
    where = f"workflow step {name!r}"
    if step_type in OBJECT_DETECTION_STEPS or step_type in CLASSIFICATION_STEPS:
        image = raw.get("image", raw.get("images", _MISSING))
        if image is _MISSING:
            raise InvalidPayloadError(f"{where}.image is required")
        _image_selector(image, f"{where}.image", image_input)
        kind = (
            ModelStepKind.OBJECT_DETECTION
            if step_type in OBJECT_DETECTION_STEPS
            else ModelStepKind.CLASSIFICATION
        )
        spec = _model_spec(raw, where, "model_id")
        task = (
            ModelTask.OBJECT_DETECTION
            if kind is ModelStepKind.OBJECT_DETECTION
            else ModelTask.CLASSIFICATION
        )
        return ModelStep(name, kind, replace(spec, task=spec.task or task))
    if step_type in PROPERTY_STEPS:
        _image_selector(raw.get("data"), f"{where}.data", image_input)
        operations = raw.get("operations")
        if (
            not isinstance(operations, list)
            or len(operations) != 1
            or not isinstance(operations[0], dict)
        ):
            raise InvalidPayloadError(
                f"{where}.operations: framepipe supports exactly one ExtractImageProperty operation"
            )
        op = operations[0]
        if op.get("type") != "ExtractImageProperty":
            raise InvalidPayloadError(
                f"{where}.operations: operation {op.get('type')!r} is not supported (ExtractImageProperty only)"
            )
        try:
            prop = ImageProperty(str(op.get("property_name")))
        except ValueError:
            allowed = ", ".join(p.value for p in ImageProperty)
            raise InvalidPayloadError(
                f"{where}: image property {op.get('property_name')!r} is not supported ({allowed})"
            ) from None
        return PropertyStep(name, prop)
    raise InvalidPayloadError(
        f"workflow step {name!r} of type {step_type!r} is not supported by framepipe (it runs one local "
        "object-detection or classification model step and image-property steps)"
    )


def _output(
    raw: Any, index: int, steps: Mapping[str, WorkflowStep], image_input: str
) -> WorkflowOutput:
    where = f"workflow_specification.outputs[{index}]"
    if not isinstance(raw, dict):
        raise InvalidPayloadError(f"{where} must be an object")
    if raw.get("type", "JsonField") != "JsonField":
        raise InvalidPayloadError(
            f"{where}: output type {raw.get('type')!r} is not supported (JsonField only)"
        )
    name = _string(_require(raw, "name", where), f"{where}.name")
    selector = _string(_require(raw, "selector", where), f"{where}.selector")
    match = _SELECTOR.match(selector)
    if match is None:
        raise InvalidPayloadError(
            f"output {name!r}: selector {selector!r} is not '$steps.<step>.<field>' or '$inputs.<name>'"
        )
    kind, target, field = match.groups()
    if kind == "inputs":
        if target != image_input or field is not None:
            raise InvalidPayloadError(
                f"output {name!r}: input {selector!r} is not the image input '$inputs.{image_input}'"
            )
        return WorkflowOutput(name, None, "image")
    step = steps.get(target)
    if step is None:
        raise InvalidPayloadError(
            f"output {name!r}: selector {selector!r} names no step (steps: {', '.join(steps) or 'none'})"
        )
    allowed = MODEL_STEP_FIELDS if isinstance(step, ModelStep) else PROPERTY_STEP_FIELDS
    field = field or "*"
    if field not in allowed:
        raise InvalidPayloadError(
            f"output {name!r}: step {target!r} has no output {field!r} (one of: {', '.join(sorted(allowed))})"
        )
    return WorkflowOutput(name, target, field)


def _workflow_configuration(data: Mapping[str, Any]) -> WorkflowSpec:
    spec = data.get("workflow_specification")
    if spec is None:
        if data.get("workflow_id") is not None:
            raise InvalidPayloadError(
                "processing_configuration: framepipe runs an inline workflow_specification; "
                "workspace_name/workflow_id (fetched from Roboflow) are not supported"
            )
        raise InvalidPayloadError("processing_configuration.workflow_specification is required")
    if not isinstance(spec, dict):
        raise InvalidPayloadError(
            "processing_configuration.workflow_specification must be an object"
        )
    image_input = data.get("image_input_name") or "image"
    if not isinstance(image_input, str):
        raise InvalidPayloadError(
            f"processing_configuration.image_input_name must be a string, got {image_input!r}"
        )
    inputs = spec.get("inputs", [])
    if isinstance(inputs, list):
        image_inputs = [
            str(i.get("name"))
            for i in inputs
            if isinstance(i, dict) and i.get("type") in ("WorkflowImage", "InferenceImage")
        ]
        if image_inputs and image_input not in image_inputs:
            image_input = image_inputs[0]
    raw_steps = spec.get("steps", [])
    raw_outputs = spec.get("outputs", [])
    if not isinstance(raw_steps, list):
        raise InvalidPayloadError("workflow_specification.steps must be a list")
    if not isinstance(raw_outputs, list):
        raise InvalidPayloadError("workflow_specification.outputs must be a list")
    steps: dict[str, WorkflowStep] = {}
    for index, raw in enumerate(raw_steps):
        step = _step(raw, index, image_input)
        if step.name in steps:
            raise InvalidPayloadError(f"workflow step name {step.name!r} is used twice")
        steps[step.name] = step
    model_steps = [s.name for s in steps.values() if isinstance(s, ModelStep)]
    if len(model_steps) > 1:
        raise InvalidPayloadError(
            f"workflow steps {model_steps}: framepipe runs one model step per pipeline"
        )
    outputs = tuple(_output(raw, i, steps, image_input) for i, raw in enumerate(raw_outputs))
    return WorkflowSpec(tuple(steps.values()), outputs, image_input)


def processing_spec_from_wire(processing_configuration: Any) -> ProcessingSpec:
    """Parse the ``processing_configuration`` of an ``init`` request."""
    if not isinstance(processing_configuration, dict):
        raise InvalidPayloadError(
            f"processing_configuration must be an object, got {type(processing_configuration).__name__}"
        )
    kind = processing_configuration.get("type")
    if kind == "ModelConfiguration":
        return _model_configuration(processing_configuration)
    if kind == "WorkflowConfiguration":
        return _workflow_configuration(processing_configuration)
    raise InvalidPayloadError(
        f"processing_configuration.type {kind!r} is not supported (ModelConfiguration or WorkflowConfiguration)"
    )
