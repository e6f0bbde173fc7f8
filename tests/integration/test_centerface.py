"""The bundled CenterFace model on real images: the astronaut, and every frame of the demo video."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import skimage.data

from framepipe.core.inference import InferenceEngine
from framepipe.core.processing import (
    ModelRegistry,
    ProcessingSettings,
    annotate,
    processing_spec_from_wire,
)
from framepipe.data import demo_truth_path, demo_video_path
from tests.inference_helpers import process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    settings = ProcessingSettings()
    if not (settings.cache_dir / "centerface.onnx").is_file():
        # `make test` runs `make models` first; this covers a bare pytest run
        subprocess.run(
            [sys.executable, "-m", "framepipe", "models", "fetch"], check=True, timeout=300
        )
    return ModelRegistry.from_settings(settings)


Faces = Callable[[Sequence[npt.NDArray[np.uint8] | None]], list[dict[str, Any] | None]]


@pytest.fixture(scope="module")
def faces(registry: ModelRegistry) -> Iterator[Faces]:
    """CenterFace through an inference engine, one batch at a time."""
    spec = processing_spec_from_wire(
        {"type": "ModelConfiguration", "model": "centerface", "providers": ["cpu"]}
    )
    engine = InferenceEngine("centerface", providers=["cpu"], registry=registry)

    def run(frames: Sequence[npt.NDArray[np.uint8] | None]) -> list[dict[str, Any] | None]:
        return process(spec, frames, engine=engine)

    try:
        yield run
    finally:
        engine.close()


def corners(pred: dict[str, Any]) -> tuple[float, float, float, float]:
    x, y, w, h = pred["x"], pred["y"], pred["width"], pred["height"]
    return x - w / 2, y - h / 2, x + w / 2, y + h / 2


def iou(a: tuple[float, ...], b: tuple[float, ...] | list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_finds_the_astronauts_face(faces: Faces) -> None:
    image = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    [out] = faces([image])
    assert out is not None and out["image"] == {"width": 512, "height": 512}
    [face] = out["predictions"]
    assert face["class"] == "face" and face["confidence"] > 0.8
    assert iou(corners(face), (181, 58, 270, 178)) > 0.8
    points = {k["class"]: (k["x"], k["y"]) for k in face["keypoints"]}
    assert set(points) == {
        "left_eye",
        "right_eye",
        "nose",
        "left_mouth_corner",
        "right_mouth_corner",
    }
    assert (
        points["left_eye"][1] < points["nose"][1] < points["left_mouth_corner"][1]
    )  # eyes above nose above mouth
    x1, y1, x2, y2 = corners(face)
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in points.values())


def test_a_face_on_every_demo_frame_where_one_is_visible(faces: Faces) -> None:
    truth = json.loads(demo_truth_path().read_text())["per_frame"]
    capture = cv2.VideoCapture(str(demo_video_path()))
    frames_seen = 0
    misses: list[tuple[int, int, float]] = []
    false_alarms: list[int] = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            expected = truth[frames_seen]
            # two sources in one batch: the same frame and nothing
            out, empty = faces([frame, None])
            assert empty is None and out is not None
            boxes = [corners(p) for p in out["predictions"]]
            if expected["visible"] == "full":
                best = max((iou(b, expected["face"]) for b in boxes), default=0.0)
                if len(boxes) != 1 or best < 0.6:
                    misses.append((frames_seen, len(boxes), best))
            elif expected["visible"] == "none" and boxes:
                false_alarms.append(frames_seen)
            frames_seen += 1
    finally:
        capture.release()
    assert frames_seen == len(truth) == 200
    assert not misses, f"frames without exactly one matching face: {misses}"
    assert not false_alarms, f"faces reported on frames without one: {false_alarms}"


def test_annotation_draws_on_a_copy(faces: Faces) -> None:
    image: npt.NDArray[np.uint8] = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    before = image.copy()
    [out] = faces([image])
    drawn = annotate(image, out)
    assert np.array_equal(image, before), "the frame itself is untouched"
    changed = np.any(drawn != image, axis=2)
    x1, y1, x2, y2 = (round(v) for v in corners(out["predictions"][0]))  # type: ignore[index]
    assert (
        changed[y1 - 2 : y1 + 3, x1:x2].any() and changed[y2 - 2 : y2 + 3, x1:x2].any()
    )  # box edges
    assert not changed[400:, 400:].any()  # far from the face nothing is drawn
    assert np.array_equal(annotate(image, None), image)


def test_sources_batch_together_with_the_same_answers(faces: Faces) -> None:
    image = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    wide = cv2.resize(image, (1280, 720))
    [alone] = faces([wide])
    batch = faces([wide, image, None, wide[:, ::-1]])
    assert batch[2] is None and alone is not None
    for out in (batch[0], batch[1], batch[3]):
        assert out is not None and len(out["predictions"]) == 1
    assert batch[0] is not None
    a, b = alone["predictions"][0], batch[0]["predictions"][0]
    assert (a["x"], a["y"], a["width"], a["height"]) == pytest.approx(
        (b["x"], b["y"], b["width"], b["height"]), abs=0.05
    )
    mirrored = batch[3]["predictions"][0]  # type: ignore[index]
    assert mirrored["x"] == pytest.approx(1280 - a["x"], abs=6)


def test_converted_model_takes_any_size_and_batch(registry: ModelRegistry) -> None:
    import onnx
    import onnxruntime as ort

    path = registry.get("centerface").path
    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["input"] and not weights & {
        i.name for i in model.graph.input
    }
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["heatmap", "scale", "offset", "landmarks"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 32, 32), (2, 3, 96, 160)):
        outs = session.run(None, {"input": np.zeros(shape, np.float32)})
        n, _, h, w = shape
        assert [o.shape for o in outs] == [(n, c, h // 4, w // 4) for c in (1, 2, 2, 10)]
    license_file = path.with_name("centerface.LICENSE")
    assert (
        "MIT License" in license_file.read_text() and "Martin Drawitsch" in license_file.read_text()
    )


def test_native_yuv_frames_find_the_same_faces_as_bgr(faces: Faces) -> None:
    """The demo video decoded into 4:2:0 slots (PyAV, as the decode process stores it) and
    read by the fused pass finds, on every frame, the faces the BGR path finds (cv2 decode),
    each matched at IoU >= 0.9."""
    from framepipe.core.pixels import YuvFrame, wrap_slot
    from framepipe.core.sources.backends import BackendOptions, PyAVBackend
    from framepipe.core.sources.entities import SourceKind

    capture = cv2.VideoCapture(str(demo_video_path()))
    backend = PyAVBackend(str(demo_video_path()), SourceKind.FILE, BackendOptions())
    layout = backend.open().layout
    assert layout is not None and layout.is_yuv
    frames = 0
    unmatched: list[tuple[int, int, int, float]] = []
    try:
        while backend.grab():
            ok, bgr = capture.read()
            assert ok
            slot = np.empty(layout.slot_shape, np.uint8)
            backend.retrieve(slot)
            yuv = wrap_slot(slot, layout)
            assert isinstance(yuv, YuvFrame)
            ours, today = faces([yuv, bgr])
            assert ours is not None and today is not None
            new = [corners(p) for p in ours["predictions"]]
            old = [corners(p) for p in today["predictions"]]
            worst = min((max((iou(b, a) for a in new), default=0.0) for b in old), default=1.0)
            if len(new) != len(old) or worst < 0.9:
                unmatched.append((frames, len(new), len(old), worst))
            frames += 1
        assert not capture.read()[0]
    finally:
        capture.release()
        backend.close()
    assert frames == 200
    assert not unmatched, f"frames where the faces differ (frame, new, old, worst IoU): {unmatched}"
