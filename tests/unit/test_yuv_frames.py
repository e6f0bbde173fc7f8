"""Frames in native 4:2:0: the fused preprocess and the on-demand BGR against FFmpeg's own
conversion (PyAV ``to_ndarray(format="bgr24")``), every size, range and matrix."""

from __future__ import annotations

import platform
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.core.pixels import (
    ColourMatrix,
    ColourRange,
    FrameLayout,
    PixelFormat,
    YuvFrame,
    as_bgr,
    wrap_slot,
)
from framepipe.core.ring import FrameRing
from framepipe.core.sources.backends import copy_planes, plan_conversion
from framepipe.ext._preprocess import Normalisation, ResizePlan, preprocess_yuv420, yuv420_to_bgr
from tests.unit.test_preprocess import reference

X86 = platform.machine().lower() in ("x86_64", "amd64")


def smooth_image(height: int, width: int, seed: int) -> npt.NDArray[np.uint8]:
    """Smooth colour content, as decoded video is (chroma subsampling makes noise moot)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def ffmpeg_frame(bgr: npt.NDArray[np.uint8], fmt: str, full: bool, bt709: bool) -> Any:
    """FFmpeg's 4:2:0 frame of ``bgr``, tagged with its range and matrix."""
    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(
        format=fmt,
        dst_colorspace="ITU709" if bt709 else "ITU601",
        dst_color_range="JPEG" if full else "MPEG",
    )


def slot_of(frame: Any) -> YuvFrame:
    conversion = plan_conversion(frame)
    assert conversion.convert_to is None
    data = np.empty(conversion.layout.nbytes, np.uint8)
    copy_planes(frame, conversion.layout, data)
    return YuvFrame(data, conversion.layout)


def per_channel_error(
    ours: npt.NDArray[np.float32], theirs: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """Worst channel's mean |Δ| and max |Δ|, on the 0-255 scale (CHW inputs)."""
    d = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) * 255.0
    return float(d.reshape(3, -1).mean(axis=1).max()), float(d.max())


@settings(max_examples=60, deadline=None)
@given(
    half_h=st.integers(1, 90),
    half_w=st.integers(1, 100),
    dst=st.integers(16, 160),
    nv12=st.booleans(),
    full=st.booleans(),
    bt709=st.booleans(),
    letterbox=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_yuv_preprocess_and_bgr_match_ffmpeg(
    half_h: int,
    half_w: int,
    dst: int,
    nv12: bool,
    full: bool,
    bt709: bool,
    letterbox: bool,
    seed: int,
) -> None:
    """The acceptance figures: the model input from the 4:2:0 slot against FFmpeg's BGR and
    today's preprocess within mean |Δ| <= 1 and max |Δ| <= 3 per channel; the BGR of an image
    output within max |Δ| <= 3 of FFmpeg's. (Odd sizes: stored as BGR, see below.)"""
    height, width = 2 * half_h, 2 * half_w
    frame = ffmpeg_frame(
        smooth_image(height, width, seed), "nv12" if nv12 else "yuv420p", full, bt709
    )
    yuv = slot_of(frame)
    assert yuv.layout.colour_range is (ColourRange.FULL if full else ColourRange.LIMITED)
    assert yuv.layout.matrix is (ColourMatrix.BT709 if bt709 else ColourMatrix.BT601)
    # FFmpeg's NV12 -> BGR interpolates chroma (its own yuv420p of the same samples differs
    # by up to ~40): the reference for NV12 is FFmpeg's conversion of those samples as I420.
    theirs_bgr = (frame.reformat(format="yuv420p") if nv12 else frame).to_ndarray(format="bgr24")
    assert np.abs(yuv.to_bgr().astype(int) - theirs_bgr).max() <= 3
    if X86:  # FFmpeg's x86 conversion, reproduced bit for bit
        assert np.array_equal(yuv.to_bgr(), theirs_bgr)

    plan = ResizePlan(height, width, dst, dst, letterbox)
    out = np.empty((1, 3, dst, dst), np.float32)
    preprocess_yuv420(yuv.data, out, plan, Normalisation(), nv12=nv12, full_range=full, bt709=bt709)
    mean, worst = per_channel_error(out[0], reference(theirs_bgr, dst, dst, letterbox=letterbox))
    assert mean <= 1.0 + 1e-3
    assert worst <= 3.0 + 1e-3


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 150),
    dst=st.integers(8, 96),
    nv12=st.booleans(),
    full=st.booleans(),
    bt709=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_fused_pass_equals_convert_then_resize_at_any_size(
    height: int, width: int, dst: int, nv12: bool, full: bool, bt709: bool, seed: int
) -> None:
    """Any size, odd heights and widths too: one fused pass = whole-frame BGR, then the BGR
    preprocess (within one grey level)."""
    rng = np.random.default_rng(seed)
    layout = FrameLayout(
        PixelFormat.NV12 if nv12 else PixelFormat.I420,
        width,
        height,
        ColourRange.FULL if full else ColourRange.LIMITED,
        ColourMatrix.BT709 if bt709 else ColourMatrix.BT601,
    )
    yuv = YuvFrame(rng.integers(0, 256, layout.nbytes, dtype=np.uint8), layout)
    plan = ResizePlan(height, width, dst, dst, True)
    out = np.empty((3, dst, dst), np.float32)
    preprocess_yuv420(yuv.data, out, plan, Normalisation(), nv12=nv12, full_range=full, bt709=bt709)
    ref = reference(yuv.to_bgr(), dst, dst)
    assert np.abs(out - ref).max() <= 1 / 255 + 1e-5


