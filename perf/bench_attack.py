"""The control plane under the amplification attack: a real manager process, one running pipeline.

The attack (from the issue): 16 clients (threads of a separate process) send, again and again, 15 MB bodies of 5 million empty
JSON arrays without a token (on the reference design each one became ~400 MB of Python lists
and >1 s of CPU before the token could be checked). Meanwhile a prober sends an authenticated
``status`` for the pipeline every 50 ms, each bounded by 2 s.

The attack process runs on the machine's last core, the manager (and the workers it spawns)
and the prober on the others, so that the attacker's own CPU (it pushes GB/s at loopback speed)
does not stand in for the server's cost. Measured in the same run, for each configuration, on
the same manager process:

* ``status`` latency p50/p99 with no attack (baseline), then under the attack (target: p99 under
  the attack < 100 ms, no failed probe);
* the manager process's peak RSS and USS during the attack (target < 300 MB), against its RSS
  before the attack.

Configurations: ``default`` (1 MiB message limit, token); ``16MiB+token`` (the old 16 MiB limit,
so every body is read whole: the token's bytes are looked for before any parse);
``16MiB-no-token`` (no token on loopback: every body reaches the JSON limits check); and, not an
attack without a token, ``1MiB-parse``: the clients hold the token and send the heaviest request
the default limits let through (1 MiB, ~49,000 items), parsed whole each time.

Usage: python perf/bench_attack.py [--quick | --smoke] [--json] [--clients 16] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe.client import SyncStreamManagerClient  # noqa: E402
from framepipe.protocol.payloads import (  # noqa: E402
    InitialisePipelinePayload,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing import make_test_video  # noqa: E402
from tests.integration.manager_harness import ManagerProcess  # noqa: E402
from tests.reliability.attack import AttackProcess, Prober, Sampler, rss_mb  # noqa: E402

TOKEN = "bench-attack-token-0123456789"
CONFIGURATIONS: dict[str, tuple[dict[str, str], str | None]] = {
    "default": ({"FRAMEPIPE_TOKEN": TOKEN}, TOKEN),
    "16MiB+token": (
        {"FRAMEPIPE_TOKEN": TOKEN, "FRAMEPIPE_MAX_MESSAGE_BYTES": str(16 << 20)},
        TOKEN,
    ),
    "16MiB-no-token": ({"FRAMEPIPE_MAX_MESSAGE_BYTES": str(16 << 20)}, None),
    # Not the amplification body: 16 clients that know the token send the heaviest request the
    # default limits let through (1 MiB, ~49,000 items, parsed whole), to show parsing does not
    # stall the event loop.
    "1MiB-parse": ({"FRAMEPIPE_TOKEN": TOKEN}, TOKEN),
}


def run_configuration(name: str, video: Path, clients: int, seconds: float) -> dict[str, Any]:
    env, token = CONFIGURATIONS[name]
    manager = ManagerProcess(env)
    cores = sorted(os.sched_getaffinity(0))
    attack_cpus = {cores[-1]} if len(cores) > 1 else None
    if attack_cpus is not None:
        # The attacker's own work (pushing GB/s of junk at loopback speed) must not stand in for
        # the server's cost: it gets the last core, the manager (its workers inherit it) and the
        # prober the others.
        serving = set(cores[:-1])
        os.sched_setaffinity(manager.pid, serving)
        os.sched_setaffinity(0, serving)
    try:
        client = SyncStreamManagerClient(
            host="127.0.0.1", port=manager.port, operations_timeout=30, auth_token=token
        )
        pipeline_id = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(
                    video_reference=str(video), max_fps=10, realtime_replay=True
                ),
                processing_configuration=ModelConfiguration(model="passthrough"),
                decoding_buffer_size=8,
            )
        ).context.pipeline_id
        assert pipeline_id is not None
        time.sleep(1.0)  # the pipeline and the manager's background imports settle
        before_mb = rss_mb(manager.pid)
        with Prober(manager.port, pipeline_id, token=token) as quiet:
            time.sleep(seconds / 2)
        with (
            Sampler(manager.pid) as sampler,
            Prober(manager.port, pipeline_id, token=token) as attacked,
            AttackProcess(
                manager.port,
                clients=clients,
                duration_s=seconds,
                heavy_valid_with_token=token if name == "1MiB-parse" else None,
                cpus=attack_cpus,
            ) as attackers,
        ):
            attackers.join()
        after_mb = rss_mb(manager.pid)
        client.terminate_pipeline(pipeline_id)
        return {
            "baseline": quiet.stats.summary_ms(),
            "attack": attacked.stats.summary_ms(),
            "attack_failures": attacked.stats.failures[:3],
            "attack_bodies_sent": attackers.stats.sent,
            "attack_answers": attackers.stats.error_classes,
            "rss_before_mb": round(before_mb, 1),
            "peak_rss_mb": round(sampler.peaks.rss_mb, 1),
            "peak_uss_mb": round(sampler.peaks.uss_mb, 1),
            "rss_after_mb": round(after_mb, 1),
        }
    finally:
        code = manager.stop()
        if code != 0:
            print(manager.output(), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--quick", action="store_true", help="3 s of attack per configuration")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does it still run?")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="attack per configuration")
    parser.add_argument("--only", choices=sorted(CONFIGURATIONS), action="append")
    args = parser.parse_args()
    seconds = 1.0 if args.smoke else 3.0 if args.quick else args.seconds
    if args.smoke:
        args.clients = min(args.clients, 4)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        video = make_test_video(
            Path(tmp) / "long.mp4", frames=600, width=160, height=120, fps=10
        ).path
        for name in args.only or list(CONFIGURATIONS):
            results[name] = run_configuration(name, video, args.clients, seconds)
    print(
        f"{'configuration':16s} {'status p50/p99 quiet':>22s} {'under attack':>16s} "
        f"{'fail':>5s} {'RSS before':>10s} {'peak RSS/USS':>14s} {'bodies':>7s}"
    )
    for name, r in results.items():
        quiet, attack = r["baseline"], r["attack"]
        print(
            f"{name:16s} {quiet['p50_ms']:>10.1f}/{quiet['p99_ms']:<6.1f} ms "
            f"{attack['p50_ms']:>7.1f}/{attack['p99_ms']:<6.1f}ms {int(attack['failures']):>5d} "
            f"{r['rss_before_mb']:>7.0f} MB {r['peak_rss_mb']:>6.0f}/{r['peak_uss_mb']:<4.0f} MB "
            f"{r['attack_bodies_sent']:>7d}"
        )
    verdict = all(
        r["attack"]["p99_ms"] < 100 and r["attack"]["failures"] == 0 and r["peak_rss_mb"] < 300
        for r in results.values()
    )
    print(
        f"targets (p99 < 100 ms, no failed probe, peak RSS < 300 MB): {'met' if verdict else 'MISSED'}"
    )
    if args.json:
        print(json.dumps({"bench": "attack", "targets_met": verdict, **results}))


if __name__ == "__main__":
    main()
