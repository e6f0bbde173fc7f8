"""processing_configuration wire dicts -> typed specs, the registry, providers, processors."""

from __future__ import annotations

import base64
import gc
import json
import logging
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from framepipe.core.processing import (
    FrameTap,
    ModelRegistry,
    ModelSpec,
    ModelTask,
    PassthroughSpec,
    ProcessingSettings,
    WorkflowSpec,
    build_processor,
    check_spec,
    processing_spec_from_wire,
    resolve_providers,
)
from framepipe.core.processing.runner import CPU, CUDA, TENSORRT, OnnxRunner
from framepipe.protocol.errors import InvalidPayloadError
from tests.inference_helpers import process
from tests.unit.test_postprocess import FRAME, NAMES, constant_model, yolov8_output


def workflow(steps: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "WorkflowConfiguration",
        "workflow_specification": {
            "version": "1.0",
            "inputs": [{"type": "WorkflowImage", "name": "image"}],
            "steps": steps,
            "outputs": outputs,
        },
        "image_input_name": "image",
    }


DETECTION_STEP = {
    "type": "roboflow_core/roboflow_object_detection_model@v1",
    "name": "det",
    "image": "$inputs.image",
    "model_id": "toy8",
    "confidence": 0.5,
}
SIZE_STEP = {  # the reference's golden example
    "type": "roboflow_core/property_definition@v1",
    "name": "size",
    "data": "$inputs.image",
    "operations": [{"type": "ExtractImageProperty", "property_name": "size"}],
}


def test_model_configuration_and_passthrough() -> None:
    spec = processing_spec_from_wire(
        {
            "type": "ModelConfiguration",
            "model": "centerface",
            "task": "face-detection",
            "confidence": 0.6,
            "iou_threshold": 0.3,
            "max_detections": 10,
            "class_filter": ["face"],
            "providers": ["cpu"],
            "unknown_field": "ignored",
        }
    )
    assert spec == ModelSpec(
        "centerface", ModelTask.FACE_DETECTION, 0.6, 0.3, 10, ("face",), ("cpu",)
    )
    assert (
        processing_spec_from_wire({"type": "ModelConfiguration", "model": "passthrough"})
        == PassthroughSpec()
    )


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ([], "processing_configuration must be an object"),
        ({"type": "Nope"}, "'Nope'"),
        ({"type": "ModelConfiguration"}, "processing_configuration.model is required"),
        ({"type": "ModelConfiguration", "model": 3}, "processing_configuration.model"),
        ({"type": "ModelConfiguration", "model": "m", "confidence": 1.5}, "confidence"),
        ({"type": "ModelConfiguration", "model": "m", "iou_threshold": "x"}, "iou_threshold"),
        ({"type": "ModelConfiguration", "model": "m", "max_detections": 0}, "max_detections"),
        ({"type": "ModelConfiguration", "model": "m", "class_filter": "person"}, "class_filter"),
        ({"type": "ModelConfiguration", "model": "m", "task": "segmentation"}, "segmentation"),
        (
            {"type": "WorkflowConfiguration", "workspace_name": "ws", "workflow_id": "wf"},
            "workflow_id",
        ),
        (
            workflow([{"type": "no_such_block@v1", "name": "x"}], []),
            "workflow step 'x' of type 'no_such_block@v1'",
        ),
        (workflow([DETECTION_STEP, {**DETECTION_STEP, "name": "det2"}], []), "one model step"),
        (workflow([{**DETECTION_STEP, "image": "$inputs.other"}], []), "workflow step 'det'.image"),
        (
            workflow(
                [DETECTION_STEP],
                [{"type": "JsonField", "name": "o", "selector": "$steps.nope.predictions"}],
            ),
            "names no step",
        ),
        (
            workflow(
                [DETECTION_STEP],
                [{"type": "JsonField", "name": "o", "selector": "$steps.det.visualization"}],
            ),
            "no output 'visualization'",
        ),
        (
            workflow(
                [
                    {
                        **SIZE_STEP,
                        "operations": [{"type": "ExtractImageProperty", "property_name": "mode"}],
                    }
                ],
                [],
            ),
            "image property 'mode'",
        ),
    ],
)
def test_bad_payloads_name_what_is_wrong(payload: Any, named: str) -> None:
    with pytest.raises(InvalidPayloadError) as info:
        processing_spec_from_wire(payload)
    assert named in str(info.value)