def test_matrix_and_range_change_the_colours() -> None:
    """Each (range, matrix) is its own conversion: the same bytes read four ways differ."""
    layout = FrameLayout(PixelFormat.I420, 16, 16)
    data = np.full(layout.nbytes, 60, np.uint8)
    data[: 16 * 16] = 120
    colours = set()
    for colour_range in ColourRange:
        for matrix in ColourMatrix:
            frame = YuvFrame(data, FrameLayout(PixelFormat.I420, 16, 16, colour_range, matrix))
            colours.add(tuple(int(c) for c in frame.to_bgr()[8, 8]))
    assert len(colours) == 4


@pytest.mark.parametrize(("height", "width"), [(15, 20), (16, 21), (15, 21)])
def test_odd_size_is_stored_as_ffmpeg_bgr(height: int, width: int) -> None:
    """FFmpeg interpolates an odd-size frame's chroma; such a stream is made BGR once by
    the decoder, so every reader sees FFmpeg's pixels."""
    frame = ffmpeg_frame(smooth_image(height, width, 1), "yuv420p", False, False)
    conversion = plan_conversion(frame)
    assert conversion.layout == FrameLayout.bgr(width, height)
    assert conversion.convert_to == "bgr24"


@pytest.mark.parametrize(
    ("fmt", "stored", "convert_to"),
    [
        ("yuv422p", PixelFormat.I420, "yuv420p"),
        ("yuv444p", PixelFormat.I420, "yuv420p"),
        ("yuv420p10le", PixelFormat.I420, "yuv420p"),
        ("gray", PixelFormat.I420, "yuv420p"),
        ("rgb24", PixelFormat.BGR24, "bgr24"),
        ("yuvj420p", PixelFormat.I420, None),
        ("nv12", PixelFormat.NV12, None),
    ],
)
def test_other_formats_are_converted_once(
    fmt: str, stored: PixelFormat, convert_to: str | None
) -> None:
    frame = av.VideoFrame.from_ndarray(smooth_image(32, 48, 2), format="bgr24").reformat(format=fmt)
    conversion = plan_conversion(frame)
    assert conversion.layout.pixel_format is stored
    assert conversion.convert_to == convert_to
    if fmt == "yuvj420p":
        assert conversion.layout.colour_range is ColourRange.FULL


