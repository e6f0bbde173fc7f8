"""Prometheus figures of a Ray cluster's front end: every node runs its own service per model
and each pipeline runs on one node, so the series carry a ``node`` label there (and only
there: a single machine's series are unchanged)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from framepipe.gateway.metrics import render
from framepipe.protocol.metrics import (
    ManagerFigures,
    MetricsSnapshot,
    PipelineFigures,
    ServiceFigures,
)


def service(node: str | None) -> ServiceFigures:
    return ServiceFigures(
        model="centerface",
        provider="CPUExecutionProvider",
        state="running",
        queue_depth=0,
        in_flight=1,
        concurrency=2,
        max_batch=1,
        runs=10,
        frames=10,
        busy_seconds=0.3,
        utilisation=0.1,
        uptime_seconds=5.0,
        restarts=0,
        crashes=0,
        hangs=0,
        connections=1,
        node=node,
    )


def pipeline(pipeline_id: str, node: str | None) -> PipelineFigures:
    return PipelineFigures(
        pipeline_id=pipeline_id,
        state="RUNNING",
        model="centerface",
        reported=True,
        uptime_seconds=5.0,
        throughput_fps=5.0,
        results_produced=20,
        results_consumed=10,
        results_dropped=0,
        results_buffered=10,
        results_capacity=64,
        processing_errors=0,
        node=node,
    )


def snapshot(nodes: list[str | None]) -> MetricsSnapshot:
    return MetricsSnapshot(
        manager=ManagerFigures(uptime_seconds=1.0, idle_workers=0, decoder_processes=1),
        pipelines=[pipeline(f"p{i}", node) for i, node in enumerate(nodes)],
        services=[service(node) for node in nodes],
    )


def series(text: bytes, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == name
    ]


def test_each_node_s_service_and_pipeline_is_its_own_series() -> None:
    text = render(snapshot(["node-a", "node-b"]))
    services = series(text, "framepipe_service_frames_total")
    assert sorted(s["node"] for s in services) == ["node-a", "node-b"]
    info = series(text, "framepipe_pipeline_info")
    assert {s["pipeline_id"]: s["node"] for s in info} == {"p0": "node-a", "p1": "node-b"}


def test_one_machine_has_no_node_label() -> None:
    text = render(snapshot([None]))
    for name in ("framepipe_service_frames_total", "framepipe_pipeline_info"):
        (labels,) = series(text, name)
        assert "node" not in labels
