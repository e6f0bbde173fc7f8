"""YOLO heads, NMS and classification, through real ONNX graphs whose outputs are known.

Each model is built with onnx.helper: its output is a Constant tensor (plus 0 x the input, so
the input is really consumed), so the expected boxes are exact; the models are registered
in a temporary models directory and driven through the public API (wire spec -> processor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from framepipe.core.processing import (
    ModelRegistry,
    ProcessingSettings,
    Thresholds,
    nms,
    processing_spec_from_wire,
)
from framepipe.core.processing.postprocess import classify_topk, guess_yolo_format
from framepipe.protocol.errors import InvalidPayloadError
from tests.inference_helpers import process

INPUT = 64  # model input side


def constant_model(
    path: Path,
    output: npt.NDArray[np.float32],
    metadata: dict[str, str] | None = None,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """An image model [1, 3, 64, 64] -> ``output`` (exactly)."""
    value = numpy_helper.from_array(output.astype(np.float32))
    const = helper.make_node("Constant", [], ["value"], value=value)
    cast = helper.make_node("Cast", ["images"], ["images32"], to=TensorProto.FLOAT)
    reduce = helper.make_node("ReduceMax", ["images32"], ["peak"], keepdims=0)
    zero = helper.make_node("Mul", ["peak", "zero"], ["nothing"])
    add = helper.make_node("Add", ["value", "nothing"], ["output0"])
    graph = helper.make_graph(
        [const, cast, reduce, zero, add],
        "constant",
        [helper.make_tensor_value_info("images", input_type, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def registry_with(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry.from_settings(ProcessingSettings(models_dir=tmp_path))


# A frame 200 wide, 100 high letterboxed into 64x64: ratio 0.32, content 64x32, 16 px pad on top.
FRAME = np.zeros((100, 200, 3), np.uint8)
RATIO, PAD_TOP = 0.32, 16


def to_source(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """Model-input corners -> the expected record's centre x, y, width, height in the frame."""
    sx1, sx2 = x1 / RATIO, x2 / RATIO
    sy1, sy2 = (y1 - PAD_TOP) / RATIO, (y2 - PAD_TOP) / RATIO
    return (sx1 + sx2) / 2, (sy1 + sy2) / 2, sx2 - sx1, sy2 - sy1


def assert_record(
    record: dict[str, Any], corners: tuple[float, float, float, float], cls: str, conf: float
) -> None:
    x, y, w, h = to_source(*corners)
    assert record["x"] == pytest.approx(x, abs=0.011)
    assert record["y"] == pytest.approx(y, abs=0.011)
    assert record["width"] == pytest.approx(w, abs=0.011)
    assert record["height"] == pytest.approx(h, abs=0.011)
    assert record["confidence"] == pytest.approx(conf, abs=1e-4)
    assert record["class"] == cls
    assert isinstance(record["detection_id"], str) and len(record["detection_id"]) == 36


NAMES = "{0: 'person', 1: 'car', 2: 'dog'}"


def yolov8_output() -> npt.NDArray[np.float32]:
    # columns: cx, cy, w, h, score(person), score(car), score(dog)
    rows = [
        [32, 32, 20, 10, 0.9, 0.1, 0.0],  # person A, best
        [33, 32, 20, 10, 0.8, 0.0, 0.0],  # person, overlaps A (IoU ~0.9): suppressed
        [33, 32, 20, 10, 0.0, 0.7, 0.0],  # car on the same spot: another class, kept
        [10, 40, 8, 8, 0.0, 0.0, 0.6],  # dog elsewhere, kept
        [50, 20, 6, 6, 0.3, 0.0, 0.0],  # below the 0.5 threshold
    ]
    rows += [[0, 0, 1, 1, 0.0, 0.0, 0.0]] * 95  # empty anchors, as a real head has thousands
    return np.asarray(rows, np.float32).T[None]  # [1, 4 + nc, N]


def test_yolov8_decode_nms_and_letterbox_back_mapping(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES, "task": "detect"})
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "toy8", "confidence": 0.5, "iou_threshold": 0.5}
    )
    [out] = process(spec, [FRAME], registry=registry_with(tmp_path))
    assert out is not None
    assert out["image"] == {"width": 200, "height": 100}
    preds = out["predictions"]
    assert [p["class"] for p in preds] == ["person", "car", "dog"]
    assert_record(preds[0], (22, 27, 42, 37), "person", 0.9)
    assert_record(preds[1], (23, 27, 43, 37), "car", 0.7)
    assert_record(preds[2], (6, 36, 14, 44), "dog", 0.6)
    assert [p["class_id"] for p in preds] == [0, 1, 2]


def test_float16_input_models_get_a_float16_buffer(tmp_path: Path) -> None:
    constant_model(
        tmp_path / "half.onnx", yolov8_output(), {"names": NAMES}, input_type=TensorProto.FLOAT16
    )
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "half", "confidence": 0.5}
    )
    [out] = process(spec, [FRAME], registry=registry_with(tmp_path))
    assert out is not None and [p["class"] for p in out["predictions"]] == ["person", "car", "dog"]
    assert_record(out["predictions"][0], (22, 27, 42, 37), "person", 0.9)


def test_class_filter_and_max_detections(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    registry = registry_with(tmp_path)
    spec = processing_spec_from_wire(
        {
            "type": "ModelConfiguration",
            "model": "toy8",
            "confidence": 0.5,
            "class_filter": ["dog", "car"],
        }
    )
    [out] = process(spec, [FRAME], registry=registry)
    assert out is not None and [p["class"] for p in out["predictions"]] == ["car", "dog"]
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "toy8", "confidence": 0.5, "max_detections": 1}
    )
    [out] = process(spec, [FRAME], registry=registry)
    assert out is not None and [p["class"] for p in out["predictions"]] == ["person"]
    bad = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "toy8", "class_filter": ["unicorn"]}
    )
    with pytest.raises(InvalidPayloadError, match="unicorn"):
        process(bad, [FRAME], registry=registry)


