"""Prometheus metrics: the manager's :class:`~framepipe.protocol.metrics.MetricsSnapshot` in
Prometheus' text format, at ``GET /metrics``.

The gateway asks the manager for a snapshot (the ``metrics`` command, with the scraper's bearer
token, authorised like every command) and renders it; it keeps no state between scrapes, so
the series of a pipeline that is gone are gone from the next scrape. ``framepipe serve
--metrics-port N`` serves the same route on a port of its own (a gateway without the
``/inference_pipelines`` routes), also when the HTTP gateway is off.

Series (every name starts with ``framepipe_``; labels in braces):

manager
    ``manager_uptime_seconds``, ``manager_pipelines{state}`` (starting, running, finished,
    failed, ending), ``manager_idle_workers``, ``manager_decoder_processes``,
    ``manager_memory_used_bytes`` and ``manager_memory_limit_bytes`` (the RAM budget),
    ``manager_memory_bytes{part}`` (manager, workers, shared_segments), ``manager_shm_free_bytes``
pipeline ``{pipeline_id}``
    ``pipeline_info{model}`` (1; ``{model, node}`` on a Ray cluster), ``pipeline_state{state}`` (1, the current state),
    ``pipeline_uptime_seconds``, ``pipeline_results_total``, ``pipeline_results_consumed_total``,
    ``pipeline_results_dropped_total``, ``pipeline_results_buffered``,
    ``pipeline_results_capacity``, ``pipeline_processing_errors_total``,
    ``pipeline_frames_failed_total{reason}``, ``pipeline_throughput_fps``,
    ``pipeline_memory_unique_bytes`` (USS of its worker)
source ``{pipeline_id, source_id}``
    ``source_info{kind}`` (1), ``source_state{state}`` (1), ``source_frames_decoded_total``,
    ``source_frames_delivered_total``, ``source_frames_processed_total``,
    ``source_frames_dropped_total{reason}``, ``source_fps`` (decoding rate),
    ``source_inference_latency_seconds`` and ``source_frame_age_seconds`` (histograms),
    ``source_ring_occupancy_slots``, ``source_ring_slots``, ``source_reconnects_total``,
    ``source_decoder_restarts_total``, ``source_shared_memory_bytes``
inference service ``{model, provider}`` (``{model, provider, node}`` on a Ray cluster)
    ``service_state{state}`` (1), ``service_queue_depth``, ``service_in_flight`` (concurrent
    runs now), ``service_concurrency``, ``service_runs_total``, ``service_frames_total``,
    ``service_batch_size`` (histogram of frames per run), ``service_busy_seconds_total``,
    ``service_utilisation_ratio``, ``service_restarts_total``, ``service_crashes_total``,
    ``service_hangs_total``, ``service_connections``
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from framepipe.gateway.app import _FAILURES, GatewayContext, Token
from framepipe.protocol.metrics import HistogramFigures, MetricsSnapshot, SourceFigures

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "metrics_router", "render"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "framepipe_"

_PIPELINE = ("pipeline_id",)
_SOURCE = ("pipeline_id", "source_id")
_SERVICE = ("model", "provider")


@dataclass
class _Families:
    """Metric families by name, created on first use, in the order they were first used."""

    families: dict[str, Metric] = field(default_factory=dict)

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
        assert isinstance(family, GaugeMetricFamily)
        return family

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = CounterMetricFamily(PREFIX + name, doc, labels=labels)
        assert isinstance(family, CounterMetricFamily)
        return family

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
        assert isinstance(family, HistogramMetricFamily)
        return family


def _buckets(bounds: Iterable[float], cumulative: Sequence[int]) -> list[tuple[str, float]]:
    labels = [repr(float(bound)) for bound in bounds] + ["+Inf"]
    return list(zip(labels, (float(n) for n in cumulative), strict=True))


def _histogram(family: HistogramMetricFamily, labels: list[str], figures: HistogramFigures) -> None:
    family.add_metric(labels, _buckets(figures.bounds, figures.cumulative), figures.total)


class SnapshotCollector(Collector):
    """A prometheus_client collector over one snapshot (made per scrape)."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        out = _Families()
        self._manager(out)
        self._pipelines(out)
        self._services(out)
        yield from out.families.values()

    def _manager(self, out: _Families) -> None:
        m = self.snapshot.manager
        out.gauge("manager_uptime_seconds", "Seconds since the manager started.", ()).add_metric(
            [], m.uptime_seconds
        )
        pipelines = out.gauge("manager_pipelines", "Pipelines by the manager's state.", ("state",))
        for state, count in sorted(m.pipelines_by_state.items()):
            pipelines.add_metric([state], count)
        out.gauge("manager_idle_workers", "Warm workers in the idle pool.", ()).add_metric(
            [], m.idle_workers
        )
        out.gauge("manager_decoder_processes", "Decode processes the manager runs.", ()).add_metric(
            [], m.decoder_processes
        )
        if m.memory_used_bytes is not None:
            out.gauge(
                "manager_memory_used_bytes",
                "Memory in use as the RAM budget counts it (unique memory of every process, "
                "each shared segment once).",
                (),
            ).add_metric([], m.memory_used_bytes)
        if m.memory_limit_bytes is not None:
            out.gauge(
                "manager_memory_limit_bytes", "The RAM budget (STREAM_MANAGER_MAX_RAM_MB).", ()
            ).add_metric([], m.memory_limit_bytes)
        parts = {
            "manager": m.manager_memory_bytes,
            "workers": m.workers_memory_bytes,
            "shared_segments": m.shared_segments_bytes,
        }
        if any(value is not None for value in parts.values()):
            family = out.gauge(
                "manager_memory_bytes", "Memory in use by part of the RAM budget.", ("part",)
            )
            for part, value in parts.items():
                if value is not None:
                    family.add_metric([part], value)
        if m.shm_free_bytes is not None:
            out.gauge(
                "manager_shm_free_bytes", "Room left in the shared-memory filesystem.", ()
            ).add_metric([], m.shm_free_bytes)

    def _pipelines(self, out: _Families) -> None:
        on_nodes = any(p.node is not None for p in self.snapshot.pipelines)
        for p in self.snapshot.pipelines:
            pid = [p.pipeline_id]
            out.gauge(
                "pipeline_info",
                "A listed pipeline, the model it runs and, on a Ray cluster, its node (1).",
                (*_PIPELINE, "model", *(["node"] if on_nodes else [])),
            ).add_metric([*pid, p.model or "none", *([p.node or ""] if on_nodes else [])], 1)
            out.gauge(
                "pipeline_state", "The pipeline's current state (1).", (*_PIPELINE, "state")
            ).add_metric([*pid, p.state], 1)
            out.gauge(
                "pipeline_uptime_seconds", "Seconds since the pipeline started.", _PIPELINE
            ).add_metric(pid, p.uptime_seconds)
            out.counter("pipeline_results", "Results the pipeline produced.", _PIPELINE).add_metric(
                pid, p.results_produced
            )
            out.counter(
                "pipeline_results_consumed", "Results clients took from the sink.", _PIPELINE
            ).add_metric(pid, p.results_consumed)
            out.counter(
                "pipeline_results_dropped",
                "Results the full sink discarded to make room.",
                _PIPELINE,
            ).add_metric(pid, p.results_dropped)
            out.gauge(
                "pipeline_results_buffered", "Results waiting in the sink.", _PIPELINE
            ).add_metric(pid, p.results_buffered)
            out.gauge(
                "pipeline_results_capacity", "Size of the result sink.", _PIPELINE
            ).add_metric(pid, p.results_capacity)
            out.counter(
                "pipeline_processing_errors", "Processing errors of the pipeline.", _PIPELINE
            ).add_metric(pid, p.processing_errors)
            failed = out.counter(
                "pipeline_frames_failed",
                "Frames whose processing failed, by reason.",
                (*_PIPELINE, "reason"),
            )
            for reason, count in sorted(p.frames_failed.items()):
                failed.add_metric([*pid, reason], count)
            out.gauge(
                "pipeline_throughput_fps", "Results per second, recently.", _PIPELINE
            ).add_metric(pid, p.throughput_fps)
            if p.memory_unique_bytes is not None:
                out.gauge(
                    "pipeline_memory_unique_bytes",
                    "Unique memory (USS) of the pipeline's worker processes.",
                    _PIPELINE,
                ).add_metric(pid, p.memory_unique_bytes)
            for s in p.sources:
                self._source(out, p.pipeline_id, s)

    @staticmethod
    def _source(out: _Families, pipeline_id: str, s: SourceFigures) -> None:
        sid = [pipeline_id, str(s.source_id)]
        out.gauge("source_info", "A video source and its kind (1).", (*_SOURCE, "kind")).add_metric(
            [*sid, s.kind], 1
        )
        out.gauge(
            "source_state", "The source's current state (1).", (*_SOURCE, "state")
        ).add_metric([*sid, s.state], 1)
        out.counter(
            "source_frames_decoded",
            "Frames the source's decoder decoded (once for every pipeline sharing it).",
            _SOURCE,
        ).add_metric(sid, s.frames_decoded)
        out.counter(
            "source_frames_delivered", "Frames delivered to the pipeline.", _SOURCE
        ).add_metric(sid, s.frames_delivered)
        out.counter(
            "source_frames_processed", "Frames of the source that got a result.", _SOURCE
        ).add_metric(sid, s.frames_processed)
        dropped = out.counter(
            "source_frames_dropped",
            "Frames that never reached the pipeline, by reason.",
            (*_SOURCE, "reason"),
        )
        for reason, count in sorted(s.frames_dropped.items()):
            dropped.add_metric([*sid, reason], count)
        out.gauge("source_fps", "Frames per second the decoder delivers.", _SOURCE).add_metric(
            sid, s.measured_fps
        )
        if s.inference_latency_seconds is not None:
            _histogram(
                out.histogram(
                    "source_inference_latency_seconds",
                    "Processing start to result composed, per frame, since the pipeline started.",
                    _SOURCE,
                ),
                sid,
                s.inference_latency_seconds,
            )
        if s.frame_age_seconds is not None:
            _histogram(
                out.histogram(
                    "source_frame_age_seconds",
                    "Capture of a frame to its result handed out, since the pipeline started.",
                    _SOURCE,
                ),
                sid,
                s.frame_age_seconds,
            )
        out.gauge(
            "source_ring_occupancy_slots", "Ring slots holding a frame now.", _SOURCE
        ).add_metric(sid, s.ring_occupancy)
        out.gauge("source_ring_slots", "Slots of the source's frame ring.", _SOURCE).add_metric(
            sid, s.ring_slots
        )
        out.counter("source_reconnects", "Times a live source reconnected.", _SOURCE).add_metric(
            sid, s.reconnects
        )
        out.counter(
            "source_decoder_restarts", "Decode processes replaced after dying.", _SOURCE
        ).add_metric(sid, s.decoder_restarts)
        out.gauge(
            "source_shared_memory_bytes",
            "Shared memory of the source's ring and status block (shared by the pipelines "
            "sharing its decoder).",
            _SOURCE,
        ).add_metric(sid, s.shm_bytes)

    def _services(self, out: _Families) -> None:
        # On a Ray cluster every node runs its own service per model: ``node`` tells them apart.
        on_nodes = any(v.node is not None for v in self.snapshot.services)
        labels = (*_SERVICE, "node") if on_nodes else _SERVICE
        for v in self.snapshot.services:
            key = [v.model, v.provider, *([v.node or ""] if on_nodes else [])]
            out.gauge(
                "service_state", "The inference service's state (1).", (*labels, "state")
            ).add_metric([*key, v.state], 1)
            out.gauge("service_queue_depth", "Frames waiting for a runner.", labels).add_metric(
                key, v.queue_depth
            )
            out.gauge(
                "service_in_flight", "Frames being run now (concurrent runs).", labels
            ).add_metric(key, v.in_flight)
            out.gauge(
                "service_concurrency", "Runs the service makes at once at most.", labels
            ).add_metric(key, v.concurrency)
            out.counter("service_runs", "Model runs (a batch is one run).", labels).add_metric(
                key, v.runs
            )
            out.counter("service_frames", "Frames run.", labels).add_metric(key, v.frames)
            if v.batch_sizes:
                bounds = [float(size) for size in range(1, len(v.batch_sizes) + 1)]
                cumulative, running = [], 0
                for n in v.batch_sizes:
                    running += n
                    cumulative.append(running)
                out.histogram("service_batch_size", "Frames per model run.", labels).add_metric(
                    key, _buckets(bounds, [*cumulative, running]), float(v.frames)
                )
            out.counter(
                "service_busy_seconds",
                "Runner time spent on frames, all runners together.",
                labels,
            ).add_metric(key, v.busy_seconds)
            out.gauge(
                "service_utilisation_ratio",
                "Share of the runners' time spent working since the service started.",
                labels,
            ).add_metric(key, v.utilisation)
            out.counter(
                "service_restarts", "Times the service was started again.", labels
            ).add_metric(key, v.restarts)
            out.counter("service_crashes", "Times the service crashed.", labels).add_metric(
                key, v.crashes
            )
            out.counter("service_hangs", "Times the service hung.", labels).add_metric(key, v.hangs)
            out.gauge(
                "service_connections", "Pipeline workers connected to the service.", labels
            ).add_metric(key, v.connections)


def render(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot in Prometheus' text exposition format (version 0.0.4)."""
    return generate_latest(SnapshotCollector(snapshot))


def metrics_router() -> APIRouter:
    """``GET /metrics``, for :class:`~framepipe.gateway.runner.Gateway`'s ``routers``."""
    router = APIRouter(tags=["metrics"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        description="The manager's pipelines, sources, inference services and totals in "
        "Prometheus' text format (series listed in the README). With a token configured, "
        "scrape with `Authorization: Bearer <token>`.",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
            **{code: _FAILURES[code] for code in (401, 500, 502, 503)},
        },
    )
    async def metrics(request: Request, token: Token) -> Response:
        context: GatewayContext = request.app.state.gateway
        snapshot = await context.client(token).get_metrics()
        # Rendering takes ~0.4 ms per pipeline: in a thread, so the event loop it shares with
        # the manager keeps serving meanwhile.
        return Response(await run_in_threadpool(render, snapshot), media_type=CONTENT_TYPE)

    return router
