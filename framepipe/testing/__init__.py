"""Helpers for testing framepipe and code built on it: numbered test videos."""

from framepipe.testing.media import (
    CODECS,
    SyntheticVideo,
    TornFrameError,
    make_test_video,
    read_frame_number,
    render_frame,
)

__all__ = [
    "CODECS",
    "SyntheticVideo",
    "TornFrameError",
    "make_test_video",
    "read_frame_number",
    "render_frame",
]