def test_yolov5_objectness_times_class_score(tmp_path: Path) -> None:
    rows = [
        [32, 32, 20, 10, 0.9, 0.2, 0.9],  # obj 0.9 x car 0.9 = 0.81
        [32, 32, 20, 10, 0.5, 0.9, 0.1],  # 0.45: below 0.5
        [12, 40, 4, 4, 1.0, 0.6, 0.0],  # person 0.6
    ]
    output = np.asarray(rows + [[0, 0, 1, 1, 0, 0, 0]] * 1200, np.float32)[None]  # [1, N, 5 + nc]
    constant_model(tmp_path / "toy5.onnx", output)
    (tmp_path / "toy5.json").write_text(
        json.dumps({"task": "object-detection", "labels": ["person", "car"]})
    )
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "toy5", "confidence": 0.5}
    )
    [out] = process(spec, [FRAME], registry=registry_with(tmp_path))
    assert out is not None
    preds = out["predictions"]
    assert [p["class"] for p in preds] == ["car", "person"]
    assert_record(preds[0], (22, 27, 42, 37), "car", 0.81)
    assert_record(preds[1], (10, 38, 14, 42), "person", 0.6)


def test_end2end_outputs_skip_nms(tmp_path: Path) -> None:
    rows = [
        [22, 27, 42, 37, 0.95, 2],
        [23, 27, 43, 37, 0.90, 2],  # overlapping, same class: an NMS-free head already decided
        [0, 16, 64, 48, 0.2, 0],  # below threshold
    ]
    constant_model(tmp_path / "e2e.onnx", np.asarray(rows, np.float32)[None], {"names": NAMES})
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "e2e", "confidence": 0.25}
    )
    [out] = process(spec, [FRAME], registry=registry_with(tmp_path))
    assert out is not None
    preds = out["predictions"]
    assert len(preds) == 2
    assert_record(preds[0], (22, 27, 42, 37), "dog", 0.95)
    assert_record(preds[1], (23, 27, 43, 37), "dog", 0.90)


def test_classification_top_k_from_logits(tmp_path: Path) -> None:
    logits = np.asarray([[0.0, 3.0, 1.0]], np.float32)
    constant_model(tmp_path / "cls.onnx", logits, {"names": "{0: 'cat', 1: 'dog', 2: 'bird'}"})
    spec = processing_spec_from_wire({"type": "ModelConfiguration", "model": "cls", "top_k": 2})
    [out] = process(spec, [FRAME], registry=registry_with(tmp_path))
    assert out is not None
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert out["top"] == "dog"
    assert [r["class"] for r in out["predictions"]] == ["dog", "bird"]
    assert out["confidence"] == pytest.approx(p[1], abs=1e-4)
    assert out["predictions"][1]["confidence"] == pytest.approx(p[2], abs=1e-4)


def test_nms_is_class_aware_and_greedy() -> None:
    boxes = np.asarray(
        [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32
    )
    scores = np.asarray([0.9, 0.95, 0.8, 0.5], np.float32)
    same = np.zeros(4, np.int64)
    assert nms(boxes, scores, 0.5, same).tolist() == [1, 3]
    classes = np.asarray([0, 0, 1, 0], np.int64)
    assert nms(boxes, scores, 0.5, classes).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.95, same).tolist() == [
        1,
        0,
        3,
    ]  # IoU 0.82 < 0.95 survives, 1.0 does not
    assert nms(boxes, scores, 0.5, classes, max_detections=2).tolist() == [1, 2]


def test_format_guess_and_topk_on_probabilities() -> None:
    assert guess_yolo_format((1, 84, 8400)).value == "yolov8"
    assert guess_yolo_format((1, 25200, 85)).value == "yolov5"
    assert guess_yolo_format((1, 300, 6)).value == "end2end"
    top = classify_topk(np.asarray([0.1, 0.7, 0.2], np.float32), 5)
    assert top.class_id.tolist() == [1, 2, 0]
    assert top.confidence.tolist() == pytest.approx([0.7, 0.2, 0.1])
    assert Thresholds(0.5, 0.5, 10).class_filter is None


def test_several_sources_of_different_sizes_in_one_batch(tmp_path: Path) -> None:
    constant_model(tmp_path / "toy8.onnx", yolov8_output(), {"names": NAMES})
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "toy8", "confidence": 0.5}
    )
    square = np.zeros((64, 64, 3), np.uint8)  # no letterbox: model coordinates are frame pixels
    outputs = process(spec, [FRAME, None, square, FRAME], registry=registry_with(tmp_path))
    first, missing, small, again = outputs
    assert missing is None and first is not None and small is not None and again is not None
    assert small["image"] == {"width": 64, "height": 64}
    person = small["predictions"][0]
    assert (person["x"], person["y"], person["width"], person["height"]) == (32.0, 32.0, 20.0, 10.0)
    strip = [{k: v for k, v in p.items() if k != "detection_id"} for p in first["predictions"]]
    assert strip == [
        {k: v for k, v in p.items() if k != "detection_id"} for p in again["predictions"]
    ]
    ids = [p["detection_id"] for o in (first, small, again) for p in o["predictions"]]
    assert len(set(ids)) == len(ids)  # every detection has its own id