def test_workflow_subset_is_parsed() -> None:
    spec = processing_spec_from_wire(
        workflow(
            [DETECTION_STEP, SIZE_STEP],
            [
                {"type": "JsonField", "name": "predictions", "selector": "$steps.det.predictions"},
                {"type": "JsonField", "name": "all", "selector": "$steps.det.*"},
                {"type": "JsonField", "name": "size", "selector": "$steps.size.output"},
            ],
        )
    )
    assert isinstance(spec, WorkflowSpec)
    assert spec.model_step is not None and spec.model_step.model.model == "toy8"
    assert spec.model_step.model.task is ModelTask.OBJECT_DETECTION
    assert [(o.name, o.step, o.field) for o in spec.outputs] == [
        ("predictions", "det", "predictions"),
        ("all", "det", "*"),
        ("size", "size", "output"),
    ]


def test_workflow_processor_outputs_by_name(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    spec = processing_spec_from_wire(
        workflow(
            [DETECTION_STEP, SIZE_STEP],
            [
                {"type": "JsonField", "name": "predictions", "selector": "$steps.det.predictions"},
                {"type": "JsonField", "name": "size", "selector": "$steps.size.output"},
                {"type": "JsonField", "name": "image", "selector": "$inputs.image"},
            ],
        )
    )
    registry = ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))
    outputs = process(spec, [FRAME, None], registry=registry)
    assert outputs[1] is None
    out = outputs[0]
    assert out is not None and set(out) == {"predictions", "size", "image"}
    assert out["size"] == 200 * 100  # as the reference: width x height
    assert [p["class"] for p in out["predictions"]["predictions"]] == ["person", "car", "dog"]
    assert out["predictions"]["image"] == {"width": 200, "height": 100}
    jpeg = base64.b64decode(out["image"]["value"])
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out["image"]["type"] == "base64" and decoded.shape == FRAME.shape
    json.dumps(outputs)  # JSON-able as it is


def test_passthrough_reports_frame_metadata_only() -> None:
    spec = processing_spec_from_wire({"type": "ModelConfiguration", "model": "passthrough"})
    processor = build_processor(spec)
    assert processor.model is None  # it never touches an inference engine
    meta = SimpleNamespace(frame_id=7, source_id=1)
    outputs = processor.compose([FRAME, None], [meta, None], None)
    assert outputs == [
        {"frame_id": 7, "source_id": 1, "image": {"width": 200, "height": 100}},
        None,
    ]


def test_processors_keep_no_reference_to_frames(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    registry = ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))
    for wire in (
        {"type": "ModelConfiguration", "model": "toy8"},
        {"type": "ModelConfiguration", "model": "passthrough"},
    ):
        frame = FRAME.copy()
        ref = weakref.ref(frame)
        process(processing_spec_from_wire(wire), [frame], registry=registry)
        del frame
        gc.collect()
        assert ref() is None, f"{wire['model']} kept the frame"


def test_registry_resolves_names_never_paths(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output())
    (tmp_path / "toy8.txt").write_text("person\ncar\ndog\n")
    (tmp_path / "not a name.onnx").write_bytes(b"")
    registry = ModelRegistry.from_settings(
        ProcessingSettings(models_dir=tmp_path, cache_dir=tmp_path / "cache")
    )
    assert registry.get("toy8").labels == ("person", "car", "dog")
    assert "toy8" in registry.names() and "centerface" not in registry.names()  # cache is empty
    for bad in ("../toy8", "/etc/passwd", str(tmp_path / "toy8.onnx"), "not a name"):
        with pytest.raises(InvalidPayloadError):
            registry.get(bad)
    with pytest.raises(InvalidPayloadError, match=r"run `framepipe models fetch centerface`"):
        registry.get("centerface")
    with pytest.raises(InvalidPayloadError, match="not registered"):
        registry.get("yolo-nope")


