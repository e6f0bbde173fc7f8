"""The numbered test videos: every frame reads back as its number, after lossy codecs too."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from framepipe.testing import TornFrameError, make_test_video, read_frame_number, render_frame


@pytest.mark.parametrize("number", [0, 1, 2, 255, 256, 4097, 65535])
def test_rendered_number_reads_back(number: int) -> None:
    assert read_frame_number(render_frame(number, 320, 240)) == number


def test_grey_frame_reads_back() -> None:
    frame = cv2.cvtColor(render_frame(1234, 640, 360), cv2.COLOR_BGR2GRAY)
    assert read_frame_number(frame) == 1234


def test_torn_frame_is_detected() -> None:
    top = render_frame(10, 320, 240)
    bottom = render_frame(11, 320, 240)
    torn = np.concatenate([top[:120], bottom[120:]])
    with pytest.raises(TornFrameError, match="top band says 10, bottom band says 11"):
        read_frame_number(torn)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        render_frame(70000, 320, 240)
    with pytest.raises(ValueError, match="too small"):
        render_frame(1, 64, 32)
    with pytest.raises(ValueError, match="unknown codec"):
        make_test_video(tmp_path / "x.mp4", codec="vp9000")


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("libx264", ".mp4"), ("libx265", ".mkv"), ("mjpeg", ".avi"), ("mpeg4", ".avi")],
)
def test_every_frame_survives_the_codec(tmp_path: Path, codec: str, suffix: str) -> None:
    video = make_test_video(
        tmp_path / f"v{suffix}", frames=40, width=320, height=240, fps=25, codec=codec
    )
    cap = cv2.VideoCapture(str(video.path))
    numbers = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (240, 320, 3)
        numbers.append(read_frame_number(frame))
    cap.release()
    assert numbers == list(range(40))
    assert video.duration_s == pytest.approx(40 / 25)
