"""What the CLI shows: status reports read into table rows, and errors as one line."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from framepipe.cli._explain import explain
from framepipe.cli._tables import pipeline_detail, pipeline_view, pipelines_table
from framepipe.client.errors import ConnectivityError
from framepipe.protocol.errors import (
    AuthorisationError,
    InternalError,
    NotFoundError,
    OperationError,
    RamBudgetExceededError,
)

# The shape of a reference manager's report (status-examples.md): no framepipe section.
REFERENCE_REPORT: dict[str, Any] = {
    "video_source_status_updates": [],
    "latency_reports": [
        {
            "source_id": 0,
            "frame_decoding_latency": 0.5,
            "inference_latency": 0.01,
            "e2e_latency": 0.04,
        }
    ],
    "inference_throughput": 29.5,
    "sources_metadata": [
        {
            "source_properties": {"width": 1280, "height": 720, "fps": 30.0, "is_file": True},
            "source_reference": "/videos/a.mp4",
            "buffer_size": 64,
            "state": "RUNNING",
            "source_id": 0,
        }
    ],
}

FRAMEPIPE_REPORT: dict[str, Any] = {
    **REFERENCE_REPORT,
    "sources_metadata": [
        {**REFERENCE_REPORT["sources_metadata"][0], "source_id": i, "state": state}
        for i, state in ((0, "RUNNING"), (1, "ENDED"))
    ],
    "framepipe": {
        "state": "RUNNING",
        "results_produced": 90,
        "results_dropped": 2,
        "latency_ms": [
            {"source_id": 0, "e2e_p50": 12.0, "e2e_p99": 30.0},
            {"source_id": 1, "e2e_p50": 15.0, "e2e_p99": 20.0},
        ],
        "sources": [
            {
                "source_id": 0,
                "measured_fps": 25.0,
                "frames_delivered": 50,
                "frames_dropped": {"drop_oldest": 3, "max_fps": 1},
            },
            {
                "source_id": 1,
                "measured_fps": 5.0,
                "frames_delivered": 40,
                "frames_dropped": {"drop_oldest": 2, "eager": 0},
            },
        ],
    },
}


def render(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(renderable)
    return out.getvalue()


def test_a_reference_report_still_gives_state_fps_and_latency() -> None:
    view = pipeline_view("p1", REFERENCE_REPORT)
    assert view.state == "RUNNING"
    assert view.fps == 29.5  # no per-source figures: the throughput
    assert view.latency_p50_ms == 40.0  # the mean e2e latency, in ms
    assert view.frames is None and view.drops == {}


def test_framepipe_figures_are_summed_over_sources() -> None:
    view = pipeline_view("p1", FRAMEPIPE_REPORT)
    assert (view.state, view.fps, view.frames, view.results) == ("RUNNING", 30.0, 90, 90)
    assert view.drops == {"drop_oldest": 5, "max_fps": 1}
    assert (view.latency_p50_ms, view.latency_p99_ms) == (15.0, 30.0)  # the worst source
    text = render(pipelines_table([view]))
    assert "p1" in text and "6 (drop_oldest 5, max_fps 1)" in text and "15 / 30" in text


def test_the_detail_lists_every_source() -> None:
    view = pipeline_view("p1", FRAMEPIPE_REPORT)
    text = render(pipeline_detail(view, FRAMEPIPE_REPORT))
    assert "ENDED" in text and "3 (drop_oldest 3" not in text
    assert "4 (drop_oldest 3, max_fps 1)" in text and "2 (drop_oldest 2)" in text


def test_an_empty_or_odd_report_does_not_break_the_table() -> None:
    view = pipeline_view("p1", {"sources_metadata": "nonsense", "framepipe": []})
    assert view.state == "?" and view.sources == []
    assert "p1" in render(pipelines_table([view]))


def test_errors_are_one_line_with_a_hint() -> None:
    cases = {
        ConnectivityError(
            "Could not communicate with the stream manager at h:1"
        ): "framepipe serve",
        AuthorisationError("token\nrequired"): "FRAMEPIPE_TOKEN",
        NotFoundError("Could not find InferencePipeline with id=x."): "pipelines list",
        RamBudgetExceededError("not enough RAM"): "STREAM_MANAGER_MAX_RAM_MB",
        OperationError("cannot"): "pipelines status",
        InternalError("x", request_id="r1"): "r1",
    }
    for error, hint in cases.items():
        line = explain(error)
        assert "\n" not in line and "hint:" in line and hint in line, line
    assert explain(NotFoundError("gone")).startswith("not_found: gone")
