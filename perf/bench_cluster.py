"""The Ray backend's control path against a local manager, and its failover time.

One run, on this machine:

* a local Ray cluster (``ray.cluster_utils.Cluster``: a head and ``--nodes - 1`` more raylets,
  one CPU each, small object stores, the health checks framepipe ships) with the cluster front
  end (``framepipe serve --backend ray``), and a single-machine manager (``framepipe serve``,
  the baseline);
* a pipeline on every node but one (a two-minute video played at its own rate, ``--model``),
  one on the local manager, then ``status``
  and ``consume_result`` round trips, one at a time from one client, against each: p50/p99
  per command — the routed path adds one hop (front end → the node's manager);
* failover: the raylet of the node that runs a pipeline is killed; the time from the kill to
  the first result read through the front end from the node it moved to.

``--smoke``: fewer requests. ``--json``: one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe._serve_process import ServeProcess  # noqa: E402
from framepipe.client.sync import SyncStreamManagerClient  # noqa: E402
from framepipe.cluster.settings import NAMESPACE  # noqa: E402
from framepipe.protocol.commands import parse_command  # noqa: E402
from framepipe.testing.media import make_test_video  # noqa: E402
from framepipe.testing.ray_cluster import FrontProcess, LocalRayCluster  # noqa: E402

#: The pipelines' video: 320x240 at 5 fps, played at its own rate for two minutes, so that no
#: pipeline ends during the run.
VIDEO_FRAMES, VIDEO_FPS = 600, 5.0


def payload(model: str, video: Path) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": str(video),
            "realtime_replay": True,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": model},
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
    }


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def control_paths(
    front: SyncStreamManagerClient,
    front_id: str,
    local: SyncStreamManagerClient,
    local_id: str,
    requests: int,
) -> dict[str, dict[str, float]]:
    """status and consume_result round trips, the front end's and the local manager's
    interleaved one by one (both under the same load at the same moment)."""
    samples: dict[str, dict[str, list[float]]] = {
        side: {"status": [], "consume": []} for side in ("front", "local")
    }
    for _ in range(requests):
        for side, client, pipeline_id in (("front", front, front_id), ("local", local, local_id)):
            samples[side]["status"].append(timed(partial(client.get_status, pipeline_id)))
            samples[side]["consume"].append(
                timed(partial(client.consume_pipeline_result, pipeline_id))
            )
    report: dict[str, dict[str, float]] = {}
    for side, commands in samples.items():
        report[side] = {}
        for command, values in commands.items():
            for name, value in percentiles(values).items():
                report[side][f"{command}_{name}"] = value
    return report


def init(client: SyncStreamManagerClient, model: str, video: Path) -> str:
    pipeline_id = client.send(parse_command(payload(model, video))).pipeline_id
    assert pipeline_id is not None
    return pipeline_id


def failover(
    cluster: LocalRayCluster, client: SyncStreamManagerClient, pipelines: list[str]
) -> float:
    """Kill the raylet of a worker node that runs one of ``pipelines``; seconds until a result
    is read, through the front end, from the node it moved to."""
    listed = client.send(parse_command({"type": "list_pipelines"})).response["nodes"]
    workers = {node.node_id: node for node in cluster.workers}
    pipeline_id = next(p for p in pipelines if listed[p] in workers)
    victim = listed[pipeline_id]
    killed_at = time.monotonic()
    cluster.remove(workers[victim])
    while time.monotonic() - killed_at < 60:
        node = client.send(parse_command({"type": "list_pipelines"})).response["nodes"][pipeline_id]
        if node not in (victim, None) and client.consume_pipeline_result(pipeline_id).outputs:
            return time.monotonic() - killed_at
        time.sleep(0.02)
    raise RuntimeError("the pipeline did not produce a result on another node within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument("--requests", type=int, default=None, help="round trips per command")
    parser.add_argument(
        "--nodes", type=int, default=3, help="Ray nodes, the head included (at least 2)"
    )
    parser.add_argument(
        "--model",
        default="passthrough",
        help="model of the pipelines (default passthrough: the control path, not the model's "
        "CPU load, is measured)",
    )
    args = parser.parse_args()
    requests = args.requests or (100 if args.smoke else 2000)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from framepipe.cluster.app import shutdown_cluster

    report: dict[str, Any] = {"requests": requests, "nodes": args.nodes, "model": args.model}
    with tempfile.TemporaryDirectory(prefix="framepipe-bench-cluster-") as tmp:
        video = Path(tmp) / "video.mp4"
        make_test_video(video, frames=VIDEO_FRAMES, fps=VIDEO_FPS)
        # one slot per node: the pipelines spread (the model's node is preferred otherwise),
        # and one node stays free for the failover
        cluster = LocalRayCluster(nodes=args.nodes, camera_slots=1)
        front: FrontProcess | None = None
        local: ServeProcess | None = None
        try:
            ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
            front = FrontProcess(cluster.address, Path(tmp) / "front.log")
            local = ServeProcess(log_path=Path(tmp) / "local.log")
            front_client = SyncStreamManagerClient.init("127.0.0.1", front.port, 120.0)
            local_client = SyncStreamManagerClient.init(local.host, local.port, 120.0)
            pipelines = [init(front_client, args.model, video) for _ in range(args.nodes - 1)]
            local_id = init(local_client, args.model, video)
            control_paths(front_client, pipelines[0], local_client, local_id, 20)  # warm-up
            report.update(
                control_paths(front_client, pipelines[0], local_client, local_id, requests)
            )
            report["front_overhead_status_p50_ms"] = (
                report["front"]["status_p50_ms"] - report["local"]["status_p50_ms"]
            )
            report["failover_s"] = failover(cluster, front_client, pipelines)
            for pipeline_id in pipelines:
                front_client.terminate_pipeline(pipeline_id)
            local_client.terminate_pipeline(local_id)
        finally:
            if local is not None:
                local.stop()
            if front is not None:
                front.stop()
            if ray.is_initialized():
                shutdown_cluster()
                ray.shutdown()
            cluster.shutdown()
    if not args.json:
        for side in ("local", "front"):
            figures = report[side]
            print(
                f"{side:>5}: status p50 {figures['status_p50_ms']:.2f} ms, "
                f"p99 {figures['status_p99_ms']:.2f} ms; consume p50 "
                f"{figures['consume_p50_ms']:.2f} ms, p99 {figures['consume_p99_ms']:.2f} ms"
            )
        print(f"failover: {report['failover_s']:.2f} s (raylet killed -> first result elsewhere)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
