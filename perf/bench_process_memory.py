"""What a decode process holds, and what its decode threads cost: USS idle and running, CPU
per frame, for each backend with the codec's own thread count and with one thread.

Each configuration runs in a fresh child of framepipe's decode forkserver (the one decode
processes come from, numpy, OpenCV and PyAV preloaded), which opens the same 720p H.264 file,
reports its USS (``smaps_rollup``, as the RAM budget reads it) once opened ("idle"), decodes
``--frames`` frames into one buffer shaped as its ring slot (native 4:2:0 for PyAV, BGR for
OpenCV), as a decode process does, and reports its USS again ("running") and its CPU (all
threads) per frame. Configurations alternate, rounds repeat, the median is reported.

    python perf/bench_process_memory.py [--video FILE] [--frames 300] [--rounds 3] [--json]
                                        [--no-freeze] [--smoke]

With ``--server``: the USS of each kind of process of a real ``framepipe serve`` (one idle
worker in its pool, the CenterFace service preloaded), idle, then running one passthrough
and one CenterFace pipeline (5 fps) on the 720p file, each drained by a client; processes
told apart as ``framepipe bench`` does (framepipe/bench/_procs.py).

    python perf/bench_process_memory.py --server --video FILE [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1024 * 1024


def _uss(pid: int | None = None) -> int:
    from framepipe.core.budget import process_unique_bytes

    return process_unique_bytes(os.getpid() if pid is None else pid)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def decode_child(path: str, backend: str, threads: int, frames: int, conn: Any) -> None:
    """In a forkserver child: open, measure, decode ``frames`` frames, measure again."""
    import numpy as np

    from framepipe.core.sources.backends import BackendOptions, make_backend
    from framepipe.core.sources.entities import DecoderBackendName, SourceKind

    source = make_backend(
        DecoderBackendName(backend), path, SourceKind.FILE, BackendOptions(threads=threads)
    )
    info = source.open()
    from framepipe.core.pixels import FrameLayout

    layout = info.layout or FrameLayout.bgr(info.width, info.height)
    out = np.empty(layout.slot_shape, np.uint8)  # a ring slot: native 4:2:0 (PyAV) or BGR
    idle = _uss()
    cpu0 = time.process_time()
    n = 0
    peak_threads = _threads()
    while n < frames and source.grab():
        source.retrieve(out)
        n += 1
        if n == 10:
            peak_threads = max(peak_threads, _threads())
    cpu = time.process_time() - cpu0
    running = _uss()
    source.close()
    conn.send(
        {
            "idle": idle,
            "running": running,
            "cpu_ms": cpu / max(1, n) * 1e3,
            "frames": n,
            "threads": peak_threads,
        }
    )
    conn.close()


def measure(path: Path, backend: str, threads: int, frames: int) -> dict[str, Any]:
    from framepipe.core.sources.launcher import decode_context

    context = decode_context()
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=decode_child, args=(str(path), backend, threads, frames, child), daemon=True
    )
    process.start()
    child.close()
    try:
        if not parent.poll(120):
            raise RuntimeError(f"{backend} threads={threads}: no answer in 120 s")
        result: dict[str, Any] = parent.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        process.close()
    return result


def _uss_by_process(root: int) -> list[dict[str, Any]]:
    from framepipe.bench._procs import TreeSampler, classify_framepipe
    from framepipe.core.budget import process_unique_bytes

    sampler = TreeSampler(root=root, classify=classify_framepipe)
    infos = sampler.tree()
    rows = []
    for pid, kind in sorted(sampler._kinds(infos).items()):
        rows.append(
            {
                "kind": kind,
                "pid": pid,
                "name": infos[pid].comm,
                "uss_mb": process_unique_bytes(pid) / MB,
            }
        )
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, str]:
    kinds: dict[str, list[float]] = {}
    for row in rows:
        kinds.setdefault(row["kind"], []).append(row["uss_mb"])
    return {k: ", ".join(f"{v:.1f}" for v in sorted(vs)) for k, vs in sorted(kinds.items())}


def _request(address: tuple[str, int], message: dict[str, Any]) -> dict[str, Any]:
    import socket

    from framepipe.protocol.framing import encode_message

    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(encode_message(message))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data[4:])
    return reply


def server_main(video: Path, as_json: bool) -> int:
    """USS by kind of process of a real server, idle and running."""
    import threading

    from framepipe._serve_process import ServeProcess

    env = {"STREAM_API_PRELOADED_PROCESSES": "1", "FRAMEPIPE_PRELOAD_MODELS": "centerface"}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(env=env, log_path=Path(tmp) / "serve.log")
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                log = (Path(tmp) / "serve.log").read_text()
                if "started ahead of time" in log or "could not start the inference" in log:
                    break
                time.sleep(0.5)
            time.sleep(3)
            idle = _uss_by_process(server.pid)
            address = (server.host, server.port)
            video_configuration = {
                "type": "VideoConfiguration",
                "video_reference": str(video),
                "max_fps": None,
                "realtime_replay": True,  # as the bench: a file played at its own pace
                "source_buffer_filling_strategy": "DROP_OLDEST",
                "source_buffer_consumption_strategy": "EAGER",
            }
            ids = []
            for model in ("passthrough", "centerface"):
                message: dict[str, Any] = {
                    "type": "init",
                    "video_configuration": dict(video_configuration),
                    "sink_configuration": {
                        "type": "MemorySinkConfiguration",
                        "results_buffer_size": 64,
                    },
                    "processing_configuration": {"type": "ModelConfiguration", "model": model},
                }
                if model != "passthrough":
                    message["video_configuration"]["max_fps"] = 5
                reply = _request(address, message)
                if reply["response"].get("status") != "success":
                    raise RuntimeError(f"init failed: {reply}")
                ids.append(reply["pipeline_id"])
            stop = threading.Event()

            def drain() -> None:
                while not stop.is_set():
                    for pipeline_id in ids:
                        _request(
                            address,
                            {
                                "type": "consume_result",
                                "pipeline_id": pipeline_id,
                                "max_entries": 64,
                            },
                        )
                    time.sleep(0.2)

            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            time.sleep(12)
            running = _uss_by_process(server.pid)
            stop.set()
            drainer.join(5)
        finally:
            server.stop()
    result = {"idle": idle, "running": running}
    if as_json:
        print(json.dumps(result))
    else:
        for phase, rows in result.items():
            print(f"{phase}: USS MB by kind (one figure per process)")
            for kind, figures in _summary(rows).items():
                print(f"  {kind:<20} {figures}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="a 720p H.264 file (default: generated)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="opencv,pyav")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="start the forkserver without gc.freeze() after its preload (the former template)",
    )
    parser.add_argument("--server", action="store_true", help="USS by kind of a real server")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="a short run that checks the benchmark still works"
    )
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.rounds = min(args.frames, 30), 1
    if args.server:
        if args.video is None:
            parser.error("--server needs --video (a 720p H.264 file)")
        return server_main(args.video, args.json)
    from framepipe.core.sources import launcher, warm_forkserver

    if args.no_freeze:
        launcher.PRELOAD[-1] = "gc"  # a module that does nothing on import, in its place

    with tempfile.TemporaryDirectory() as tmp:
        path = args.video
        if path is None:
            from framepipe.testing import make_test_video

            path = Path(tmp) / "720p.mp4"
            make_test_video(path, frames=args.frames, width=1280, height=720, gop=60)
        warm_forkserver()
        configs = [(b, t) for b in args.backends.split(",") for t in (0, 1)]
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for backend, threads in configs:
                samples[(backend, threads)].append(measure(path, backend, threads, args.frames))
    rows = []
    for (backend, threads), runs in samples.items():
        rows.append(
            {
                "backend": backend,
                "threads": threads or "codec default",
                "os_threads": max(r["threads"] for r in runs),
                "uss_idle_mb": round(statistics.median(r["idle"] for r in runs) / MB, 1),
                "uss_running_mb": round(statistics.median(r["running"] for r in runs) / MB, 1),
                "cpu_ms_per_frame": round(statistics.median(r["cpu_ms"] for r in runs), 3),
                "frames": runs[0]["frames"],
            }
        )
    if args.json:
        by_config = {
            f"{r['backend']}_threads_{'default' if r['threads'] == 'codec default' else r['threads']}": r
            for r in rows
        }
        print(
            json.dumps(
                {"gc_freeze": not args.no_freeze, "decode_process": rows, "by_config": by_config}
            )
        )
    else:
        print(f"template with gc.freeze(): {not args.no_freeze}")
        print("backend  threads         OS threads  USS idle MB  USS running MB  CPU ms/frame")
        for r in rows:
            print(
                f"{r['backend']:<8} {r['threads']!s:<15} {r['os_threads']:>10}  "
                f"{r['uss_idle_mb']:>11}  {r['uss_running_mb']:>14}  {r['cpu_ms_per_frame']:>12}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