def test_layout_sizes() -> None:
    assert FrameLayout(PixelFormat.I420, 1280, 720).nbytes == 1280 * 720 * 3 // 2  # ~1.4 MB
    assert FrameLayout.bgr(1280, 720).nbytes == 1280 * 720 * 3
    assert FrameLayout(PixelFormat.NV12, 5, 3).nbytes == 15 + 2 * 3 * 2
    assert FrameLayout(PixelFormat.I420, 5, 3).slot_shape == (27,)
    with pytest.raises(ValueError, match="positive size"):
        FrameLayout(PixelFormat.I420, 0, 4)


def test_yuv_frame_refuses_wrong_bytes() -> None:
    layout = FrameLayout(PixelFormat.I420, 4, 4)
    with pytest.raises(ValueError, match="24 uint8 bytes"):
        YuvFrame(np.zeros(23, np.uint8), layout)
    with pytest.raises(ValueError, match="plain array"):
        YuvFrame(np.zeros(48, np.uint8), FrameLayout.bgr(4, 4))
    with pytest.raises(ValueError, match="bytes"):
        preprocess_yuv420(
            np.zeros(23, np.uint8),
            np.zeros((3, 4, 4), np.float32),
            ResizePlan(4, 4, 4, 4),
            Normalisation(),
        )
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        yuv420_to_bgr(np.zeros(24, np.uint8), 4, 4, np.zeros((4, 5, 3), np.uint8))


def test_bgr_is_made_once_per_frame_object() -> None:
    yuv = slot_of(ffmpeg_frame(smooth_image(8, 8, 3), "yuv420p", False, False))
    first = as_bgr(yuv)
    assert as_bgr(yuv) is first  # a second output of the same frame converts nothing
    bgr = np.zeros((8, 8, 3), np.uint8)
    assert as_bgr(bgr) is bgr
    assert yuv.shape == (8, 8, 3)


def test_ring_header_records_the_layout() -> None:
    layout = FrameLayout(PixelFormat.NV12, 640, 360, ColourRange.FULL, ColourMatrix.BT709)
    with FrameRing.create(3, layout.slot_shape, np.uint8, 1, layout=layout) as ring:
        assert ring.layout == layout
        assert ring.slot_nbytes == 640 * 360 * 3 // 2
        reader = FrameRing.attach(ring.name)
        try:
            assert reader.layout == layout
            slot = ring.try_acquire()
            assert slot is not None
            d = ring.publish(slot, frame_id=1)
            frame = wrap_slot(reader.view(d), reader.layout)
            assert isinstance(frame, YuvFrame) and frame.layout == layout
        finally:
            reader.close()
    with FrameRing.create(2, (4, 4), np.uint8, 1) as plain:
        assert plain.layout is None
    with pytest.raises(ValueError, match="uint8 slots of shape"):
        FrameRing.create(2, (360, 640, 3), np.uint8, 1, layout=layout)


def test_passthrough_never_converts_and_image_outputs_convert_once() -> None:
    from types import SimpleNamespace

    from framepipe.core.processing.processor import FrameTap, build_processor
    from framepipe.core.processing.spec import processing_spec_from_wire

    yuv = slot_of(ffmpeg_frame(smooth_image(16, 24, 4), "yuv420p", False, False))
    meta = SimpleNamespace(frame_id=1, source_id=0)
    passthrough = build_processor(None)
    assert passthrough.reads_native_frames
    assert passthrough.compose([yuv], [meta], None) == [
        {"frame_id": 1, "source_id": 0, "image": {"width": 24, "height": 16}}
    ]
    assert yuv._bgr is None  # sizes come from the layout: no BGR was made

    spec = processing_spec_from_wire(
        {
            "type": "WorkflowConfiguration",
            "workflow_specification": {
                "version": "1.0",
                "inputs": [{"type": "WorkflowImage", "name": "image"}],
                "steps": [],
                "outputs": [
                    {"type": "JsonField", "name": "a", "selector": "$inputs.image"},
                    {"type": "JsonField", "name": "b", "selector": "$inputs.image"},
                ],
            },
            "image_input_name": "image",
        }
    )
    seen: list[object] = []
    tap = FrameTap(build_processor(spec), lambda frame, output, m: seen.append(frame))
    tap.compose([yuv], [meta], None)
    made = yuv._bgr
    assert made is not None and seen == [made]  # two image outputs and a tap: one BGR
