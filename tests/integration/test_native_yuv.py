"""Real videos decoded by PyAV into native 4:2:0 ring slots: every pixel format a decoder
yields is stored or converted once, and what readers see matches FFmpeg's own conversion."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from framepipe import Pipeline
from framepipe.core.pixels import FrameLayout, PixelFormat, YuvFrame, as_bgr, wrap_slot
from framepipe.core.processing.processor import Processor
from framepipe.core.processing.spec import processing_spec_from_wire
from framepipe.core.sources.backends import BackendOptions, PyAVBackend
from framepipe.core.sources.entities import SourceKind
from framepipe.testing import SyntheticVideo, make_test_video, read_frame_number

Image = npt.NDArray[np.uint8]


def ffmpeg_frames(path: Path, fmt: str | None = None) -> list[Image]:
    """FFmpeg's BGR of every frame (PyAV ``to_ndarray(format="bgr24")``), optionally after
    FFmpeg's own conversion of the frame to ``fmt``."""
    with av.open(str(path)) as container:
        return [
            (frame if fmt is None else frame.reformat(format=fmt)).to_ndarray(format="bgr24")
            for frame in container.decode(video=0)
        ]


def decode_slots(path: Path) -> tuple[FrameLayout, list[Any]]:
    """Every frame as the decode process stores it: retrieved into a slot of the layout."""
    backend = PyAVBackend(str(path), SourceKind.FILE, BackendOptions())
    try:
        info = backend.open()
        layout = info.layout
        assert layout is not None and (layout.width, layout.height) == (info.width, info.height)
        frames = []
        while backend.grab():
            slot = np.empty(layout.slot_shape, np.uint8)
            backend.retrieve(slot)
            frames.append(wrap_slot(slot, layout))
        assert backend.copies == 0  # no frame needed a second pass
        return layout, frames
    finally:
        backend.close()


@pytest.fixture(scope="module")
def video_1080p(media_dir: Path) -> SyntheticVideo:
    return make_test_video(media_dir / "v1080.mp4", frames=6, width=1920, height=1080, fps=30)


def test_1080p_is_stored_as_i420_and_reads_as_ffmpeg_does(video_1080p: SyntheticVideo) -> None:
    layout, frames = decode_slots(video_1080p.path)
    assert layout == FrameLayout(PixelFormat.I420, 1920, 1080)
    assert layout.nbytes == 1920 * 1080 * 3 // 2  # half the BGR slot
    theirs = ffmpeg_frames(video_1080p.path)
    assert len(frames) == len(theirs) == video_1080p.frames
    for number, (ours, reference) in enumerate(zip(frames, theirs, strict=True)):
        assert isinstance(ours, YuvFrame)
        bgr = as_bgr(ours)
        assert np.abs(bgr.astype(int) - reference).max() <= 3
        assert read_frame_number(bgr) == number


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "width", "height", "stored"),
    [
        ("ffv1", "yuv420p", 321, 240, PixelFormat.BGR24),  # odd width
        ("ffv1", "yuv420p", 320, 241, PixelFormat.BGR24),  # odd height
        ("mjpeg", "yuvj420p", 320, 240, PixelFormat.I420),  # full range, stored as is
    ],
)
def test_odd_sizes_and_full_range_read_as_ffmpeg_does(
    media_dir: Path, codec: str, pix_fmt: str, width: int, height: int, stored: PixelFormat
) -> None:
    video = make_test_video(
        media_dir / f"{pix_fmt}_{width}x{height}.{'avi' if codec == 'mjpeg' else 'mkv'}",
        frames=4,
        width=width,
        height=height,
        codec=codec,
        pix_fmt=pix_fmt,
    )
    layout, frames = decode_slots(video.path)
    assert layout.pixel_format is stored and (layout.width, layout.height) == (width, height)
    for number, (ours, reference) in enumerate(zip(frames, ffmpeg_frames(video.path), strict=True)):
        bgr = as_bgr(ours)
        assert bgr.shape == (height, width, 3)
        assert np.abs(bgr.astype(int) - reference).max() <= 3
        assert read_frame_number(bgr) == number


