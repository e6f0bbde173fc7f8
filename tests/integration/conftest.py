"""Fixtures for the video-source tests: numbered test videos and a real RTSP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from framepipe.testing import SyntheticVideo, make_test_video
from tests.rtsp import RtspServer, system_python_has_gst_rtsp


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_120(media_dir: Path) -> SyntheticVideo:
    """120 numbered frames, 320x240, 30 fps, H.264."""
    return make_test_video(media_dir / "v120.mp4", frames=120, width=320, height=240, fps=30)


@pytest.fixture(scope="session")
def video_60(media_dir: Path) -> SyntheticVideo:
    """60 numbered frames, 256x144, 30 fps, H.264."""
    return make_test_video(media_dir / "v60.mp4", frames=60, width=256, height=144, fps=30)


@pytest.fixture(scope="session")
def gst_available() -> bool:
    return system_python_has_gst_rtsp()


@pytest.fixture
def rtsp_server(gst_available: bool) -> Iterator[RtspServer]:
    """A live RTSP stream (test pattern, 320x240 @ 15 fps) on 127.0.0.1; killed after the test."""
    if not gst_available:
        pytest.skip("GStreamer RTSP server not installed (make system-deps)")
    server = RtspServer(fps=15)
    server.start()
    try:
        yield server
    finally:
        server.kill()
