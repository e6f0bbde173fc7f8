"""Test media whose every frame says which frame it is.

Each frame carries its frame number twice, as 16 black/white blocks in a band at the top
and again in a band at the bottom. The blocks are large (at least 8x8 pixels, usually far
more) so the number survives lossy H.264/H.265/MJPEG compression and chroma subsampling.
A reader that gets the same number from both bands knows the frame is whole; two different
numbers mean the frame was torn (top half of one frame, bottom half of another).

The middle of the frame is a moving gradient so the encoder has real motion to code and
decode timings are realistic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BITS = 16
MAX_FRAME_NUMBER = (1 << BITS) - 1

#: Encoders the generator knows how to drive, with the container each is written into.
CODECS: dict[str, str] = {
    "libx264": ".mp4",
    "libx265": ".mp4",
    "mjpeg": ".avi",
    "ffv1": ".mkv",
    "mpeg4": ".avi",
}

Frame = npt.NDArray[np.uint8]


class TornFrameError(ValueError):
    """The two copies of the frame number in one frame disagree (a torn or corrupt frame)."""


@dataclass(frozen=True)
class SyntheticVideo:
    """A generated test video: where it is and what it holds."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    codec: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def _band_height(height: int) -> int:
    return max(8, height // 8)


def _block_edges(width: int) -> npt.NDArray[np.int64]:
    return np.linspace(0, width, BITS + 1).astype(np.int64)


def render_frame(number: int, width: int, height: int) -> Frame:
    """A BGR frame (height x width x 3, uint8) that encodes ``number`` in its top and bottom bands."""
    if not 0 <= number <= MAX_FRAME_NUMBER:
        raise ValueError(f"frame number {number} is outside 0..{MAX_FRAME_NUMBER}")
    if width < BITS * 8 or height < 64:
        raise ValueError(f"frame size {width}x{height} is too small (at least {BITS * 8}x64)")
    band = _band_height(height)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    # Moving gradient in the middle: realistic motion for the codec, kept in 40..215 so it
    # never looks like a bit.
    x = np.arange(width, dtype=np.int64)
    row = (40 + ((x * 175) // width + number * 3) % 175).astype(np.uint8)
    frame[:, :, 0] = row
    frame[:, :, 1] = row[::-1]
    frame[:, :, 2] = np.uint8(128)
    edges = _block_edges(width)
    for bit in range(BITS):
        value = 255 if (number >> (BITS - 1 - bit)) & 1 else 0
        x0, x1 = edges[bit], edges[bit + 1]
        frame[:band, x0:x1] = value
        frame[height - band :, x0:x1] = value
    return frame


def _read_band(band: Frame) -> int:
    height, width = band.shape[:2]
    edges = _block_edges(width)
    y0, y1 = height // 4, height - height // 4
    number = 0
    for bit in range(BITS):
        x0, x1 = int(edges[bit]), int(edges[bit + 1])
        margin = (x1 - x0) // 4
        level = float(band[y0:y1, x0 + margin : x1 - margin].mean())
        number = (number << 1) | (1 if level > 127.0 else 0)
    return number


def read_frame_number(frame: npt.NDArray[np.uint8]) -> int:
    """The frame number encoded by :func:`render_frame` in a decoded BGR (or grey) frame.

    Raises :class:`TornFrameError` when the top and bottom copies disagree.
    """
    if frame.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {frame.shape}")
    height = frame.shape[0]
    band = _band_height(height)
    top = _read_band(frame[:band])
    bottom = _read_band(frame[height - band :])
    if top != bottom:
        raise TornFrameError(f"torn frame: top band says {top}, bottom band says {bottom}")
    return top


def make_test_video(
    path: str | Path,
    *,
    frames: int = 60,
    width: int = 320,
    height: int = 240,
    fps: float = 30.0,
    codec: str = "libx264",
    gop: int = 30,
    pix_fmt: str | None = None,
    faststart: bool = False,
) -> SyntheticVideo:
    """Encode ``frames`` numbered frames (0, 1, 2, ...) into ``path`` with PyAV.

    ``codec`` is one of :data:`CODECS`; the container follows the file's suffix (mp4, mkv,
    avi). H.264/H.265 are written as yuv420p, MJPEG as yuvj420p, FFV1 (lossless, any size:
    odd ones too) as yuv420p, unless ``pix_fmt`` names another format the encoder takes
    (yuv422p, yuv444p, yuv420p10le, gray, ...). ``faststart``: an mp4's index goes before the
    frames, so a copy cut short still opens (and plays up to the cut).
    """
    import av  # heavy; imported where it is needed

    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {sorted(CODECS)}")
    if frames < 1 or frames > MAX_FRAME_NUMBER + 1:
        raise ValueError(f"frames must be in 1..{MAX_FRAME_NUMBER + 1}, got {frames}")
    if (width % 2 or height % 2) and codec != "ffv1":
        raise ValueError(
            f"width and height must be even for {codec} video, got {width}x{height} "
            "(ffv1 takes any size)"
        )
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream: Any = container.add_stream(codec, rate=rate)
        stream.width = width
        stream.height = height
        if codec == "mjpeg":
            stream.pix_fmt = pix_fmt or "yuvj420p"
            stream.options = {"q:v": "3"}
        else:
            stream.pix_fmt = pix_fmt or "yuv420p"
            stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "23", "bf": "0"}
        elif codec == "libx265":
            stream.options = {
                "preset": "ultrafast",
                "crf": "26",
                "x265-params": "log-level=none:bframes=0",
            }
        for number in range(frames):
            image = render_frame(number, width, height)
            video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            video_frame.pts = number
            video_frame.time_base = 1 / rate
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return SyntheticVideo(
        path=path, frames=frames, width=width, height=height, fps=float(rate), codec=codec
    )


def write_y4m(path: str | Path, images: Iterable[Frame], fps: int = 25) -> Path:
    """Write BGR images (all of one even size) as a raw YUV4MPEG2 (``.y4m``) video: what
    Chrome's fake camera plays (``--use-file-for-fake-video-capture``), in a loop."""
    import cv2

    path = Path(path)
    with path.open("wb") as out:
        header_written = False
        for image in images:
            height, width = image.shape[:2]
            if width % 2 or height % 2:
                raise ValueError(f"a 4:2:0 frame needs an even size, got {width}x{height}")
            if not header_written:
                out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
                header_written = True
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes())
        if not header_written:
            raise ValueError("no images to write")
    return path
