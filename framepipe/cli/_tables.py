"""Status reports as tables (rich): what ``framepipe pipelines`` and ``framepipe top`` show.

A report is read leniently (every figure may be missing: a reference manager sends no
``framepipe`` section), into small typed views, then rendered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

_STATE_STYLES = {
    "RUNNING": "green",
    "MUTED": "yellow",
    "PAUSED": "yellow",
    "INITIALISING": "cyan",
    "RESTARTING": "cyan",
    "NOT_STARTED": "cyan",
    "ENDED": "blue",
    "FINISHED": "blue",
    "TERMINATING": "magenta",
    "TERMINATED": "magenta",
    "ERROR": "red",
    "GONE": "red",
}


@dataclass(frozen=True)
class SourceView:
    source_id: int | None
    reference: str
    state: str
    fps: float | None
    declared_fps: float | None
    frames: int | None
    decoded: int | None
    drops: dict[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    reconnects: int | None
    last_error: str | None


@dataclass(frozen=True)
class PipelineView:
    pipeline_id: str
    state: str
    throughput: float | None = None
    results: int | None = None
    results_dropped: int | None = None
    uptime_s: float | None = None
    processing_errors: int | None = None
    last_error: str | None = None
    sources: list[SourceView] = field(default_factory=list)

    @property
    def fps(self) -> float | None:
        known = [s.fps for s in self.sources if s.fps is not None]
        return sum(known) if known else self.throughput

    @property
    def frames(self) -> int | None:
        known = [s.frames for s in self.sources if s.frames is not None]
        return sum(known) if known else None

    @property
    def drops(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for source in self.sources:
            for reason, count in source.drops.items():
                merged[reason] = merged.get(reason, 0) + count
        return merged

    @property
    def latency_p50_ms(self) -> float | None:
        return _worst(s.latency_p50_ms for s in self.sources)

    @property
    def latency_p99_ms(self) -> float | None:
        return _worst(s.latency_p99_ms for s in self.sources)


def _worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def pipeline_view(pipeline_id: str, report: Mapping[str, Any]) -> PipelineView:
    """The figures of one status report (reference fields, and framepipe's where present)."""
    extension = _mapping(report.get("framepipe"))
    statistics = {
        _integer(s.get("source_id")): s for s in map(_mapping, _sequence(extension.get("sources")))
    }
    percentiles = {
        _integer(p.get("source_id")): p
        for p in map(_mapping, _sequence(extension.get("latency_ms")))
    }
    means = {
        _integer(r.get("source_id")): r
        for r in map(_mapping, _sequence(report.get("latency_reports")))
    }
    sources = []
    for metadata in map(_mapping, _sequence(report.get("sources_metadata"))):
        source_id = _integer(metadata.get("source_id"))
        stats = _mapping(statistics.get(source_id))
        properties = _mapping(metadata.get("source_properties"))
        p50 = _number(_mapping(percentiles.get(source_id)).get("e2e_p50"))
        mean_s = _number(_mapping(means.get(source_id)).get("e2e_latency"))
        drops = {
            str(reason): int(count)
            for reason, count in _mapping(stats.get("frames_dropped")).items()
            if _integer(count)
        }
        sources.append(
            SourceView(
                source_id=source_id,
                reference=str(metadata.get("source_reference", stats.get("source_reference", ""))),
                state=str(metadata.get("state") or stats.get("state") or "?"),
                fps=_number(stats.get("measured_fps")),
                declared_fps=_number(stats.get("declared_fps")) or _number(properties.get("fps")),
                frames=_integer(stats.get("frames_delivered")),
                decoded=_integer(stats.get("frames_decoded")),
                drops=drops,
                latency_p50_ms=p50 if p50 is not None else (mean_s * 1000 if mean_s else None),
                latency_p99_ms=_number(_mapping(percentiles.get(source_id)).get("e2e_p99")),
                reconnects=_integer(stats.get("reconnects")),
                last_error=str(stats["last_error"]) if stats.get("last_error") else None,
            )
        )
    state = extension.get("state")
    if not isinstance(state, str):
        states = sorted({s.state for s in sources})
        state = "/".join(states) if states else "?"
    return PipelineView(
        pipeline_id=pipeline_id,
        state=state,
        throughput=_number(report.get("inference_throughput")),
        results=_integer(extension.get("results_produced")),
        results_dropped=_integer(extension.get("results_dropped")),
        uptime_s=_number(extension.get("uptime_s")),
        processing_errors=_integer(extension.get("processing_errors")),
        last_error=(
            str(extension["last_processing_error"])
            if extension.get("last_processing_error")
            else None
        ),
        sources=sources,
    )


def gone_view(pipeline_id: str) -> PipelineView:
    """A pipeline that was listed but had gone by the time its status was asked."""
    return PipelineView(pipeline_id=pipeline_id, state="GONE")


# --- rendering -----------------------------------------------------------------------------


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLES.get(state.upper(), ""))


