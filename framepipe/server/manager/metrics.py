"""The manager's metrics snapshot: what the ``metrics`` command answers.

Built on demand from what the manager already knows, without asking any worker: each listed
pipeline's last :class:`~framepipe.core.pipeline.PipelineReport` (the health loop fetches one
about every second, and every ``status`` request refreshes it), the RAM figures of the last
health check, the decoders, and — once the manager runs inference services — their statistics.
A scrape therefore costs the event loop a walk over the table, never a round trip to a worker,
and a hung worker cannot hold it. Counters and histograms are the pipeline's own totals since it
started (a report carries its histograms' counts, not a window), so nothing is lost between two
scrapes however far apart they are. A pipeline that leaves the table leaves the snapshot, and so
its series leave the exposition.

Inference services: :class:`ServiceStatisticsLike` is the shape this module reads of a service's
statistics (that of ``framepipe.server.inference.supervisor.ServiceStatistics``, with the engine's
``EngineStatistics`` inside); :func:`service_figures` turns one into the wire's typed
:class:`~framepipe.protocol.metrics.ServiceFigures`. Until the manager has services, it passes
none and their series are absent, not invented.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from framepipe.core.budget import MB, MemoryUsage
from framepipe.protocol.metrics import (
    HistogramFigures,
    ManagerFigures,
    MetricsSnapshot,
    PipelineFigures,
    ServiceFigures,
    SourceFigures,
)
from framepipe.server.manager.table import Row, RowState

if TYPE_CHECKING:
    from framepipe.core.histogram import HistogramSnapshot
    from framepipe.core.pipeline import PipelineReport, SourceHistograms
    from framepipe.core.sources.entities import SourceReport

__all__ = [
    "EngineStatisticsLike",
    "ServiceStatisticsLike",
    "build_snapshot",
    "pipeline_figures",
    "service_figures",
]

_FAILED = "FAILED"
# A listed pipeline without a report yet: the pipeline state its row's state stands for.
_UNREPORTED_STATE = {RowState.RUNNING: "RUNNING", RowState.FINISHED: "FINISHED"}


class EngineStatisticsLike(Protocol):
    """What :func:`service_figures` reads of an inference engine's statistics."""

    @property
    def concurrency(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def runs(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def batch_sizes(self) -> Sequence[int]: ...
    @property
    def busy_s(self) -> float: ...
    @property
    def uptime_s(self) -> float: ...
    @property
    def busy_fraction(self) -> float: ...


class ServiceStatisticsLike(Protocol):
    """What :func:`service_figures` reads of one inference service's statistics."""

    @property
    def model(self) -> str: ...
    @property
    def providers(self) -> Sequence[str]: ...
    @property
    def state(self) -> object: ...  # a StrEnum: starting, running, restarting, stopped
    @property
    def restarts(self) -> int: ...
    @property
    def crashes(self) -> int: ...
    @property
    def hangs(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def engine(self) -> EngineStatisticsLike | None: ...


def service_figures(statistics: ServiceStatisticsLike) -> ServiceFigures:
    """The typed figures of one inference service (zeros for the engine's figures before its
    first report)."""
    engine = statistics.engine
    state = statistics.state
    return ServiceFigures(
        model=statistics.model,
        provider=_provider_label(statistics.providers),
        state=str(getattr(state, "value", state)),
        queue_depth=engine.queue_depth if engine is not None else 0,
        in_flight=engine.in_flight if engine is not None else 0,
        concurrency=engine.concurrency if engine is not None else 0,
        max_batch=engine.max_batch if engine is not None else 0,
        runs=engine.runs if engine is not None else 0,
        frames=engine.frames if engine is not None else 0,
        batch_sizes=list(engine.batch_sizes) if engine is not None else [],
        busy_seconds=engine.busy_s if engine is not None else 0.0,
        utilisation=engine.busy_fraction if engine is not None else 0.0,
        uptime_seconds=engine.uptime_s if engine is not None else 0.0,
        restarts=statistics.restarts,
        crashes=statistics.crashes,
        hangs=statistics.hangs,
        connections=statistics.connections,
    )


def _provider_label(providers: Sequence[str]) -> str:
    """The provider a service runs on first ("CPUExecutionProvider" → "cpu")."""
    first = providers[0] if providers else "CPUExecutionProvider"
    return first.removesuffix("ExecutionProvider").lower() or "cpu"


def _histogram(snapshot: HistogramSnapshot) -> HistogramFigures:
    return HistogramFigures(
        bounds=list(snapshot.bounds),
        counts=list(snapshot.counts),
        total=snapshot.total,
        count=snapshot.count,
    )


def _source_figures(
    source: SourceReport, processed: int, histograms: SourceHistograms | None
) -> SourceFigures:
    # (not at module level: the sources package imports numpy and the decoders, which the
    # manager must not wait for before it listens)
    from framepipe.core.sources.entities import DropReason

    return SourceFigures(
        source_id=source.source_id,
        kind=source.kind.value,
        state=source.state.value,
        frames_decoded=source.frames_decoded,
        frames_delivered=source.frames_delivered,
        frames_processed=processed,
        # Every reason, zeros included: a series that exists from the start counts its first
        # increase (a rate over a series that appears mid-way misses it).
        frames_dropped={reason.value: 0 for reason in DropReason} | source.frames_dropped,
        measured_fps=source.measured_fps,
        declared_fps=source.declared_fps,
        ring_slots=source.ring_slots,
        ring_occupancy=source.ring_occupancy,
        reconnects=source.reconnects,
        decoder_restarts=source.decoder_restarts,
        shm_bytes=source.shm_bytes,
        inference_latency_seconds=(
            _histogram(histograms.inference_latency_s) if histograms is not None else None
        ),
        frame_age_seconds=_histogram(histograms.frame_age_s) if histograms is not None else None,
    )


def pipeline_figures(row: Row) -> PipelineFigures:
    """The figures of one listed pipeline, from its last report."""
    report: PipelineReport | None = row.report
    memory = int(row.ram_samples_mb[-1] * MB) if row.ram_samples_mb else None
    failed = row.state is RowState.FAILED
    if report is None:
        return PipelineFigures(
            pipeline_id=row.pipeline_id,
            state=_UNREPORTED_STATE.get(row.state, _FAILED),
            reported=False,
            uptime_seconds=0.0,
            throughput_fps=0.0,
            results_produced=0,
            results_consumed=0,
            results_dropped=0,
            results_buffered=0,
            results_capacity=0,
            processing_errors=0,
            memory_unique_bytes=memory,
        )
    processed = {s.source_id: s.completed_frames for s in report.completion.sources}
    histograms = {h.source_id: h for h in report.histograms}
    results = report.results
    return PipelineFigures(
        pipeline_id=row.pipeline_id,
        state=_FAILED if failed else report.state.value,
        model=report.model,
        reported=True,
        uptime_seconds=report.uptime_s,
        throughput_fps=0.0 if report.state.is_final or failed else report.inference_throughput,
        results_produced=report.results_produced,
        results_consumed=results.consumed,
        results_dropped=results.dropped,
        results_buffered=results.buffered,
        results_capacity=results.capacity,
        processing_errors=report.processing_errors,
        frames_failed=dict(report.frames_failed),
        memory_unique_bytes=memory,
        sources=[
            _source_figures(s, processed.get(s.source_id, 0), histograms.get(s.source_id))
            for s in report.sources
        ],
    )


def build_snapshot(
    rows: Iterable[Row],
    *,
    usage: MemoryUsage | None,
    max_ram_mb: float | None,
    decoder_processes: int,
    uptime_s: float,
    services: Iterable[ServiceStatisticsLike] = (),
) -> MetricsSnapshot:
    """The snapshot of a manager whose table holds ``rows`` (see the module docstring)."""
    by_state: dict[str, int] = {state.value: 0 for state in RowState if state is not RowState.IDLE}
    idle = 0
    pipelines = []
    for row in rows:
        if row.state is RowState.IDLE:
            idle += 1
            continue
        by_state[row.state.value] += 1
        if row.listed:
            pipelines.append(pipeline_figures(row))
    manager = ManagerFigures(
        uptime_seconds=uptime_s,
        pipelines_by_state=by_state,
        idle_workers=idle,
        decoder_processes=decoder_processes,
        memory_used_bytes=int(usage.total_mb * MB) if usage is not None else None,
        memory_limit_bytes=int(max_ram_mb * MB) if max_ram_mb is not None else None,
        manager_memory_bytes=int(usage.manager_mb * MB) if usage is not None else None,
        workers_memory_bytes=int(usage.workers_mb * MB) if usage is not None else None,
        shared_segments_bytes=int(usage.shared_segments_mb * MB) if usage is not None else None,
        shm_free_bytes=usage.shm_free_bytes if usage is not None else None,
    )
    return MetricsSnapshot(
        manager=manager,
        pipelines=pipelines,
        services=[service_figures(s) for s in services],
    )
