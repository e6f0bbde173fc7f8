"""Shared pieces of the reliability tests: a long generated video, a real manager with a token,
passthrough pipelines, and the figures each test measured (printed at the end of the run).

Every test here runs real processes on 127.0.0.1 and is bounded in time; the suite-wide guard
(tests/conftest.py) fails any of them that leaves an ``fp-`` entry in /dev/shm or a process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing import make_test_video
from tests.integration.manager_harness import ManagerProcess

TOKEN = "reliability-token-0123456789"
FPS = 10
_FIGURES: list[str] = []


def soak_seconds(default: float) -> float:
    """How long the load test runs: FRAMEPIPE_SOAK_SECONDS (make soak), else ``default``."""
    raw = os.environ.get("FRAMEPIPE_SOAK_SECONDS", "").strip()
    return float(raw) if raw else default


@pytest.fixture(scope="session")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160x120 H.264 video that plays (at max_fps=10) for longer than any test here runs."""
    seconds = max(180.0, soak_seconds(0) + 120)
    frames = min(int(seconds * FPS), 65_000)
    return make_test_video(
        tmp_path_factory.mktemp("reliability") / "long.mp4",
        frames=frames,
        width=160,
        height=120,
        fps=FPS,
    ).path


def settled(manager: ManagerProcess, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Wait until the manager's process tree stops changing (its background start: the decode
    forkserver, idle workers), so that a module-scoped manager's children are not taken for a
    test's leaks by the suite's guard."""
    deadline = time.monotonic() + timeout_s
    last = {p.pid for p in manager.tree()}
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = {p.pid for p in manager.tree()}
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            return
    raise AssertionError(f"the manager's processes did not settle within {timeout_s} s")


def start_passthrough(client: SyncStreamManagerClient, video: Path) -> str:
    """A passthrough pipeline on ``video``, played at its own pace like a camera (so that it
    runs for the video's length however fast its results are consumed); its id."""
    pipeline_id = client.initialise_pipeline(
        InitialisePipelinePayload(
            video_configuration=VideoConfiguration(
                video_reference=str(video), max_fps=FPS, realtime_replay=True
            ),
            processing_configuration=ModelConfiguration(model="passthrough"),
            sink_configuration=MemorySinkConfiguration(results_buffer_size=64),
            decoding_buffer_size=8,
        )
    ).context.pipeline_id
    assert pipeline_id is not None
    return pipeline_id


@pytest.fixture
def figures() -> Iterator[list[str]]:
    """Lines a test appends here are printed in the run's summary (make test shows them)."""
    lines: list[str] = []
    yield lines
    _FIGURES.extend(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("reliability figures (tests/reliability)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
