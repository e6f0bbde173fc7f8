"""Metrics without processes: the pipeline's histograms, the manager's snapshot from its table,
the wire form of the ``metrics`` command, and the Prometheus text the gateway renders."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from framepipe.client import _exchange
from framepipe.core.budget import MB, MemoryUsage, RamBudget
from framepipe.core.histogram import (
    FRAME_AGE_BUCKETS_S,
    INFERENCE_LATENCY_BUCKETS_S,
    Histogram,
    HistogramSnapshot,
)
from framepipe.core.pipeline import (
    CompletionReport,
    PipelineReport,
    PipelineState,
    SourceCompletion,
    SourceHistograms,
)
from framepipe.core.sinks import SinkStatistics
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DropReason,
    SourceKind,
    SourceReport,
    StreamState,
)
from framepipe.gateway.metrics import CONTENT_TYPE, render
from framepipe.protocol.commands import MetricsCommand, parse_command
from framepipe.protocol.envelope import encode_response_payload
from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.metrics import (
    ManagerFigures,
    MetricsBody,
    MetricsSnapshot,
)
from framepipe.server.manager.metrics import build_snapshot, service_figures
from framepipe.server.manager.table import PipelineTable, Retention, RowState

SECRET_URL = "rtsp://admin:hunter2@10.0.0.7/stream1"

# -- the pipeline's histograms --------------------------------------------------------------


def test_histogram_counts_each_observation_in_its_bucket() -> None:
    histogram = Histogram((0.1, 0.5, 1.0))
    for value in (0.05, 0.1, 0.3, 0.5, 0.7, 2.0, 9.0):
        histogram.observe(value)
    snap = histogram.snapshot()
    assert snap.counts == (2, 2, 1, 2)  # a value on a bound falls in that bound's bucket
    assert snap.cumulative == (2, 4, 5, 7)
    assert snap.count == 7
    assert snap.total == pytest.approx(12.65)
    histogram.observe(0.2)
    assert snap.count == 7, "a snapshot does not change with the histogram"
    assert histogram.snapshot().counts == (2, 3, 1, 2)


def test_histogram_quantiles_interpolate_like_prometheus() -> None:
    histogram = Histogram((1.0, 2.0, 4.0))
    assert histogram.snapshot().quantile(0.5) is None
    for value in (0.5, 1.5, 1.5, 3.0):
        histogram.observe(value)
    snap = histogram.snapshot()
    assert snap.quantile(0.25) == pytest.approx(1.0)  # rank 1: the whole first bucket
    assert snap.quantile(0.5) == pytest.approx(1.5)  # rank 2: halfway through (1, 2]
    assert snap.quantile(1.0) == pytest.approx(4.0)
    histogram.observe(100.0)
    assert histogram.snapshot().quantile(1.0) == 4.0  # above every bound: the highest bound


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0), (1.0, float("inf"))])
def test_histogram_bounds_must_be_finite_and_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bound"):
        Histogram(bounds)


def test_bucket_sets_are_fixed_and_increasing() -> None:
    for bounds in (INFERENCE_LATENCY_BUCKETS_S, FRAME_AGE_BUCKETS_S):
        assert list(bounds) == sorted(set(bounds))
        assert HistogramSnapshot.empty(bounds).cumulative == (0,) * (len(bounds) + 1)


# -- the manager's snapshot -----------------------------------------------------------------


def histogram(bounds: tuple[float, ...], *values: float) -> HistogramSnapshot:
    h = Histogram(bounds)
    for value in values:
        h.observe(value)
    return h.snapshot()


def source_report(**changes: object) -> SourceReport:
    fields: dict[str, object] = dict(
        source_id=0,
        reference=SECRET_URL.replace("admin:hunter2", "***:***"),
        kind=SourceKind.STREAM,
        state=StreamState.RUNNING,
        backend="pyav",
        properties=None,
        declared_fps=25.0,
        measured_fps=24.5,
        frames_decoded=120,
        frames_delivered=100,
        frames_dropped={"drop_oldest": 15, "max_fps": 5},
        reconnects=2,
        last_error=None,
        decode_latency_ms=1.5,
        ring_slots=9,
        ring_occupancy=3,
        shm_bytes=4_000_000,
        buffer_size=8,
        buffer_filling_strategy=BufferFillingStrategy.DROP_OLDEST,
        buffer_consumption_strategy=BufferConsumptionStrategy.EAGER,
        shared_with=0,
        decoder_restarts=1,
    )
    fields.update(changes)
    return SourceReport(**fields)  # type: ignore[arg-type]


def pipeline_report(state: PipelineState = PipelineState.RUNNING) -> PipelineReport:
    return PipelineReport(
        state=state,
        status_updates=[],
        latency_reports=[],
        inference_throughput=24.0,
        sources=[source_report()],
        completion=CompletionReport(1.0, [SourceCompletion(0, 97, 1.0, 118)]),
        results=SinkStatistics(
            buffered=4, capacity=64, received=97, consumed=93, dropped=0, held_s=0.0
        ),
        results_produced=97,
        processing_errors=1,
        last_processing_error="boom",
        frames_failed={"processing_error": 3},
        failure=None,
        model="centerface",
        uptime_s=5.0,
        pid=4242,
        histograms=[
            SourceHistograms(
                0,
                histogram(INFERENCE_LATENCY_BUCKETS_S, 0.02, 0.03, 0.2),
                histogram(FRAME_AGE_BUCKETS_S, 0.05, 0.08, 0.3),
            )
        ],
    )


def manager_table() -> PipelineTable:
    table = PipelineTable(retention=Retention(), budget=RamBudget(2048))
    table.add_worker("idle-1", 11, RowState.IDLE, 0.0)
    table.add_worker("starting-1", 12, RowState.STARTING, 0.0)
    for pipeline_id, pid in (("running-1", 13), ("failed-1", 14), ("fresh-1", 15)):
        table.add_worker(pipeline_id, pid, RowState.STARTING, 0.0)
        table.started(pipeline_id, None, 0.0)
    table.reported("running-1", "RUNNING", 4, pipeline_report(), 1.0)
    table.sampled("running-1", 180.0, {13})
    table.reported("failed-1", "RUNNING", 0, pipeline_report(), 1.0)
    table.worker_exited("failed-1", "was killed by SIGKILL", 2.0)
    return table


USAGE = MemoryUsage(manager_mb=100.0, workers_mb=400.0, shared_segments_mb=20.0, shm_free_bytes=10)


def snapshot(table: PipelineTable | None = None) -> MetricsSnapshot:
    return build_snapshot(
        (table or manager_table()).rows(),
        usage=USAGE,
        max_ram_mb=2048.0,
        decoder_processes=2,
        uptime_s=30.0,
    )


def test_snapshot_has_the_listed_pipelines_and_the_managers_totals() -> None:
    snap = snapshot()
    assert [p.pipeline_id for p in snap.pipelines] == ["running-1", "failed-1", "fresh-1"]
    manager = snap.manager
    assert manager.pipelines_by_state == {
        "starting": 1,
        "running": 2,
        "finished": 0,
        "failed": 1,
        "ending": 0,
    }
    assert manager.idle_workers == 1
    assert manager.decoder_processes == 2
    assert manager.memory_used_bytes == int(520 * MB)
    assert manager.memory_limit_bytes == int(2048 * MB)
    assert snap.services == []  # no inference services: none reported, none invented


def test_pipeline_figures_come_from_its_last_report() -> None:
    running, failed, fresh = snapshot().pipelines
    assert running.state == "RUNNING" and running.model == "centerface" and running.reported
    assert (running.results_produced, running.results_consumed, running.results_buffered) == (
        97,
        93,
        4,
    )
    assert running.frames_failed == {"processing_error": 3}
    assert running.memory_unique_bytes == int(180 * MB)
    (source,) = running.sources
    assert (source.frames_decoded, source.frames_delivered, source.frames_processed) == (
        120,
        100,
        97,
    )
    # every reason, zero or not, so a rate sees the first drop of each
    assert source.frames_dropped == {reason.value: 0 for reason in DropReason} | {
        "drop_oldest": 15,
        "max_fps": 5,
    }
    assert source.inference_latency_seconds is not None
    assert source.inference_latency_seconds.count == 3
    assert source.frame_age_seconds is not None
    assert source.frame_age_seconds.cumulative[-1] == 3
    assert failed.state == "FAILED" and failed.throughput_fps == 0.0  # the worker is gone
    assert fresh.reported is False and fresh.sources == [] and fresh.state == "RUNNING"


def test_a_removed_pipeline_leaves_the_snapshot() -> None:
    table = manager_table()
    table.ending("running-1")
    table.remove("running-1")
    assert "running-1" not in [p.pipeline_id for p in snapshot(table).pipelines]
    assert "running-1" not in render(snapshot(table)).decode()


# -- the wire ---------------------------------------------------------------------------------


def test_metrics_command_parses_and_has_the_extensions_wire_form() -> None:
    command = parse_command({"type": "metrics", "auth_token": "s3cret", "unknown": 1})
    assert isinstance(command, MetricsCommand)
    assert command.to_wire() == {"type": "metrics"}
    assert command.target_pipeline_id is None
    with pytest.raises(InvalidPayloadError, match="metrics"):
        parse_command({"type": "metrix"})  # the error lists the known types, metrics among them


def test_the_snapshot_crosses_the_wire_typed() -> None:
    original = snapshot()
    payload = encode_response_payload("r-1", None, MetricsBody(snapshot=original))
    received = _exchange.metrics_response(_exchange.envelope_from_payload(payload))
    assert received == original


def test_a_newer_managers_extra_fields_are_ignored() -> None:
    wire = snapshot().model_dump(mode="json")
    wire["brand_new"] = {"x": 1}
    wire["manager"]["also_new"] = 2
    assert MetricsSnapshot.model_validate(wire).manager.idle_workers == 1


# -- the exposition -------------------------------------------------------------------------


def samples(text: bytes) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text.decode()) for s in family.samples]


def value(text: bytes, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_exposition_names_labels_and_values() -> None:
    text = render(snapshot())
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    run, src = {"pipeline_id": "running-1"}, {"pipeline_id": "running-1", "source_id": "0"}
    assert value(text, "framepipe_manager_pipelines", state="running") == 2
    assert value(text, "framepipe_manager_idle_workers") == 1
    assert value(text, "framepipe_manager_memory_limit_bytes") == 2048 * MB
    assert value(text, "framepipe_pipeline_info", model="centerface", **run) == 1
    assert value(text, "framepipe_pipeline_state", state="RUNNING", **run) == 1
    assert value(text, "framepipe_pipeline_results_total", **run) == 97
    assert value(text, "framepipe_pipeline_frames_failed_total", reason="processing_error", **run)
    assert value(text, "framepipe_source_frames_decoded_total", **src) == 120
    assert value(text, "framepipe_source_frames_processed_total", **src) == 97
    assert value(text, "framepipe_source_frames_dropped_total", reason="drop_oldest", **src) == 15
    assert value(text, "framepipe_source_frames_dropped_total", reason="muted", **src) == 0
    assert value(text, "framepipe_source_ring_occupancy_slots", **src) == 3
    assert value(text, "framepipe_source_reconnects_total", **src) == 2
    assert value(text, "framepipe_source_shared_memory_bytes", **src) == 4_000_000
    bucket = "framepipe_source_inference_latency_seconds_bucket"
    assert value(text, bucket, le="0.025", **src) == 1
    assert value(text, bucket, le="0.25", **src) == 3
    assert value(text, bucket, le="+Inf", **src) == 3
    assert value(text, "framepipe_source_frame_age_seconds_count", **src) == 3
    assert value(text, "framepipe_source_frame_age_seconds_sum", **src) == pytest.approx(0.43)


def test_labels_are_bounded_and_never_carry_a_reference() -> None:
    text = render(snapshot())
    assert b"hunter2" not in text and b"rtsp" not in text and b"10.0.0.7" not in text
    allowed = {"pipeline_id", "source_id", "model", "provider", "state", "reason", "kind"}
    allowed |= {"le", "part"}
    for sample in samples(text):
        assert set(sample.labels) <= allowed, sample


@dataclass(frozen=True)
class EngineReading:
    """Shaped as the inference engine's statistics (framepipe.core.inference)."""

    concurrency: int = 2
    max_batch: int = 4
    queue_depth: int = 3
    in_flight: int = 2
    runs: int = 10
    frames: int = 16
    batch_sizes: tuple[int, ...] = (6, 2, 0, 2)
    busy_s: float = 3.0
    uptime_s: float = 5.0

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / (self.uptime_s * self.concurrency)