def test_sidecar_is_validated(tmp_path: Path) -> None:
    constant_model(tmp_path / "m.onnx", yolov8_output())
    (tmp_path / "m.json").write_text(
        json.dumps({"task": "object-detection", "labels_file": "../labels.txt"})
    )
    with pytest.raises(InvalidPayloadError, match="labels_file"):
        ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))
    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "input_size": [64, 64],
                "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            }
        )
    )
    entry = ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path)).get("m")
    assert entry.input_size == (64, 64) and entry.normalisation.std == (0.5, 0.5, 0.5)


def test_settings_from_environment() -> None:
    settings = ProcessingSettings.from_env(
        {
            "FRAMEPIPE_MODELS_DIR": "/models",
            "FRAMEPIPE_INTRA_OP_THREADS": "2",
            "FRAMEPIPE_PROVIDERS": "cuda, cpu",
        }
    )
    assert settings.models_dir == Path("/models") and settings.intra_op_threads == 2
    assert settings.providers == ("cuda", "cpu")
    with pytest.raises(InvalidPayloadError, match="FRAMEPIPE_INTRA_OP_THREADS"):
        ProcessingSettings.from_env({"FRAMEPIPE_INTRA_OP_THREADS": "many"})


def test_provider_order_and_aliases() -> None:
    everything = [TENSORRT, CUDA, CPU]
    assert resolve_providers(["cpu", "cuda", "tensorrt"], everything) == [TENSORRT, CUDA, CPU]
    assert resolve_providers(None, everything) == [CUDA, CPU]
    assert resolve_providers(["cuda"], [CPU]) == [CPU]
    with pytest.raises(InvalidPayloadError, match="quantum"):
        resolve_providers(["quantum"], everything)


def test_gpu_provider_that_cannot_start_falls_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    path = constant_model(tmp_path / "m.onnx", yolov8_output())
    with caplog.at_level(logging.WARNING, logger="framepipe.core.processing.runner"):
        runner = OnnxRunner(path, providers=["cuda", "cpu"])
    warnings = [r for r in caplog.records if r.name == "framepipe.core.processing.runner"]
    if runner.providers[0] == CUDA:
        assert warnings == []  # a working GPU: nothing to say
    else:
        assert runner.providers == [CPU]
        assert len(warnings) == 1 and "CPUExecutionProvider" in warnings[0].getMessage()
    out = runner.run(np.zeros((1, 3, 64, 64), np.float32))
    assert np.array_equal(out[0], yolov8_output())


def test_check_spec_fails_fast_on_unknown_models(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    registry = ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))
    check_spec(processing_spec_from_wire({"type": "ModelConfiguration", "model": "toy8"}), registry)
    check_spec(PassthroughSpec(), registry)
    with pytest.raises(InvalidPayloadError, match="'yolo-x' is not registered"):
        check_spec(
            processing_spec_from_wire({"type": "ModelConfiguration", "model": "yolo-x"}), registry
        )
    bad_step = {**DETECTION_STEP, "model_id": "nope"}
    with pytest.raises(InvalidPayloadError, match="'nope'"):
        check_spec(processing_spec_from_wire(workflow([bad_step], [])), registry)


def test_a_frame_tap_sees_each_frame_in_place_with_its_output() -> None:
    seen: list[tuple[int, dict[str, object] | None, object]] = []
    frames = [FRAME, None, FRAME[::2, ::2]]

    def on_frame(frame: np.ndarray, output: dict[str, object] | None, meta: object) -> None:
        seen.append((id(frame), output, meta))

    tap = FrameTap(build_processor(PassthroughSpec()), on_frame)
    assert tap.model is None
    metas = [
        SimpleNamespace(frame_id=1, source_id=0),
        None,
        SimpleNamespace(frame_id=1, source_id=2),
    ]
    outputs = tap.compose(frames, metas, None)
    assert [s[0] for s in seen] == [id(FRAME), id(frames[2])]  # the frames themselves, no copy
    assert [s[1] for s in seen] == [outputs[0], outputs[2]] and outputs[1] is None
    assert [s[2] for s in seen] == [metas[0], metas[2]]
