"""Helpers for testing framepipe and code built on it: numbered test videos, raw .y4m videos for
a browser's fake camera; :class:`ServeProcess`, a real ``framepipe serve`` on a free port; a
WebRTC test peer in :mod:`framepipe.testing.webrtc` (``webrtc`` extra)."""

from framepipe._serve_process import ServeProcess
from framepipe.testing.media import (
    CODECS,
    SyntheticVideo,
    TornFrameError,
    make_test_video,
    read_frame_number,
    render_frame,
    write_y4m,
)

__all__ = [
    "CODECS",
    "ServeProcess",
    "SyntheticVideo",
    "TornFrameError",
    "make_test_video",
    "read_frame_number",
    "render_frame",
    "write_y4m",
]