def _fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _drops(drops: Mapping[str, int]) -> str:
    if not drops:
        return "0"
    total = sum(drops.values())
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()))
    return f"{total} ({reasons})"


def _latency(p50: float | None, p99: float | None) -> str:
    if p50 is None and p99 is None:
        return "-"
    return f"{_fmt(p50, 0)} / {_fmt(p99, 0)}"


def pipelines_table(views: Sequence[PipelineView], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("pipeline", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("sources", justify="right")
    table.add_column("fps", justify="right")
    table.add_column("frames", justify="right")
    table.add_column("results", justify="right")
    table.add_column("drops by reason")
    table.add_column("latency ms p50 / p99", justify="right")
    for view in views:
        table.add_row(
            view.pipeline_id,
            _state(view.state),
            str(len(view.sources)) if view.sources else "-",
            _fmt(view.fps),
            _fmt(view.frames),
            _fmt(view.results),
            _drops(view.drops),
            _latency(view.latency_p50_ms, view.latency_p99_ms),
        )
    if not views:
        table.add_row("(no pipelines)", "", "", "", "", "", "", "")
    return table


def sources_table(view: PipelineView) -> Table:
    table = Table(title="sources", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("reference", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("fps (declared)", justify="right")
    table.add_column("frames (decoded)", justify="right")
    table.add_column("drops by reason")
    table.add_column("latency ms p50 / p99", justify="right")
    table.add_column("reconnects", justify="right")
    for source in view.sources:
        table.add_row(
            _fmt(source.source_id),
            source.reference,
            _state(source.state),
            f"{_fmt(source.fps)} ({_fmt(source.declared_fps)})",
            f"{_fmt(source.frames)} ({_fmt(source.decoded)})",
            _drops(source.drops),
            _latency(source.latency_p50_ms, source.latency_p99_ms),
            _fmt(source.reconnects),
        )
    return table


def pipeline_detail(view: PipelineView, report: Mapping[str, Any]) -> RenderableType:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("pipeline", view.pipeline_id)
    summary.add_row("state", _state(view.state))
    summary.add_row("uptime s", _fmt(view.uptime_s))
    summary.add_row("throughput fps", _fmt(view.throughput))
    summary.add_row("results produced", _fmt(view.results))
    summary.add_row("results dropped (sink full)", _fmt(view.results_dropped))
    summary.add_row("processing errors", _fmt(view.processing_errors))
    if view.last_error:
        summary.add_row("last error", view.last_error)
    for source in view.sources:
        if source.last_error:
            summary.add_row(f"source {_fmt(source.source_id)} error", source.last_error)
    parts: list[RenderableType] = [summary, sources_table(view)]
    updates = [_mapping(u) for u in _sequence(report.get("video_source_status_updates"))]
    if updates:
        events = Table(title="recent events", title_justify="left")
        events.add_column("time", no_wrap=True)
        events.add_column("event")
        events.add_column("details", overflow="fold")
        for update in updates[-8:]:
            payload = _mapping(update.get("payload"))
            details = ", ".join(f"{k}={v}" for k, v in payload.items())
            events.add_row(str(update.get("timestamp", "")), str(update.get("event_type")), details)
        parts.append(events)
    return Group(*parts)