@pytest.mark.parametrize(
    ("codec", "pix_fmt"),
    [("libx264", "yuv422p"), ("libx264", "yuv444p"), ("libx264", "yuv420p10le"), ("ffv1", "gray")],
)
def test_other_formats_are_converted_once_by_the_decoder(
    media_dir: Path, codec: str, pix_fmt: str
) -> None:
    """4:2:2, 4:4:4, 10-bit, grey: converted to 4:2:0 in the decoder, never garbled."""
    video = make_test_video(
        media_dir / f"{pix_fmt}.{'mkv' if codec == 'ffv1' else 'mp4'}",
        frames=4,
        width=320,
        height=240,
        codec=codec,
        pix_fmt=pix_fmt,
    )
    with av.open(str(video.path)) as container:
        assert next(container.decode(video=0)).format.name == pix_fmt
    layout, frames = decode_slots(video.path)
    assert layout == FrameLayout(PixelFormat.I420, 320, 240)
    same_conversion = ffmpeg_frames(video.path, "yuv420p")
    original = ffmpeg_frames(video.path)
    for number, ours in enumerate(frames):
        bgr = as_bgr(ours)
        # exactly FFmpeg's conversion to 4:2:0, then FFmpeg's BGR
        assert np.abs(bgr.astype(int) - same_conversion[number]).max() <= 3
        # and close to the original's colours (4:2:0 halves the chroma, nothing more)
        assert np.abs(bgr.astype(float) - original[number]).mean() <= 3.0
        assert read_frame_number(bgr) == number


class BgrReader(Processor):
    """User code: asks for nothing special, so it gets BGR arrays."""

    def __init__(self) -> None:
        self.frames: list[Image] = []

    def compose(
        self,
        frames: Sequence[Any | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Any | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        for frame in frames:
            assert isinstance(frame, np.ndarray) and frame.shape[2] == 3
            self.frames.append(frame.copy())
        return [None if f is None else {} for f in frames]


def test_pipeline_defaults_to_pyav_and_user_code_gets_ffmpeg_bgr(
    video_1080p: SyntheticVideo,
) -> None:
    reader = BgrReader()
    with Pipeline(str(video_1080p.path), processing=reader, decoding_buffer_size=4) as pipeline:
        list(pipeline.results(timeout=30))
        assert pipeline.join(10)
        report = pipeline.status()
    assert report.sources[0].backend == "pyav"
    theirs = ffmpeg_frames(video_1080p.path)
    assert len(reader.frames) == len(theirs)
    for ours, reference in zip(reader.frames, theirs, strict=True):
        assert np.abs(ours.astype(int) - reference).max() <= 3


def test_image_outputs_and_taps_convert_once_and_match_ffmpeg(video_120: SyntheticVideo) -> None:
    spec = processing_spec_from_wire(
        {
            "type": "WorkflowConfiguration",
            "workflow_specification": {
                "version": "1.0",
                "inputs": [{"type": "WorkflowImage", "name": "image"}],
                "steps": [],
                "outputs": [{"type": "JsonField", "name": "image", "selector": "$inputs.image"}],
            },
            "image_input_name": "image",
        }
    )
    tapped: list[Image] = []
    with Pipeline(
        str(video_120.path),
        processing=spec,
        on_frame=lambda frame, output, meta: tapped.append(frame.copy()),
        decoding_buffer_size=4,
    ) as pipeline:
        results = list(pipeline.results(timeout=30))
        assert pipeline.join(10)
    theirs = ffmpeg_frames(video_120.path)
    assert len(results) == len(tapped) == len(theirs)
    for result, tap, reference in zip(results, tapped, theirs, strict=True):
        assert np.abs(tap.astype(int) - reference).max() <= 3
        output = result.outputs[0]
        assert output is not None
        jpeg = base64.b64decode(output["image"]["value"])
        ours = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        ok, encoded = cv2.imencode(".jpg", reference, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        expected = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
        # the same JPEG encoder on pixels within 3 levels: within a few levels after it
        assert np.abs(ours.astype(float) - expected).mean() <= 1.0


def test_a_reopened_stream_is_written_in_the_rings_layout(
    video_60: SyntheticVideo, video_120: SyntheticVideo
) -> None:
    """A reconnect or a replacement decoder may open a stream that now yields another size:
    frames still fill the ring's slots (scaled by FFmpeg, counted as copies)."""
    ring_layout = FrameLayout(PixelFormat.I420, video_120.width, video_120.height)
    backend = PyAVBackend(str(video_60.path), SourceKind.FILE, BackendOptions())
    try:
        assert backend.open().layout != ring_layout
        backend.use_layout(ring_layout)
        slot = np.empty(ring_layout.slot_shape, np.uint8)
        with av.open(str(video_60.path)) as container:
            first = next(container.decode(video=0))
            expected = first.reformat(
                width=ring_layout.width, height=ring_layout.height, format="yuv420p"
            ).to_ndarray(format="bgr24")
        assert backend.grab()
        backend.retrieve(slot)
        frame = wrap_slot(slot, ring_layout)
        assert np.abs(as_bgr(frame).astype(int) - expected).max() <= 3
        assert read_frame_number(as_bgr(frame)) == 0
        assert backend.copies == 1
    finally:
        backend.close()
