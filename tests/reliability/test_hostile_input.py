"""Hostile input, round two (issue 22): frames bigger than they claim, and what FFmpeg may open.

Each attack of the issue, tried again on a real manager (or a real decode process), with real
files and a real HTTP server on 127.0.0.1: a video that lies about its frame size is charged at
its real size before its ring exists, an absurd one is refused outright, and a stream that
changes size mid-stream meets the same cap.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from framepipe.core.pipeline import Pipeline
from framepipe.core.sources import SourceHub, StreamState
from framepipe.testing import make_test_video
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for
from tests.rtsp import free_port

BIG = 4096  # a 4096x4096 frame: a 336 MiB ring for one consumer


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    make_test_video(directory / "big.avi", frames=3, width=BIG, height=BIG, fps=10, codec="mjpeg")
    make_test_video(directory / "small.mkv", frames=20, width=160, height=120, fps=10)
    _resizing_ts(directory / "resizing.ts")
    return directory


def _ts(path: Path, width: int, height: int, frames: int) -> bytes:
    with av.open(str(path), "w", format="mpegts") as container:
        stream: Any = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _resizing_ts(path: Path) -> None:
    """An MPEG-TS stream of 320x240 frames that turns into 2048x2048 frames (two streams
    joined end to end, as a camera that changes resolution would send)."""
    first = _ts(path.with_suffix(".a.ts"), 320, 240, 10)
    second = _ts(path.with_suffix(".b.ts"), 2048, 2048, 5)
    path.write_bytes(first + second)


@pytest.fixture(scope="module")
def http_base(media: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``media``."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=media,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _port_open(port), 10, "the HTTP server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def init(reference: str, **video: Any) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": reference,
            **video,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
    }


ONE_PIXEL = {"video_source_properties": {"frame_width": 1, "frame_height": 1}}


def source_error(manager: ManagerProcess, pipeline_id: str, timeout: float = 30.0) -> str:
    """The pipeline's status report (as JSON text) once its source is in ERROR."""

    def failed() -> str | None:
        reply = manager.request({"type": "status", "pipeline_id": pipeline_id})
        report = reply["response"].get("report", {})
        states = [s.get("state") for s in report.get("sources_metadata", [])]
        return json.dumps(report) if "ERROR" in states else None

    text: str | None = wait_for(failed, timeout, "the source to be refused")
    assert text is not None
    return text


# ---- 1. admission from the real size ----------------------------------------------------------


def test_a_local_file_that_claims_one_pixel_is_admitted_at_its_real_size(media: Path) -> None:
    """The issue's first attack: a huge file with ``frame_width``/``frame_height`` 1 was
    admitted as a 1x1 stream. Admission probes the file: the budget sees the real ring."""
    with running_manager({"STREAM_MANAGER_MAX_RAM_MB": "350"}) as manager:
        reply = manager.request(init(str(media / "big.avi"), **ONE_PIXEL))
        response = reply["response"]
        assert response.get("error_class") == "RamBudgetExceededError", response
        assert "rings 336.0 MB" in response["error_message"], response  # not 0 MB
        assert manager.workers() == []


def test_a_stream_bigger_than_its_admission_is_charged_again_before_its_ring(
    http_base: str,
) -> None:
    """The issue's second attack: an ``http://`` video admitted on the client's word (1x1) is
    charged again at its real size once the decoder knows it, before the ring is made: over
    the budget, its source is refused with RamBudgetExceededError naming both sizes, and no
    ring was made (the manager's /dev/shm use stays small)."""
    with running_manager({"STREAM_MANAGER_MAX_RAM_MB": "350"}) as manager:
        reply = manager.request(init(f"{http_base}/big.avi", **ONE_PIXEL))
        pipeline_id = reply.get("pipeline_id")
        assert pipeline_id, reply
        report = source_error(manager, pipeline_id)
        assert "RamBudgetExceededError" in report, report
        assert f"{BIG}x{BIG}" in report and "admitted as 1x1" in report, report
        assert "STREAM_MANAGER_MAX_RAM_MB=350.0" in report, report


def test_a_ring_above_the_cap_is_refused_outright(http_base: str, media: Path) -> None:
    """With no RAM budget at all, the per-ring cap still refuses absurd frame sizes: at
    admission when the size is known (declared, or probed from a local file), and at the ring's
    creation when it is not (a URL)."""
    with running_manager({"FRAMEPIPE_MAX_RING_MB": "64"}) as manager:
        reply = manager.request(init(str(media / "big.avi")))
        response = reply["response"]
        assert response.get("error_class") == "CapacityError", response
        assert "per-ring cap of 64 MB" in response["error_message"], response
        assert f"{BIG}x{BIG}" in response["error_message"]

        declared = {"video_source_properties": {"frame_width": 16000, "frame_height": 16000}}
        reply = manager.request(init(str(media / "small.mkv"), **declared))
        assert reply["response"].get("error_class") == "CapacityError", reply

        reply = manager.request(init(f"{http_base}/big.avi", **ONE_PIXEL))
        pipeline_id = reply.get("pipeline_id")
        assert pipeline_id, reply
        report = source_error(manager, pipeline_id)
        assert "CapacityError" in report and "per-ring cap of 64 MB" in report, report

        # an honest small video still runs
        reply = manager.request(init(str(media / "small.mkv")))
        assert reply["response"]["status"] == "success", reply


def test_a_stream_that_changes_size_mid_stream_meets_the_same_cap(media: Path) -> None:
    """A stream that starts small (a small ring) and turns into 2048x2048 frames: the decoder
    refuses the new size (its ring would be above the cap), naming both sizes, instead of
    decoding and scaling frames of any size."""
    with (
        SourceHub(max_ring_bytes=64 * 1024 * 1024) as hub,
        Pipeline(str(media / "resizing.ts"), decoder="pyav", hub=hub) as pipeline,
    ):
        assert pipeline.join(30)
        source = pipeline.status().sources[0]
    assert source.state is StreamState.ERROR, source
    assert source.last_error is not None
    assert "changed size mid-stream from 320x240 to 2048x2048" in source.last_error
    assert "per-ring cap of 64 MB" in source.last_error


def test_the_default_cap_refuses_the_issues_frame_sizes() -> None:
    """16000x16000 (a 5 GB ring) and 8192x8192 (1.4 GB) are above the default cap; a 4K camera
    shared by four pipelines is not."""
    from framepipe.core.sources.sizing import DEFAULT_MAX_RING_BYTES, ring_bytes
    from framepipe.server.settings import ServerSettings

    assert ServerSettings().max_ring_bytes == DEFAULT_MAX_RING_BYTES
    assert ring_bytes(16000, 16000, 64) > DEFAULT_MAX_RING_BYTES
    assert ring_bytes(8192, 8192, 64) > DEFAULT_MAX_RING_BYTES
    assert ring_bytes(3840, 2160, 64, consumers=4) <= DEFAULT_MAX_RING_BYTES
