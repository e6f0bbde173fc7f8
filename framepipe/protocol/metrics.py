"""The ``metrics`` extension command: the manager's figures for monitoring, typed.

``{"type": "metrics"}`` (:class:`~framepipe.protocol.commands.MetricsCommand`, with ``auth_token`` when the manager requires one, like every
command) answers ``{"status": "success", "metrics": <MetricsSnapshot>}``: one entry per listed
pipeline with its sources, one per inference service, and the manager's totals. The reference's
clients never send it, so the reference protocol is untouched; a reference manager answers it
with ``invalid_payload`` (an unknown command type).

The snapshot is data, not a rendering: the HTTP gateway turns it into Prometheus' text format
(:mod:`framepipe.gateway.metrics`), and anything else may read it as it is. Counters are totals
since the pipeline (or service) started; histograms are fixed-bucket counts kept by the
pipeline since it started, never resampled windows. Labels a renderer may derive from it are
bounded: pipeline ids, source ids, model names, states and drop reasons — never a video
reference (it may be a URL with credentials).

Unknown fields are ignored (a newer manager may send more); ``version`` changes only when a
field changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from framepipe.protocol.commands import MetricsCommand
from framepipe.protocol.envelope import STATUS_KEY, OperationStatus, SuccessBody

__all__ = [
    "METRICS_KEY",
    "METRICS_VERSION",
    "HistogramFigures",
    "ManagerFigures",
    "MetricsBody",
    "MetricsCommand",
    "MetricsSnapshot",
    "PipelineFigures",
    "ServiceFigures",
    "SourceFigures",
]

METRICS_KEY = "metrics"
METRICS_VERSION = 1


class _Figures(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class HistogramFigures(_Figures):
    """Fixed buckets: ``bounds`` are the upper bounds (inclusive, increasing, in seconds),
    ``counts`` the observations per bucket with one more entry for those above every bound;
    ``total`` is the sum of the observed values, ``count`` their number."""

    bounds: list[float]
    counts: list[int]
    total: float
    count: int

    @property
    def cumulative(self) -> list[int]:
        """Observations at or below each bound, then all of them (``le`` buckets, +Inf last)."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


class SourceFigures(_Figures):
    """One video source of a pipeline, as that pipeline sees it.

    ``frames_decoded`` is the decoder's count (a decoder shared by several pipelines counts
    once for all of them); ``frames_delivered`` reached this pipeline; ``frames_processed`` got
    a result; ``frames_dropped`` never reached it, by reason (``max_fps``, ``drop_oldest``,
    ``eager``, ``muted``...). ``shm_bytes``: the source's ring and status block (shared by the
    pipelines that share its decoder).
    """

    source_id: int
    kind: str
    state: str
    frames_decoded: int
    frames_delivered: int
    frames_processed: int
    frames_dropped: dict[str, int] = Field(default_factory=dict)
    measured_fps: float
    declared_fps: float | None = None
    ring_slots: int
    ring_occupancy: int
    reconnects: int
    decoder_restarts: int
    shm_bytes: int
    inference_latency_seconds: HistogramFigures | None = None
    frame_age_seconds: HistogramFigures | None = None


class PipelineFigures(_Figures):
    """One listed pipeline, from its latest report (``reported``: whether one arrived yet).

    ``state``: the pipeline's own state (RUNNING, MUTED, PAUSED, FINISHED, FAILED,
    TERMINATED), FAILED when the manager lost its worker. ``frames_failed``: frames whose
    processing failed, by reason. ``memory_unique_bytes``: the unique memory (USS) of its
    worker's process tree at the last sample.
    """

    pipeline_id: str
    state: str
    model: str | None = None
    reported: bool
    uptime_seconds: float
    throughput_fps: float
    results_produced: int
    results_consumed: int
    results_dropped: int
    results_buffered: int
    results_capacity: int
    processing_errors: int
    frames_failed: dict[str, int] = Field(default_factory=dict)
    memory_unique_bytes: int | None = None
    sources: list[SourceFigures] = Field(default_factory=list)
    # The Ray node the pipeline runs on (the cluster front end sets it; None on one machine).
    node: str | None = None


class ServiceFigures(_Figures):
    """One inference service: a process running one model for every pipeline that uses it.

    ``queue_depth``: frames waiting for a runner; ``in_flight``: frames being run now (on CPU,
    concurrent runs on one session, at most ``concurrency``); ``runs``/``frames``: session runs
    and the frames they carried (a batch is one run); ``batch_sizes[i]``: runs of ``i + 1``
    frames; ``busy_seconds``: runner time spent on frames, all runners together;
    ``utilisation``: the share of the runners' time spent working since the service started
    (0..1); ``restarts``: times it was started again after a crash or a hang.
    """

    model: str
    provider: str
    state: str
    queue_depth: int
    in_flight: int
    concurrency: int
    max_batch: int
    runs: int
    frames: int
    batch_sizes: list[int] = Field(default_factory=list)
    busy_seconds: float
    utilisation: float
    uptime_seconds: float
    restarts: int
    crashes: int
    hangs: int
    connections: int
    # The Ray node the service runs on (the cluster front end sets it; None on one machine).
    node: str | None = None


class ManagerFigures(_Figures):
    """The manager's totals. ``pipelines_by_state``: listed pipelines and those starting or
    ending, by the manager's state (``starting``, ``running``, ``finished``, ``failed``,
    ``ending``); ``idle_workers``: warm workers in the pool. Memory as the RAM budget counts it
    (unique memory of each process, each shared segment once), at the last health check
    (None before the first); ``memory_limit_bytes``: ``STREAM_MANAGER_MAX_RAM_MB`` (None: no
    limit)."""

    uptime_seconds: float
    pipelines_by_state: dict[str, int] = Field(default_factory=dict)
    idle_workers: int
    decoder_processes: int
    memory_used_bytes: int | None = None
    memory_limit_bytes: int | None = None
    manager_memory_bytes: int | None = None
    workers_memory_bytes: int | None = None
    shared_segments_bytes: int | None = None
    shm_free_bytes: int | None = None


class MetricsSnapshot(_Figures):
    """What the ``metrics`` command answers (see the module docstring)."""

    version: int = METRICS_VERSION
    manager: ManagerFigures
    pipelines: list[PipelineFigures] = Field(default_factory=list)
    services: list[ServiceFigures] = Field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsBody(SuccessBody):
    snapshot: MetricsSnapshot

    def to_wire(self) -> dict[str, Any]:
        return {
            STATUS_KEY: OperationStatus.SUCCESS.value,
            METRICS_KEY: self.snapshot.model_dump(mode="json"),
        }
