"""Pure policies of the source layer: the max_fps rate gate, default strategies, reports."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from framepipe.core.pipeline import PipelineResult
from framepipe.core.processing import PassthroughProcessor
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    FrameMetadata,
    StreamState,
    state_update,
)
from framepipe.core.sources.gate import ConsumerGate
from framepipe.core.sources.hub import default_strategies
from framepipe.core.sources.reference import parse_reference


def _gate(stream_fps: float, max_fps: float, seconds: float, jitter_ns: int = 0) -> int:
    consumer = ConsumerGate(0, 1, BufferFillingStrategy.DROP_OLDEST, max_fps)
    interval = int(1e9 / stream_fps)
    delivered = 0
    for i in range(int(stream_fps * seconds)):
        capture = 1_000_000_000 + i * interval + (jitter_ns if i % 2 else -jitter_ns)
        delivered += consumer.due(capture, max_fps)
    return delivered


@pytest.mark.parametrize(
    ("stream_fps", "max_fps"), [(30, 10), (30, 12), (15, 5), (25, 24), (30, 30)]
)
def test_rate_gate_delivers_max_fps_without_drift(stream_fps: float, max_fps: float) -> None:
    delivered = _gate(stream_fps, max_fps, 20, jitter_ns=2_000_000)
    assert delivered == pytest.approx(max_fps * 20, rel=0.03)


def test_rate_gate_passes_everything_when_stream_is_slower() -> None:
    assert _gate(10, 30, 10) == 100


def test_default_strategies_follow_the_reference(tmp_path: object) -> None:
    assert default_strategies(parse_reference("rtsp://cam/x")) == (
        BufferFillingStrategy.DROP_OLDEST,
        BufferConsumptionStrategy.EAGER,
    )
    assert default_strategies(None) == (BufferFillingStrategy.WAIT, BufferConsumptionStrategy.LAZY)


def test_wire_shapes() -> None:
    meta = FrameMetadata(
        frame_id=3,
        frame_timestamp=datetime(2026, 11, 25, 11, 37, 36, 233016),
        source_id=0,
        capture_ns=1,
        pts=0.1,
        width=640,
        height=480,
    )
    assert meta.to_wire() == {
        "frame_timestamp": "2026-11-25T11:37:36.233016",
        "frame_id": 3,
        "source_id": 0,
    }
    frame = np.zeros((480, 640, 3), np.uint8)
    outputs = PassthroughProcessor().compose([frame, None], [meta, None])
    result = PipelineResult(outputs, [meta, None])
    assert result.to_wire() == {
        "outputs": [{"frame_id": 3, "source_id": 0, "image": {"width": 640, "height": 480}}, None],
        "frames_metadata": [meta.to_wire(), None],
    }
    event = state_update(0, StreamState.RUNNING, StreamState.ERROR, message="boom").to_wire()
    assert event["event_type"] == "SOURCE_STATE_UPDATE" and event["severity"] == 40
    assert event["payload"] == {
        "previous_state": "RUNNING",
        "new_state": "ERROR",
        "source_id": 0,
        "message": "boom",
    }
    assert StreamState.ENDED.is_final and not StreamState.RESTARTING.is_final