@dataclass(frozen=True)
class ServiceReading:
    """Shaped as an inference service's statistics (framepipe.server.inference.supervisor)."""

    model: str = "centerface"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    state: str = "running"
    restarts: int = 1
    crashes: int = 1
    hangs: int = 0
    connections: int = 2
    engine: EngineReading | None = field(default_factory=EngineReading)


def test_service_statistics_become_service_series() -> None:
    snap = build_snapshot(
        manager_table().rows(),
        usage=None,
        max_ram_mb=None,
        decoder_processes=0,
        uptime_s=1.0,
        services=[ServiceReading(), ServiceReading(model="yolo", engine=None)],
    )
    assert snap.manager.memory_used_bytes is None and snap.manager.memory_limit_bytes is None
    text = render(snap)
    key = {"model": "centerface", "provider": "cpu"}
    assert value(text, "framepipe_service_queue_depth", **key) == 3
    assert value(text, "framepipe_service_in_flight", **key) == 2
    assert value(text, "framepipe_service_utilisation_ratio", **key) == pytest.approx(0.3)
    assert value(text, "framepipe_service_restarts_total", **key) == 1
    assert value(text, "framepipe_service_batch_size_bucket", le="1.0", **key) == 6
    assert value(text, "framepipe_service_batch_size_bucket", le="2.0", **key) == 8
    assert value(text, "framepipe_service_batch_size_bucket", le="+Inf", **key) == 10
    assert value(text, "framepipe_service_batch_size_sum", **key) == 16
    assert value(text, "framepipe_service_state", state="running", **key) == 1
    assert value(text, "framepipe_service_queue_depth", model="yolo", provider="cpu") == 0
    assert not any(s.name.startswith("framepipe_manager_memory") for s in samples(text))
    assert service_figures(ServiceReading()).utilisation == pytest.approx(0.3)


def test_an_empty_manager_renders_its_totals_only() -> None:
    text = render(
        MetricsSnapshot(
            manager=ManagerFigures(uptime_seconds=1.0, idle_workers=0, decoder_processes=0)
        )
    )
    names = {s.name for s in samples(text)}
    assert names == {
        "framepipe_manager_uptime_seconds",
        "framepipe_manager_idle_workers",
        "framepipe_manager_decoder_processes",
    }
