"""Control-plane benchmark: a real manager process driven over TCP.

Measures, in one run:

* manager time-to-accept: launch → first accepted TCP connection, against the floor of a bare
  interpreter that binds and listens (baseline);
* idle worker unique memory (USS of the worker), against a bare interpreter (baseline);
* init → first consumable result on a 720p H.264 file, cold spawn (baseline) vs warm pool;
* ``status`` round trip p50/p99 with 50 concurrent clients, with one hung (SIGSTOPped) worker
  present, against the same load without the hung worker (baseline).

``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe._serve_process import ServeProcess  # noqa: E402
from framepipe.protocol.framing import encode_message  # noqa: E402
from framepipe.server.worker.process import WORKER_PROCESS_NAME  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Manager(ServeProcess):
    """``framepipe serve`` on a port chosen here, so that the time until it accepts a
    connection is measured from the launch, without waiting for its announcement."""

    def __init__(self, env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        chosen = port or free_port()
        super().__init__(
            ("--port", str(chosen)),
            env={"PYTHONPATH": str(ROOT), **(env or {})},
            cwd=ROOT,
            ready_timeout_s=None,
            keep_lines=200,
        )
        self.port = chosen

    def time_to_accept(self, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return time.monotonic() - self.launched_at
            except OSError:
                time.sleep(0.002)
        raise RuntimeError("manager did not accept connections")

    def workers(self) -> list[psutil.Process]:
        """The pipeline workers: forked from the manager's process template (its forkserver),
        each named ``fp-worker``."""
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        return [p for p in tree if _name(p) == WORKER_PROCESS_NAME]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def request(port: int, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode_message(message))
        header = _recv(sock, 4)
        document: dict[str, Any] = json.loads(_recv(sock, int.from_bytes(header, "big")))
        return document


def _recv(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def uss_mb(pid: int, tree: bool) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if tree else [proc]
    return sum(p.memory_full_info().uss for p in procs) / 2**20


def init_message(video: Path, realtime: bool = False, model: str = "passthrough") -> dict[str, Any]:
    video_configuration: dict[str, Any] = {
        "type": "VideoConfiguration",
        "video_reference": str(video),
    }
    if realtime:
        video_configuration["realtime_replay"] = True
    return {
        "type": "init",
        "video_configuration": video_configuration,
        "processing_configuration": {"type": "ModelConfiguration", "model": model},
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
        "decoding_buffer_size": 8,
    }


def init_to_first_result(
    port: int, video: Path, realtime: bool = False, model: str = "passthrough"
) -> tuple[float, str]:
    started = time.perf_counter()
    reply = request(port, init_message(video, realtime, model))
    if reply["response"]["status"] != "success":
        raise RuntimeError(f"init failed: {reply['response']}")
    pipeline_id = reply["pipeline_id"]
    deadline = started + 30
    while time.perf_counter() < deadline:
        consumed = request(
            port, {"type": "consume_result", "pipeline_id": pipeline_id, "excluded_fields": []}
        )
        if consumed["response"].get("outputs"):
            return time.perf_counter() - started, pipeline_id
        time.sleep(0.002)
    raise RuntimeError("no result within 30 s")


def wait_idle_ready(manager: Manager, count: int, timeout: float = 60.0) -> None:
    """Until ``count`` idle workers run and have gone quiet (no CPU used for a moment: their
    imports are done), as a pool worker that has waited for its pipeline would be."""
    deadline = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < deadline:
        workers = manager.workers()
        if len(workers) >= count:
            used = sum(_tree_cpu(w) for w in workers)
            if last >= 0 and used - last < 0.01:
                return
            last = used
        time.sleep(0.25)
    raise RuntimeError(f"{count} idle workers not ready within {timeout} s")


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


def _tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def bench_accept(runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        manager = Manager()
        samples.append(manager.time_to_accept())
        manager.stop(60)
    baseline = []
    for _ in range(runs):
        port = free_port()
        code = f"import socket,time;s=socket.socket();s.bind(('127.0.0.1',{port}));s.listen();time.sleep(5)"
        launched = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code])
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    baseline.append(time.perf_counter() - launched)
                    break
            except OSError:
                time.sleep(0.002)
        proc.kill()
        proc.wait()
    return {
        "manager_accept_ms": 1000 * statistics.median(samples),
        "manager_accept_ms_max": 1000 * max(samples),
        "bare_python_accept_ms": 1000 * statistics.median(baseline),
    }


def bench_idle_memory() -> dict[str, float]:
    manager = Manager({"STREAM_API_PRELOADED_PROCESSES": "1"})
    try:
        manager.time_to_accept()
        wait_idle_ready(manager, 1)
        time.sleep(1.0)
        (worker,) = manager.workers()
        result = {
            "idle_worker_uss_mb": uss_mb(worker.pid, tree=True),
            "idle_worker_process_only_uss_mb": uss_mb(worker.pid, tree=False),
            "manager_uss_mb": uss_mb(manager.proc.pid, tree=False),
        }
    finally:
        manager.stop(60)
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(0.5)
    result["bare_python_uss_mb"] = uss_mb(bare.pid, tree=False)
    bare.kill()
    bare.wait()
    return result


def bench_init(video: Path, runs: int) -> dict[str, Any]:
    cold: list[float] = []
    manager = Manager()
    try:
        manager.time_to_accept()
        for _ in range(runs):
            seconds, pipeline_id = init_to_first_result(manager.port, video)
            cold.append(seconds)
            request(manager.port, {"type": "terminate", "pipeline_id": pipeline_id})
    finally:
        manager.stop(60)
    warm: list[float] = []
    manager = Manager({"STREAM_API_PRELOADED_PROCESSES": "1"})
    try:
        manager.time_to_accept()
        for _ in range(runs):
            wait_idle_ready(manager, 1)
            seconds, pipeline_id = init_to_first_result(manager.port, video)
            warm.append(seconds)
            request(manager.port, {"type": "terminate", "pipeline_id": pipeline_id})
    finally:
        manager.stop(60)
    return {
        "init_to_first_result_ms_cold": 1000 * statistics.median(cold),
        "init_to_first_result_ms_warm": 1000 * statistics.median(warm),
        "init_cold_samples_ms": [round(1000 * s, 1) for s in cold],
        "init_warm_samples_ms": [round(1000 * s, 1) for s in warm],
    }


def bench_init_model(video: Path, runs: int, model: str = "centerface") -> dict[str, Any]:
    """Warm-pool init with a real model: loaded ahead of time by the idle worker
    (FRAMEPIPE_PRELOAD_MODELS) against loaded by the `init` (baseline)."""
    results: dict[str, Any] = {}
    for key, env in (
        ("init_to_first_result_ms_warm_model_preloaded", {"FRAMEPIPE_PRELOAD_MODELS": model}),
        ("init_to_first_result_ms_warm_model_loaded_at_init", {}),
    ):
        samples: list[float] = []
        manager = Manager({"STREAM_API_PRELOADED_PROCESSES": "1", **env})
        try:
            manager.time_to_accept()
            for _ in range(runs):
                wait_idle_ready(manager, 1)
                seconds, pipeline_id = init_to_first_result(manager.port, video, model=model)
                samples.append(seconds)
                request(manager.port, {"type": "terminate", "pipeline_id": pipeline_id})
            if key.endswith("preloaded"):
                wait_idle_ready(manager, 1)
                (worker,) = manager.workers()
                results["idle_worker_uss_mb_model_preloaded"] = uss_mb(worker.pid, tree=True)
        finally:
            manager.stop(60)
        results[key] = 1000 * statistics.median(samples)
    return results


def model_available(model: str) -> bool:
    try:
        from framepipe.core.processing import ModelRegistry, ProcessingSettings

        return model in ModelRegistry.from_settings(ProcessingSettings.from_env()).names()
    except Exception:
        return False


async def _load(port: int, request: dict[str, Any], clients: int, per_client: int) -> list[float]:
    """``clients`` concurrent clients, each sending ``per_client`` requests one after another
    (one connection per request, as the protocol does); returns every round trip."""
    message = encode_message(request)
    latencies: list[float] = []

    async def one_client() -> None:
        for _ in range(per_client):
            began = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message)
            header = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(header, "big"))
            writer.close()
            latencies.append(time.perf_counter() - began)
            if b'"success"' not in body[:200]:
                raise RuntimeError(body[:300])

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def bench_status(video: Path, clients: int, per_client: int, rounds: int = 8) -> dict[str, float]:
    """Status under load, with one hung worker and without, interleaved in ``rounds`` so that
    the machine's load (shared with other jobs) falls on both alike."""
    manager = Manager({"FRAMEPIPE_COMMAND_TIMEOUT": "120"})
    loaded: list[float] = []
    baseline: list[float] = []
    floor: list[float] = []
    cpu = {"status": 0.0, "list": 0.0}
    try:
        manager.time_to_accept()
        _, healthy = init_to_first_result(manager.port, video, realtime=True)
        status = {"type": "status", "pipeline_id": healthy}
        known = {w.pid for w in manager.workers()}
        _, hung_id = init_to_first_result(manager.port, video, realtime=True)
        (hung,) = [w for w in manager.workers() if w.pid not in known]
        asyncio.run(_load(manager.port, status, clients, 5))  # warm-up, not counted
        chunk = max(1, per_client // rounds)
        server = server_cpu_per_request(manager, healthy, clients, chunk * rounds)
        for _ in range(rounds):
            os.kill(hung.pid, signal.SIGSTOP)
            # A request to the hung pipeline stays in flight while the load runs.
            waiter = threading.Thread(
                target=request,
                args=(manager.port, {"type": "status", "pipeline_id": hung_id}, 300),
                daemon=True,
            )
            waiter.start()
            time.sleep(0.1)
            before = _cpu(manager.proc.pid)
            loaded += asyncio.run(_load(manager.port, status, clients, chunk))
            middle = _cpu(manager.proc.pid)
            floor += asyncio.run(_load(manager.port, {"type": "list_pipelines"}, clients, chunk))
            cpu["status"] += middle - before
            cpu["list"] += _cpu(manager.proc.pid) - middle
            os.kill(hung.pid, signal.SIGCONT)
            waiter.join(30)
            time.sleep(0.5)  # the resumed worker catches up on its backlog: let that pass
            baseline += asyncio.run(_load(manager.port, status, clients, chunk))
    finally:
        manager.stop(60)
    return {
        "status_rtt_p50_ms": 1000 * _percentile(loaded, 50),
        "status_rtt_p99_ms": 1000 * _percentile(loaded, 99),
        "status_rtt_p50_ms_no_hung_worker": 1000 * _percentile(baseline, 50),
        "status_rtt_p99_ms_no_hung_worker": 1000 * _percentile(baseline, 99),
        "list_rtt_p50_ms_same_load": 1000 * _percentile(floor, 50),
        "list_rtt_p99_ms_same_load": 1000 * _percentile(floor, 99),
        "status_requests": float(len(loaded)),
        "manager_cpu_us_per_status": 1e6 * cpu["status"] / len(loaded),
        "manager_cpu_us_per_list": 1e6 * cpu["list"] / len(floor),
        **server,
    }


def server_cpu_per_request(
    manager: Manager, pipeline_id: str, clients: int, per_client: int
) -> dict[str, float]:
    """The server's CPU (the manager and every process under it) per ``status`` and per empty
    ``consume_result`` of a running pipeline, less what the server spends running its
    pipelines meanwhile: the same process tree's CPU over a quiet window of the same length,
    measured just before each load. The consumed pipeline is muted and drained first, so every
    consume finds its buffer empty."""
    tree = psutil.Process(manager.proc.pid)
    figures: dict[str, float] = {}
    # CPU times tick every 10 ms: enough requests that their cost spans many ticks
    per_client = max(per_client, -(-600 // clients))
    mute = request(manager.port, {"type": "mute", "pipeline_id": pipeline_id})
    if mute["response"]["status"] != "success":
        raise RuntimeError(f"mute failed: {mute['response']}")
    time.sleep(0.5)  # frames in flight land
    consume = {"type": "consume_result", "pipeline_id": pipeline_id, "max_entries": 1000}
    while request(manager.port, consume)["response"].get("outputs"):
        pass
    consume = {"type": "consume_result", "pipeline_id": pipeline_id}
    for name, message in (
        ("status", {"type": "status", "pipeline_id": pipeline_id}),
        ("empty_consume", consume),
    ):
        started, before = time.perf_counter(), _tree_cpu(tree)
        latencies = asyncio.run(_load(manager.port, message, clients, per_client))
        spent, elapsed = _tree_cpu(tree) - before, time.perf_counter() - started
        if name == "empty_consume":
            body = request(manager.port, message)["response"]
            if body.get("outputs"):
                raise RuntimeError("the muted pipeline's buffer was not empty")
        quiet_before = _tree_cpu(tree)
        time.sleep(elapsed)
        quiet = _tree_cpu(tree) - quiet_before
        figures[f"server_cpu_us_per_{name}"] = 1e6 * max(0.0, spent - quiet) / len(latencies)
    request(manager.port, {"type": "resume", "pipeline_id": pipeline_id})
    return figures


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="2 runs per figure (about 40 s)")
    parser.add_argument(
        "--smoke", action="store_true", help="1 run of each, light load: does it still run?"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, 2)
    if args.smoke:
        args.runs, args.clients, args.per_client = 1, 8, 8

    from framepipe.testing.media import make_test_video

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-control-") as scratch:
        video = make_test_video(
            Path(scratch) / "720p.mp4", frames=300, width=1280, height=720, fps=30.0
        ).path
        # 60 s at 30 fps (replayed in real time): outlives the status measurement.
        long_video = make_test_video(
            Path(scratch) / "long.mp4", frames=1800, width=320, height=240
        ).path
        results.update(bench_accept(args.runs))
        results.update(bench_idle_memory())
        results.update(bench_init(video, args.runs))
        if model_available("centerface") and not args.smoke:
            results.update(bench_init_model(video, args.runs))
        rounds = 2 if args.smoke else 8
        results.update(bench_status(long_video, args.clients, args.per_client, rounds))

    rows = [
        ("manager time-to-accept (ms)", "manager_accept_ms", "bare_python_accept_ms", "< 1000"),
        (
            "idle worker USS (MB)",
            "idle_worker_uss_mb",
            "bare_python_uss_mb",
            "< 150",
        ),
        (
            "init -> first result, warm pool (ms)",
            "init_to_first_result_ms_warm",
            "init_to_first_result_ms_cold",
            "< 500",
        ),
        ("init -> first result, cold spawn (ms)", "init_to_first_result_ms_cold", None, "< 3000"),
        (
            "status p50, 50 clients + hung worker (ms)",
            "status_rtt_p50_ms",
            "status_rtt_p50_ms_no_hung_worker",
            "",
        ),
        (
            "status p99, 50 clients + hung worker (ms)",
            "status_rtt_p99_ms",
            "status_rtt_p99_ms_no_hung_worker",
            "< 20",
        ),
        ("list_pipelines p50, same load (ms)", "list_rtt_p50_ms_same_load", None, "floor"),
        ("list_pipelines p99, same load (ms)", "list_rtt_p99_ms_same_load", None, "floor"),
        (
            "init -> first result, warm + centerface preloaded (ms)",
            "init_to_first_result_ms_warm_model_preloaded",
            "init_to_first_result_ms_warm_model_loaded_at_init",
            "",
        ),
        (
            "idle worker USS, centerface preloaded (MB)",
            "idle_worker_uss_mb_model_preloaded",
            "idle_worker_uss_mb",
            "< 150",
        ),
        ("server CPU per status (us)", "server_cpu_us_per_status", None, "<= 200"),
        (
            "server CPU per empty consume_result (us)",
            "server_cpu_us_per_empty_consume",
            None,
            "<= 150",
        ),
        (
            "manager CPU per status request (us)",
            "manager_cpu_us_per_status",
            "manager_cpu_us_per_list",
            "vs list",
        ),
    ]
    print(f"{'metric':<44} {'framepipe':>10} {'baseline':>10}  target")
    for label, key, base, target in rows:
        if key not in results:
            continue
        baseline = f"{results[base]:>10.1f}" if base else f"{'-':>10}"
        print(f"{label:<44} {results[key]:>10.1f} {baseline}  {target}")
    print(
        "baselines: bare interpreter (accept, USS); cold spawn (warm init); no hung worker (status);"
        " list_pipelines (no worker round trip) is the TCP path's floor under the same load"
    )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
