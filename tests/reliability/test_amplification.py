"""The issue's amplification attack against a real manager: 16 clients send, again and again,
15 MB bodies of 5 million empty JSON arrays without a token, while an authenticated client
polls ``status`` of a running pipeline.

Promise (docs/RELIABILITY.md): the manager stays under 300 MB (RSS of the manager process,
sampled every 50 ms during the attack) and every ``status`` probe succeeds within 2 s. Each
configuration also shows which defence stopped the bodies:

- ``default``: the 1 MiB message limit, from the header alone (MessageTooLargeError);
- ``16MiB+token``: the old 16 MiB limit, so each body is read whole; the token's bytes are
  looked for before any parse (AuthorisationError);
- ``16MiB-no-token``: no token (loopback): every body reaches the JSON limits, checked on the
  raw bytes before parsing (JsonLimitError).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from framepipe.client import SyncStreamManagerClient
from tests.integration.manager_harness import running_manager
from tests.reliability.attack import AttackProcess, Prober, Sampler, rss_mb
from tests.reliability.conftest import TOKEN, start_passthrough

ATTACK_S = 4.0
LIMIT_MB = 300.0
CONFIGURATIONS = {
    "default": ({"FRAMEPIPE_TOKEN": TOKEN}, TOKEN, "MessageTooLargeError"),
    "16MiB+token": (
        {"FRAMEPIPE_TOKEN": TOKEN, "FRAMEPIPE_MAX_MESSAGE_BYTES": str(16 << 20)},
        TOKEN,
        "AuthorisationError",
    ),
    "16MiB-no-token": ({"FRAMEPIPE_MAX_MESSAGE_BYTES": str(16 << 20)}, None, "JsonLimitError"),
}


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_amplification_attack_costs_bounded_memory_and_never_blocks_status(
    configuration: str, long_video: Path, figures: list[str]
) -> None:
    env, token, defence = CONFIGURATIONS[configuration]
    with running_manager(env) as manager:
        client = SyncStreamManagerClient(
            host="127.0.0.1", port=manager.port, operations_timeout=30, auth_token=token
        )
        pipeline_id = start_passthrough(client, long_video)
        assert client.get_status(pipeline_id).status == "success"
        before_mb = rss_mb(manager.pid)
        with (
            Sampler(manager.pid) as sampler,
            Prober(manager.port, pipeline_id, token=token, timeout_s=2.0) as prober,
            AttackProcess(manager.port, clients=16, duration_s=ATTACK_S) as attack,
        ):
            attack.join()
        stats = attack.stats
        summary = prober.stats.summary_ms()
        figures.append(
            f"amplification[{configuration}]: {stats.sent} bodies of 15 MB, answered "
            f"{stats.error_classes}; manager RSS {before_mb:.0f} MB before, peak "
            f"{sampler.peaks.rss_mb:.0f} MB (USS {sampler.peaks.uss_mb:.0f}); status p50 "
            f"{summary['p50_ms']:.1f} ms p99 {summary['p99_ms']:.1f} ms max "
            f"{summary['max_ms']:.1f} ms over {int(summary['probes'])} probes"
        )

        assert stats.sent >= 16, stats
        assert stats.error_classes.get(defence, 0) >= stats.answered // 2 > 0, stats
        assert not prober.stats.failures, prober.stats.failures[:5]
        assert len(prober.stats.latencies_s) >= 10
        assert max(prober.stats.latencies_s) < 2.0
        assert sampler.peaks.samples >= 10
        assert sampler.peaks.rss_mb < LIMIT_MB, f"peak RSS {sampler.peaks.rss_mb:.0f} MB"

        # Afterwards: memory back near where it was, and the manager answers as before.
        assert rss_mb(manager.pid) < before_mb + 60
        assert client.get_status(pipeline_id).report["sources_metadata"]
        assert client.list_pipelines().pipelines == [pipeline_id]
        client.terminate_pipeline(pipeline_id)
        assert client.list_pipelines().pipelines == []
