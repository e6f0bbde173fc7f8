"""200 concurrent clients against 4 running pipelines: every request succeeds, and the
manager's memory and descriptors stay flat. 10 s in ``make test``; ``make soak`` runs it for
60 s (FRAMEPIPE_SOAK_SECONDS=N for longer)."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from framepipe.client import SyncStreamManagerClient
from tests.integration.manager_harness import running_manager, wait_for
from tests.reliability.attack import fd_count, percentile, rss_mb
from tests.reliability.conftest import TOKEN, soak_seconds, start_passthrough
from tests.reliability.load import load_in_process

CLIENTS = 200
PIPELINES = 4


def test_two_hundred_clients_against_four_pipelines(long_video: Path, figures: list[str]) -> None:
    seconds = soak_seconds(10.0)
    with running_manager({"FRAMEPIPE_TOKEN": TOKEN}) as manager:
        client = SyncStreamManagerClient(
            host="127.0.0.1", port=manager.port, operations_timeout=30, auth_token=TOKEN
        )
        pipeline_ids = [start_passthrough(client, long_video) for _ in range(PIPELINES)]
        for pipeline_id in pipeline_ids:  # every pipeline produces before the load starts
            wait_for(
                lambda pid=pipeline_id: client.consume_pipeline_result(pid).outputs,
                30,
                "a first result",
                interval=0.1,
            )

        # The manager's memory and descriptors, sampled through the run.
        samples: list[tuple[float, float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append((time.monotonic(), rss_mb(manager.pid), fd_count(manager.pid)))

        fds_before = fd_count(manager.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = load_in_process(
                manager.port, TOKEN, pipeline_ids, clients=CLIENTS, seconds=seconds
            )
        finally:
            stop.set()
            sampler.join(5)
        wait_for(lambda: fd_count(manager.pid) <= fds_before + 2, 10, "descriptors to settle")
        fds_after = fd_count(manager.pid)

        latencies = result.latencies_s
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        # "Flat": the second half of the run holds no more than the first quarter did, give or
        # take allocator noise (a leak of one object per request would show at these rates).
        quarter = max(1, len(samples) // 4)
        early_rss = max(rss for _, rss, _ in samples[:quarter])
        late_rss = max(rss for _, rss, _ in samples[len(samples) // 2 :])
        peak_fds = max(fds for _, _, fds in samples)
        figures.append(
            f"load: {CLIENTS} clients x {PIPELINES} pipelines for {seconds:g} s: "
            f"{result.requests} requests ({result.requests / result.elapsed_s:.0f}/s; "
            f"{result.by_command}), {len(result.errors)} errors, {result.results_consumed} "
            f"results consumed; latency p50 {p50 * 1e3:.1f} ms p99 {p99 * 1e3:.1f} ms max "
            f"{max(latencies) * 1e3:.1f} ms; manager RSS {early_rss:.0f} MB (first quarter) -> "
            f"{late_rss:.0f} MB (second half); fds {fds_before} before, peak {peak_fds}, "
            f"{fds_after} after"
        )

        assert not result.errors, result.errors[:10]
        assert result.requests >= CLIENTS * seconds, "each client made requests all along"
        assert result.results_consumed > 0
        assert late_rss < early_rss + 25, f"RSS grew from {early_rss:.0f} to {late_rss:.0f} MB"
        assert fds_after <= fds_before + 2
        assert peak_fds < fds_before + CLIENTS + 64
        assert sorted(client.list_pipelines().pipelines) == sorted(pipeline_ids)
        for pipeline_id in pipeline_ids:
            client.terminate_pipeline(pipeline_id)
        assert client.list_pipelines().pipelines == []
