"""How `framepipe bench` turns measurements into figures, verdicts, ratios and targets."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from framepipe.bench._procs import (
    DECODE,
    MODEL,
    Kind,
    ProcessInfo,
    classify_classic,
    classify_framepipe,
    group_classic_thread,
)
from framepipe.bench._targets import Target, check_targets
from framepipe.bench.config import Architecture, Criteria, Layout
from framepipe.bench.results import (
    MB,
    CpuFigures,
    MemoryFigures,
    RunResult,
    ScenarioResult,
    StreamFigures,
    judge,
    memory_slope_mb,
    percentile,
)

CRITERIA = Criteria()


def run(
    arch: Architecture,
    count: int,
    *,
    fps: float = 30.0,
    target: float = 30.0,
    p99: float = 20.0,
    memory_mb: float = 100.0,
    cpu_s: float = 1.0,
    decode_s: float = 0.4,
    model_s: float = 0.0,
    window_s: float = 10.0,
) -> RunResult:
    streams = tuple(
        StreamFigures(i, round(fps * window_s), fps, p99 / 4, p99, {"drop_oldest": 1})
        for i in range(count)
    )
    result = RunResult(
        architecture=arch,
        layout=Layout.DISTINCT,
        count=count,
        target_fps=target,
        streams=streams,
        cpu=CpuFigures(window_s, cpu_s, {Kind.DECODER: decode_s}, decode_s, model_s, "test"),
        memory=MemoryFigures({Kind.WORKER: int(memory_mb * MB)}, {Kind.WORKER: count}, 0),
        age_method="test",
    )
    return replace(result, verdict=judge(result, CRITERIA))


def test_figures_are_derived_from_the_streams_and_the_cpu_window() -> None:
    r = run(Architecture.FRAMEPIPE, 2, fps=30.0, cpu_s=2.0, decode_s=0.8, window_s=10.0)
    assert r.total_fps == pytest.approx(60.0)
    assert r.delivered == 600
    assert r.drops == {"drop_oldest": 2}
    assert r.cpu_per_stream_pct == pytest.approx(10.0)  # 2 CPU-s / 10 s / 2 streams
    assert r.outside_us_per_frame == pytest.approx((2.0 - 0.8) / 600 * 1e6)
    assert r.age_p99_ms == pytest.approx(20.0)
    figures = r.figures()
    for key in (
        "total_fps",
        "stream_fps_min",
        "cpu_per_stream_pct",
        "outside_us_per_frame",
        "age_p50_ms",
        "age_p99_ms",
        "memory_mb",
        "uss_mb",
        "shm_mb",
        "drops",
    ):
        assert figures[key] is not None, key
    json.dumps(r.to_dict())  # the whole record is JSON


def test_a_count_is_sustainable_only_with_full_rate_and_fresh_results() -> None:
    assert run(Architecture.FRAMEPIPE, 1).verdict.passed
    slow = run(Architecture.FRAMEPIPE, 1, fps=28.0)  # 93% of 30
    assert not slow.verdict.passed and "under 95%" in slow.verdict.reasons[0]
    stale = run(Architecture.FRAMEPIPE, 1, p99=70.0)  # 2 intervals at 30 fps = 66.7 ms
    assert not stale.verdict.passed and "frame age p99" in stale.verdict.reasons[0]
    # a model at 5 fps: two of its intervals are 400 ms
    assert run(Architecture.FRAMEPIPE, 1, fps=5.0, target=5.0, p99=350.0).verdict.passed
    failed = replace(run(Architecture.FRAMEPIPE, 1), error="init refused")
    assert judge(failed, CRITERIA).reasons == ("init refused",)


def test_memory_per_additional_stream_is_the_slope_over_the_counts() -> None:
    runs = [run(Architecture.CLASSIC, n, memory_mb=50 + 40 * n) for n in (1, 2, 4, 8)]
    assert memory_slope_mb(runs) == pytest.approx(40.0)
    assert memory_slope_mb(runs[:1]) is None


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def scenario(model: str, fp: list[RunResult], cl: list[RunResult]) -> ScenarioResult:
    s = ScenarioResult(
        f"{model} 720p30 file distinct", model, "720p30", "file", Layout.DISTINCT, 30.0
    )
    for arch, runs in ((Architecture.FRAMEPIPE, fp), (Architecture.CLASSIC, cl)):
        result = s.arch(arch)
        result.runs = runs
        passing = [r.count for r in runs if r.verdict.passed]
        result.sustainable = max(passing, default=0)
        result.search_end = "found"
    return s


def test_ratios_compare_the_largest_count_both_sustain() -> None:
    s = scenario(
        "passthrough",
        [run(Architecture.FRAMEPIPE, n, cpu_s=0.5 * n, memory_mb=200 * n) for n in (1, 2, 4)],
        [
            run(Architecture.CLASSIC, 1, cpu_s=2.0, memory_mb=50),
            run(Architecture.CLASSIC, 2, fps=20.0),
        ],
    )
    assert s.reference_count() == 1
    ratios = s.ratios()
    assert ratios["sustainable"] == pytest.approx(4.0)
    assert ratios["at_reference"]["cpu_per_stream_pct"] == pytest.approx(0.25)
    assert set(ratios["by_count"]) == {"1", "2"}
    json.dumps(s.to_dict())


def test_targets_are_checked_against_the_distinct_scenarios() -> None:
    passthrough = scenario(
        "passthrough",
        [
            run(Architecture.FRAMEPIPE, n, cpu_s=0.4 * n + 0.01 * n, decode_s=0.4 * n)
            for n in (1, 2, 4, 8)
        ]
        + [run(Architecture.FRAMEPIPE, 16, fps=20.0)],
        [run(Architecture.CLASSIC, n, cpu_s=4.0 * n, decode_s=0.4 * n) for n in (1, 2, 4)]
        + [run(Architecture.CLASSIC, 8, fps=10.0)],
    )
    detector = scenario(
        "centerface",
        [
            run(Architecture.FRAMEPIPE, n, fps=5.0, target=5.0, p99=300.0, memory_mb=100 + 30 * n)
            for n in (1, 2)
        ],
        [run(Architecture.CLASSIC, n, fps=5.0, target=5.0, memory_mb=100 + 90 * n) for n in (1, 2)],
    )
    by_name = {t.name: t for t in check_targets([passthrough, detector], CRITERIA)}
    cost = by_name["passthrough: CPU per frame outside decode (µs)"]
    assert cost.where.endswith("N=4")  # the largest count both sustain
    assert cost.met is True and cost.value == pytest.approx(0.04 / 1200 * 1e6)  # <= 150
    assert by_name["passthrough: sustainable streams"].met is True  # 8 vs 4
    assert by_name["passthrough: frame-transport CPU per frame (x lower)"].met is True
    streams = by_name["passthrough: sustainable 720p30 streams"]
    assert streams.value == 8 and streams.met is False  # 16 was seen to fail: 8 < 32
    flat = by_name["passthrough: memory per additional stream, USS + shm (MB)"]
    assert flat.value == pytest.approx(0.0) and flat.met is True  # 100 MB at every count
    model_mb = by_name["centerface: memory per additional stream, USS + shm (MB)"]
    assert model_mb.value == pytest.approx(30.0) and model_mb.met is True  # <= 40
    assert by_name[
        "centerface: memory per additional stream, USS + shm (MB, x lower)"
    ].value == pytest.approx(3.0)
    age = by_name["frame age p99 when not saturated (x of 2 frame intervals)"]
    assert age.value == pytest.approx(0.75)  # 300 ms of the detector's 400 ms
    assert age.met is True


def test_a_model_scenario_is_judged_against_its_model_bound_limit() -> None:
    """Sustained streams / (cores / (rate x model run + source fps x plain decode)) >= 0.85;
    a count that is only a lower bound and falls short is not judged."""

    def detector(counts: tuple[int, ...], failing: int | None, limit: float) -> ScenarioResult:
        runs = [run(Architecture.FRAMEPIPE, n, fps=5.0, target=5.0) for n in counts]
        if failing is not None:
            runs.append(run(Architecture.FRAMEPIPE, failing, fps=4.0, target=5.0))
        s = scenario("centerface", runs, [run(Architecture.CLASSIC, 1, fps=5.0, target=5.0)])
        s.model_bound_limit = limit
        if failing is None:
            s.results[Architecture.FRAMEPIPE].search_end = "fixed counts"
        return s

    def judged(s: ScenarioResult) -> Target:
        [target] = [t for t in check_targets([s], CRITERIA) if "model-bound" in t.name]
        return target

    met = judged(detector((4, 7), 8, limit=8.2))
    assert met.met is True and met.value == pytest.approx(7 / 8.2)
    assert "(8.2)" in met.name
    short = judged(detector((4, 6), 7, limit=8.2))
    assert short.met is False and short.value == pytest.approx(6 / 8.2)
    assert judged(detector((4, 6), None, limit=8.2)).met is None  # 6 is only a lower bound
    assert not [t for t in check_targets([detector((4,), 8, 0.0)], CRITERIA) if "model" in t.name]
    assert json.loads(json.dumps(detector((4,), 8, 8.25).to_dict()))["model_bound_limit"] == 8.25


def test_frame_age_counts_at_or_below_the_sustainable_count_only() -> None:
    def detector(p99_by_count: dict[int, float]) -> ScenarioResult:
        return scenario(
            "centerface",
            [
                run(Architecture.FRAMEPIPE, n, fps=5.0, target=5.0, p99=p99)
                for n, p99 in p99_by_count.items()
            ],
            [run(Architecture.CLASSIC, 1, fps=5.0, target=5.0)],
        )

    name = "frame age p99 when not saturated (x of 2 frame intervals)"
    # N=3 keeps its rate but its frames wait 900 ms: beyond the sustainable count (2), saturated
    [age] = [
        t for t in check_targets([detector({1: 100, 2: 200, 3: 900})], CRITERIA) if t.name == name
    ]
    assert age.met is True and age.value == pytest.approx(0.5) and age.where.endswith("N=2")
    # a count below the sustainable one that was late fails the target
    [age] = [t for t in check_targets([detector({1: 600, 2: 200})], CRITERIA) if t.name == name]
    assert age.met is False and age.where.endswith("N=1")


def test_process_kinds_are_told_apart_by_their_command_lines() -> None:
    root = ProcessInfo(10, 1, "python -m framepipe.cli serve --port 0", "python")
    fork = ProcessInfo(
        11, 10, "python -c from multiprocessing.forkserver import main; main(1)", "python"
    )
    decoder = ProcessInfo(12, 11, fork.cmdline, "python")
    worker = ProcessInfo(
        13,
        10,
        "python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5) --multiprocessing-fork",
        "python",
    )
    tracker = ProcessInfo(
        14, 10, "python -c from multiprocessing.resource_tracker import main;main(16)", "python"
    )
    assert classify_framepipe(root, None, 10) == Kind.MANAGER
    assert classify_framepipe(fork, root, 10) == Kind.OTHER
    assert classify_framepipe(decoder, fork, 10) == Kind.DECODER
    assert classify_framepipe(worker, root, 10) == Kind.WORKER
    assert classify_framepipe(tracker, root, 10) == Kind.OTHER
    assert classify_classic(root, None, 10) == Kind.APP
    assert classify_classic(worker, root, 10) == Kind.INFERENCE
    assert group_classic_thread("bl-decode") == DECODE
    assert group_classic_thread("av:h264:df0") == DECODE
    assert group_classic_thread("bl-model") == MODEL
    assert group_classic_thread("bl-app") is None


@pytest.mark.parametrize("target", [5.0, 15.0, 30.0])
def test_a_stream_at_its_full_rate_is_never_judged_slow_by_counting(target: float) -> None:
    """`--quick` measured CenterFace at 5 fps in 1.5 s windows: 7 whole results / 1.5 s = 4.7
    fps, 'under 95%', for streams that kept their rate. The window is lengthened instead (the
    bar stays): at any phase of the frames against the window, and one result still in flight
    at its end, a stream at its full rate passes — and one at 93% of it still fails."""
    from framepipe.bench.config import BenchConfig, quick_config

    quick = quick_config(BenchConfig(out_dir=Path("."), cache_dir=Path(".")))
    window_s = max(quick.duration_s, CRITERIA.shortest_window_s(target))
    for phase in (i / 20 for i in range(20)):  # where the window starts between two frames
        for rate, passes in ((target, True), (0.93 * target, False)):
            # results produced inside the window, less the one still in flight at its end
            counted = math.floor(window_s * rate + phase) - 1
            result = run(Architecture.FRAMEPIPE, 1, fps=counted / window_s, target=target)
            result = replace(result, verdict=judge(result, CRITERIA))
            assert result.verdict.passed is passes, (phase, rate, counted, window_s)


def test_passthrough_targets_fail_where_their_figures_miss() -> None:
    # 1.0 CPU-s outside decode over 2 x 300 frames: 1667 µs a frame; 60 MB per extra stream
    passthrough = scenario(
        "passthrough",
        [
            run(Architecture.FRAMEPIPE, n, cpu_s=0.9 * n, decode_s=0.4 * n, memory_mb=60.0 * n)
            for n in (1, 2)
        ]
        + [run(Architecture.FRAMEPIPE, 4, fps=20.0, memory_mb=240.0)],
        [run(Architecture.CLASSIC, n, cpu_s=4.0 * n) for n in (1, 2)],
    )
    by_name = {t.name: t for t in check_targets([passthrough], CRITERIA)}
    cost = by_name["passthrough: CPU per frame outside decode (µs)"]
    assert cost.value == pytest.approx(1.0 / 600 * 1e6) and cost.met is False
    memory = by_name["passthrough: memory per additional stream, USS + shm (MB)"]
    assert memory.value == pytest.approx(60.0) and memory.met is False
    assert by_name["passthrough: sustainable 720p30 streams"].met is False
