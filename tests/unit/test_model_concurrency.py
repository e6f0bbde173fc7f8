"""One LoadedModel (one ONNX Runtime session) shared by concurrent threads, the wire shape of
predictions, and which tasks a model serves."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from framepipe.core.inference import predictions_to_wire
from framepipe.core.processing import (
    LoadedModel,
    ModelRegistry,
    ModelTask,
    ProcessingSettings,
    Thresholds,
    prediction_to_wire,
    processing_spec_from_wire,
    serves_task,
)
from framepipe.protocol.errors import InvalidPayloadError
from tests.inference_helpers import process
from tests.models import centerface_registry, demo_frames, without_ids
from tests.unit.test_postprocess import FRAME, NAMES, constant_model, yolov8_output

FACES = Thresholds(confidence=0.5, iou=0.3, max_detections=100)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return centerface_registry(providers=("cpu",))


@pytest.fixture(scope="module")
def centerface(registry: ModelRegistry) -> LoadedModel:
    return LoadedModel(registry.get("centerface"), registry.settings)


def wire(model: LoadedModel, frame: Any) -> dict[str, Any] | None:
    [result] = model.infer([frame], FACES)
    assert result is not None
    return without_ids(prediction_to_wire(result, model.class_names, model.keypoint_names))


def test_concurrent_threads_on_one_session_get_their_own_frames_answers(
    centerface: LoadedModel,
) -> None:
    # frames with the face in different places: a buffer shared between threads would hand
    # one thread the other's input or outputs
    frames = [demo_frames(120)[i] for i in (0, 60, 119)]
    expected = [wire(centerface, frame) for frame in frames]
    assert len({str(e) for e in expected}) == len(frames)
    mismatches: list[tuple[int, int]] = []
    start = threading.Barrier(len(frames))

    def hammer(k: int) -> None:
        start.wait()
        for n in range(12):
            if wire(centerface, frames[k]) != expected[k]:
                mismatches.append((k, n))

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(len(frames))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_a_thread_reuses_its_buffers(centerface: LoadedModel) -> None:
    frame = demo_frames(1)[0]
    centerface.runner.run(np.zeros((1, 3, 384, 640), np.float32))  # this shape's buffers
    first = centerface.runner.run(np.zeros((1, 3, 384, 640), np.float32))
    again = centerface.runner.run(np.zeros((1, 3, 384, 640), np.float32))
    assert all(a is b for a, b in zip(first, again, strict=True))  # no allocation
    other: list[Any] = []
    thread = threading.Thread(
        target=lambda: other.extend(centerface.runner.run(np.zeros((1, 3, 384, 640), np.float32)))
    )
    thread.start()
    thread.join()
    # another thread's run did not write into this thread's outputs
    assert not any(np.shares_memory(a, b) for a, b in zip(again, other, strict=True))
    assert wire(centerface, frame) is not None


def test_prediction_to_wire_is_the_references_shape(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    logits = np.asarray([[0.0, 3.0, 1.0]], np.float32)
    constant_model(tmp_path / "cls.onnx", logits, {"names": "{0: 'cat', 1: 'dog', 2: 'bird'}"})
    registry = ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))
    thresholds = Thresholds(0.5, 0.45, 300)
    detector = LoadedModel(registry.get("toy8"), registry.settings)
    [boxes] = detector.infer([FRAME], thresholds)
    assert boxes is not None
    out = prediction_to_wire(boxes, detector.class_names, detector.keypoint_names)
    assert set(out) == {"image", "predictions"} and out["image"] == {"width": 200, "height": 100}
    assert [p["class"] for p in out["predictions"]] == ["person", "car", "dog"]
    assert all(
        set(p) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}
        for p in out["predictions"]
    )
    assert without_ids(predictions_to_wire(detector, FRAME, boxes)) == without_ids(out)
    classifier = LoadedModel(registry.get("cls"), registry.settings)
    [top] = classifier.infer([FRAME], thresholds, top_k=2)
    assert top is not None
    out = prediction_to_wire(top, classifier.class_names)
    assert set(out) == {"image", "predictions", "top", "confidence"}
    assert out["top"] == "dog" and [p["class"] for p in out["predictions"]] == ["dog", "bird"]
    assert set(out["predictions"][0]) == {"class", "class_id", "confidence"}
    assert out["confidence"] == out["predictions"][0]["confidence"]


def test_a_face_detector_serves_object_detection_requests(registry: ModelRegistry) -> None:
    assert serves_task(ModelTask.FACE_DETECTION, ModelTask.OBJECT_DETECTION)
    assert not serves_task(ModelTask.OBJECT_DETECTION, ModelTask.FACE_DETECTION)
    assert not serves_task(ModelTask.FACE_DETECTION, ModelTask.CLASSIFICATION)
    entry = registry.get("centerface")
    model = LoadedModel(entry, registry.settings, task=ModelTask.OBJECT_DETECTION)
    assert model.task is ModelTask.FACE_DETECTION  # decoded as faces, with their landmarks
    out = wire(model, demo_frames(1)[0])
    assert out is not None and [p["class"] for p in out["predictions"]] == ["face"]
    with pytest.raises(InvalidPayloadError, match="face-detection model, not classification"):
        LoadedModel(entry, registry.settings, task=ModelTask.CLASSIFICATION)


def test_a_workflow_detection_step_runs_on_centerface(registry: ModelRegistry) -> None:
    step = {
        "type": "roboflow_core/roboflow_object_detection_model@v1",
        "name": "faces",
        "image": "$inputs.image",
        "model_id": "centerface",
    }
    spec = processing_spec_from_wire(
        {
            "type": "WorkflowConfiguration",
            "workflow_specification": {
                "version": "1.0",
                "inputs": [{"type": "WorkflowImage", "name": "image"}],
                "steps": [step],
                "outputs": [
                    {"type": "JsonField", "name": "out", "selector": "$steps.faces.predictions"}
                ],
            },
        }
    )
    [out] = process(spec, [demo_frames(1)[0]], registry=registry)
    assert out is not None and [p["class"] for p in out["out"]["predictions"]] == ["face"]


def test_batches_of_any_size_share_one_input_buffer_per_size(registry: ModelRegistry) -> None:
    model = LoadedModel(registry.get("centerface"), registry.settings)
    frames = demo_frames(4, step=40)
    alone = [wire(model, frame) for frame in frames]
    for n in (3, 1, 4, 2):
        results = model.infer(frames[:n], FACES)
        for k, result in enumerate(results):
            assert result is not None
            got = without_ids(prediction_to_wire(result, model.class_names, model.keypoint_names))
            assert got is not None and alone[k] is not None
            assert len(got["predictions"]) == len(alone[k]["predictions"])  # type: ignore[index]
    # one buffer for the 640x384 input, as large as the largest batch: no copy per batch size
    assert [buf.shape for buf in model._buffers.inputs.values()] == [(4, 3, 384, 640)]
