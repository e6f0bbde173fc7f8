"""Fixed-bucket histograms of latencies, kept for a pipeline's whole life.

A pipeline's latency windows (the last 256 frames) answer "how is it now"; a monitoring system
needs the other kind of figure: counts that only grow, in buckets fixed once for everyone, so
that a scrape every 15 s sees every frame once and series of different pipelines add up. A
:class:`Histogram` counts observations into fixed buckets (Prometheus' ``le`` upper bounds;
the last bucket has no bound) and keeps their sum; :meth:`Histogram.snapshot` is the typed,
immutable reading a status report carries.

Not thread-safe: the owner guards it (the pipeline observes and reads under its statistics
lock).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FRAME_AGE_BUCKETS_S",
    "INFERENCE_LATENCY_BUCKETS_S",
    "Histogram",
    "HistogramSnapshot",
]

#: Processing start → result composed, in seconds (a model run, queueing for it included).
INFERENCE_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Capture of a frame → its result handed out, in seconds (how old a result is when it is new).
FRAME_AGE_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(b) for b in bounds)
    if not values:
        raise ValueError("a histogram needs at least one bucket bound")
    if any(not math.isfinite(b) for b in values):
        raise ValueError(f"bucket bounds must be finite (the last bucket is unbounded): {values}")
    if any(b >= c for b, c in itertools.pairwise(values)):
        raise ValueError(f"bucket bounds must increase strictly: {values}")
    return values


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A reading of a :class:`Histogram`.

    ``bounds``: the buckets' upper bounds (inclusive, increasing); ``counts``: observations per
    bucket, one more entry than ``bounds`` (the last: above every bound); ``total``: their sum
    of observed values; ``count``: the number of observations (the sum of ``counts``).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(
                f"{len(self.counts)} bucket counts for {len(self.bounds)} bounds "
                "(expected one more, for the bucket above the last bound)"
            )

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> HistogramSnapshot:
        values = _check_bounds(bounds)
        return cls(values, (0,) * (len(values) + 1), 0.0, 0)

    @property
    def cumulative(self) -> tuple[int, ...]:
        """Observations at or below each bound, then all of them (Prometheus' ``le`` buckets,
        ``+Inf`` last)."""
        out = []
        running = 0
        for n in self.counts:
            running += n
            out.append(running)
        return tuple(out)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1), interpolated linearly within its bucket as Prometheus'
        ``histogram_quantile`` does (None without observations). In the last, unbounded bucket
        it is the highest bound."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        if self.count == 0:
            return None
        rank = q * self.count
        cumulative = self.cumulative
        index = bisect.bisect_left(cumulative, rank)
        if index >= len(self.bounds):
            return self.bounds[-1]
        upper = self.bounds[index]
        lower = self.bounds[index - 1] if index > 0 else 0.0
        below = cumulative[index - 1] if index > 0 else 0
        inside = cumulative[index] - below
        if inside == 0:
            return upper
        return lower + (upper - lower) * (rank - below) / inside


class Histogram:
    """Counts of observations in fixed buckets (see the module docstring)."""

    __slots__ = ("_bounds", "_count", "_counts", "_total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = _check_bounds(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._total = 0.0
        self._count = 0

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe(self, value: float) -> None:
        """Count one observation (a value on a bound falls in that bound's bucket)."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self._bounds, tuple(self._counts), self._total, self._count)
