"""framepipe.ext._preprocess against the usual cv2 + numpy pipeline (the reference)."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.ext._preprocess import Normalisation, ResizePlan, preprocess_bgr, preprocess_yuv420


def reference(
    bgr: npt.NDArray[np.uint8],
    height: int,
    width: int,
    *,
    letterbox: bool = True,
    pad: float = 114.0,
    scale: float = 1 / 255,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    to_rgb: bool = True,
) -> npt.NDArray[np.float32]:
    """cv2.resize + copyMakeBorder + cvtColor + numpy normalise/transpose (Ultralytics sizes)."""
    h, w = bgr.shape[:2]
    if letterbox:
        r = min(height / h, width / w)
        nw, nh = max(1, min(width, round(w * r))), max(1, min(height, round(h * r)))
    else:
        nw, nh = width, height
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (height - nh) // 2, (width - nw) // 2
    padded = np.empty((height, width, 3), np.float32)
    padded[:] = pad
    padded[top : top + nh, left : left + nw] = resized
    if to_rgb:
        padded = padded[:, :, ::-1]
    out = (padded * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def tolerance(
    scale: float, std: tuple[float, float, float], ref: npt.NDArray[np.float32], half: bool
) -> float:
    # one grey level of the 8-bit reference (cv2 rounds its resized pixels), plus fp16 rounding
    tol = 1.0 * scale / min(abs(s) for s in std) + 1e-5
    if half:
        tol += float(np.abs(ref).max()) * 2.0**-10 + 1e-4
    return tol


sizes = st.integers(min_value=2, max_value=260)


@settings(max_examples=60, deadline=None)
@given(
    src_h=sizes,
    src_w=sizes,
    dst_h=st.integers(8, 200),
    dst_w=st.integers(8, 200),
    letterbox=st.booleans(),
    pad=st.integers(0, 255),
    half=st.booleans(),
    to_rgb=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_bgr_matches_cv2_numpy_reference(
    src_h: int,
    src_w: int,
    dst_h: int,
    dst_w: int,
    letterbox: bool,
    pad: int,
    half: bool,
    to_rgb: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
    mean, std, scale = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255
    plan = ResizePlan(src_h, src_w, dst_h, dst_w, letterbox)
    out = np.full((3, dst_h, dst_w), np.nan, np.float16 if half else np.float32)
    returned = preprocess_bgr(frame, out, plan, Normalisation(scale, mean, std, to_rgb, pad))
    ref = reference(
        frame,
        dst_h,
        dst_w,
        letterbox=letterbox,
        pad=pad,
        scale=scale,
        mean=mean,
        std=std,
        to_rgb=to_rgb,
    )
    assert returned is plan
    assert not np.isnan(out).any(), "every output element is written"
    diff = np.abs(out.astype(np.float32) - ref).max()
    assert diff <= tolerance(scale, std, ref, half), (plan, diff)


def test_letterbox_geometry_is_returned() -> None:
    plan = ResizePlan(1080, 1920, 640, 640, True)
    assert (plan.new_width, plan.new_height, plan.pad_left, plan.pad_top) == (640, 360, 0, 140)
    assert plan.ratio_x == pytest.approx(1 / 3) and plan.ratio_y == pytest.approx(1 / 3)
    stretched = ResizePlan(1080, 1920, 640, 640, False)
    assert (stretched.pad_left, stretched.pad_top) == (0, 0)
    assert stretched.ratio_y == pytest.approx(640 / 1080)


def test_any_strides_are_read_in_place() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (300, 500, 4), dtype=np.uint8)
    view = base[::-1, ::2, 2::-1]  # negative row stride, pixel stride 8, reversed channels
    out = np.empty((3, 128, 160), np.float32)
    plan = ResizePlan(view.shape[0], view.shape[1], 128, 160, True)
    preprocess_bgr(view, out, plan, Normalisation())
    ref = reference(np.ascontiguousarray(view), 128, 160)
    assert np.abs(out - ref).max() <= 1 / 255 + 1e-5


def test_writes_one_image_of_a_batch() -> None:
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (72, 128, 3), dtype=np.uint8) for _ in range(3)]
    batch = np.zeros((3, 3, 64, 64), np.float32)
    plan = ResizePlan(72, 128, 64, 64, True)
    norm = Normalisation()
    preprocess_bgr(frames[1], batch, plan, norm, batch_index=1)
    assert not batch[0].any() and not batch[2].any()
    preprocess_bgr(frames[2], batch, plan, norm, batch_index=2)
    for i in (1, 2):
        assert np.abs(batch[i] - reference(frames[i], 64, 64)).max() <= 1 / 255 + 1e-5


def test_padding_can_be_left_as_it_is() -> None:
    frame = np.full((50, 100, 3), 200, np.uint8)
    out = np.full((3, 64, 64), -7.0, np.float32)
    plan = ResizePlan(50, 100, 64, 64, True)
    preprocess_bgr(frame, out, plan, Normalisation(), fill_padding=False)
    assert (out[:, : plan.pad_top] == -7.0).all()
    content = out[:, plan.pad_top : plan.pad_top + plan.new_height]
    assert np.allclose(content, 200 / 255)


def _i420(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)


def _nv12(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    i420 = _i420(bgr)
    h, w = bgr.shape[:2]
    flat = i420.reshape(-1)
    chroma = (h // 2) * (w // 2)
    u, v = flat[h * w : h * w + chroma], flat[h * w + chroma :]
    nv12 = np.empty_like(i420)
    nv12[:h] = i420[:h]
    uv = nv12[h:].reshape(-1)
    uv[0::2], uv[1::2] = u, v
    return nv12


@settings(max_examples=30, deadline=None)
@given(
    half_h=st.integers(1, 100),
    half_w=st.integers(1, 120),
    dst=st.integers(16, 160),
    nv12=st.booleans(),
    letterbox=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_yuv420_matches_cv2_conversion_then_reference(
    half_h: int, half_w: int, dst: int, nv12: bool, letterbox: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    h, w = 2 * half_h, 2 * half_w
    # smooth content, as decoded video is: chroma subsampling makes noise meaningless
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    bgr = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    yuv = _nv12(bgr) if nv12 else _i420(bgr)
    decoded = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_NV12 if nv12 else cv2.COLOR_YUV2BGR_I420)
    plan = ResizePlan(h, w, dst, dst, letterbox)
    out = np.empty((1, 3, dst, dst), np.float32)
    preprocess_yuv420(yuv, out, plan, Normalisation(), nv12=nv12)
    ref = reference(decoded, dst, dst, letterbox=letterbox)
    # The kernel converts exactly as FFmpeg does (tests/unit/test_yuv_frames.py holds it to
    # that); cv2's BT.601 constants and rounding differ from FFmpeg's by up to three levels.
    assert np.abs(out[0] - ref).max() <= 4 / 255 + 1e-5


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: ResizePlan(0, 10, 10, 10), ValueError),
        (lambda: ResizePlan(10, 10, 10, -1), ValueError),
        (
            lambda: preprocess_bgr(
                np.zeros((10, 12, 3), np.uint8),
                np.zeros((3, 8, 8), np.float32),
                ResizePlan(10, 10, 8, 8),
                Normalisation(),
            ),
            ValueError,
        ),
        (
            lambda: preprocess_bgr(
                np.zeros((10, 10, 3), np.uint8),
                np.zeros((3, 8, 8), np.float64),
                ResizePlan(10, 10, 8, 8),
                Normalisation(),
            ),
            TypeError,
        ),
        (
            lambda: preprocess_bgr(
                np.zeros((10, 10, 3), np.uint8),
                np.zeros((2, 3, 8, 8), np.float32),
                ResizePlan(10, 10, 8, 8),
                Normalisation(),
                2,
            ),
            IndexError,
        ),
        (
            lambda: preprocess_bgr(
                np.zeros((10, 10, 3), np.uint8),
                np.zeros((3, 9, 8), np.float32),
                ResizePlan(10, 10, 8, 8),
                Normalisation(),
            ),
            ValueError,
        ),
        (
            lambda: preprocess_yuv420(
                np.zeros((15, 11), np.uint8),
                np.zeros((3, 8, 8), np.float32),
                ResizePlan(10, 11, 8, 8),
                Normalisation(),
            ),
            ValueError,
        ),
        (lambda: Normalisation(std=(1.0, 0.0, 1.0)), ValueError),
    ],
)
def test_bad_arguments_are_refused(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()  # type: ignore[operator]
