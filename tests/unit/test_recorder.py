"""The annotated recording of ``framepipe run --output``: what it writes, and how it behaves when
its encoder falls behind (the pipeline is never held longer than the bound; drops are counted)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from framepipe.cli._recorder import AnnotatedRecorder


@dataclass(frozen=True)
class Meta:
    """The frame metadata fields the recorder reads (those of a pipeline's FrameMetadata)."""

    frame_id: int
    pts: float | None
    capture_ns: int
    fps: float | None = 25.0
    comes_from_video_file: bool = True


BOX = {"x": 80.0, "y": 60.0, "width": 40.0, "height": 30.0, "class": "face", "class_id": 0}


def frame(value: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.full((121, 161, 3), value, dtype=np.uint8)  # odd sizes: cropped to even


def test_it_writes_each_frame_with_its_output_drawn_at_its_place_in_time(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with AnnotatedRecorder(path) as recorder:
        for n in range(10):  # every other frame of a 25 fps file (max_fps 12.5)
            recorder.offer(
                frame(100), {"predictions": [BOX]} if n % 2 else None, Meta(n, n * 0.08, 0)
            )
    stats = recorder.close()
    assert (stats.frames_written, stats.frames_dropped, stats.error) == (10, 0, None)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (160, 120)
        frames = list(container.decode(stream))
    assert len(frames) == 10
    times = [float(f.pts * f.time_base) for f in frames]
    assert times == pytest.approx([n * 0.08 for n in range(10)], abs=0.021)
    for n, decoded in enumerate(frames):
        image = decoded.to_ndarray(format="bgr24").astype(int)
        edge = np.abs(image[45, 60:100] - 100).max()  # the box's top edge (y = 60 - 15)
        assert (edge > 60) == bool(n % 2), n
        assert np.abs(image[100:, :40] - 100).max() < 10  # far from the box: the frame as it was


class StalledRecorder(AnnotatedRecorder):
    """An encoder that stalls until released (a disk or CPU that cannot keep up)."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(path, **options)

    def _encode(self, item: Any) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super()._encode(item)


def test_a_stalled_encoder_drops_frames_after_the_bound_and_counts_them(tmp_path: Path) -> None:
    recorder = StalledRecorder(tmp_path / "out.mp4", queue_size=1, max_wait_s=0.05)
    try:
        recorder.offer(frame(50), None, Meta(1, 0.0, 0))
        assert recorder.entered.wait(30)  # the first frame is in the (stalled) encoder
        recorder.offer(frame(50), None, Meta(2, 0.04, 0))  # the queue's one place
        for n in range(3, 6):  # no room: each offer gives up after max_wait_s
            recorder.offer(frame(50), None, Meta(n, n * 0.04, 0))
        assert recorder.statistics().frames_dropped == 3
    finally:
        recorder.release.set()
        stats = recorder.close()
    assert (stats.frames_written, stats.frames_dropped, stats.error) == (2, 3, None)


def test_a_failed_writer_is_reported_and_later_frames_are_dropped(tmp_path: Path) -> None:
    recorder = AnnotatedRecorder(tmp_path / "out.mp4")
    recorder.offer(np.zeros((0, 0, 3), dtype=np.uint8), None, Meta(1, 0.0, 0))  # cannot encode
    stats = recorder.close()
    assert stats.error is not None and stats.frames_written == 0
    recorder.offer(frame(1), None, Meta(2, 0.04, 0))
    assert recorder.statistics().frames_dropped == 1
