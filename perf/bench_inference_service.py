"""The shared inference service, end to end: CenterFace on 720p video through the real server.

In one run, on the same files:

* **the loop** a user would write: one process, ``cv2.VideoCapture`` → ``cv2.resize`` and
  letterbox → float32 CHW → an ONNX Runtime session created with its default options →
  CenterFace decoding (framepipe's, so both find the same faces) — every frame;
* **framepipe**: ``framepipe serve``, pipelines on the same model (every frame: WAIT/LAZY,
  the model in one inference service shared by them all), results drained by a client.
  One pipeline; four pipelines on four files; four on one file.

And the floor, in the same run: **the model's ceiling** (``model_ceiling_fps``,
``model_cpu_ms_per_run``): a bare session with the service's own settings (threads, spinning,
IOBinding: framepipe's ``OnnxRunner``), K concurrent runs (the service's default K: one per
usable core) on a prepared input of the size a 720p frame gets, no decode, no pre- or
post-processing; and **plain decode** (``plain_decode_ms``): a plain PyAV loop decoding the
same 720p file to ``to_ndarray()``, CPU per frame. The ceiling is measured right before the
pipelines run and again right after (``model_ceiling_fps_before`` / ``_after``): the machine's
speed drifts by several percent within minutes, so the ratios divide by the mean of the two,
which brackets the pipelines' own minutes. ``outside_model_ms_n1`` =
``cpu_ms_per_frame_n1 - model_cpu_ms_per_run - plain_decode_ms``: what the server spends per
frame besides decoding and the model (the preprocess, the hand-offs, the post-processing).

fps and CPU per frame are measured over a steady window (every process of the server's tree,
or the loop's own process), after the start and before the end; USS is summed over every
process of the server (its rings and status blocks in /dev/shm reported apart, as ``shm_mb``).
Latency: one pipeline on a live 720p30 RTSP stream from GStreamer's test server, capture →
result (the pipeline's own end-to-end percentiles), when that server is installed.

``--json`` prints one JSON object as the last line; ``--quick`` and ``--smoke`` are shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe._serve_process import ServeProcess  # noqa: E402
from framepipe.client import SyncStreamManagerClient  # noqa: E402
from framepipe.data import demo_video_path  # noqa: E402

# -- inputs -------------------------------------------------------------------------------------


def make_video(path: Path, frames: int, fps: int = 30) -> Path:
    """A 1280x720 H.264 file of ``frames`` frames: the bundled face video, looped."""
    import av

    capture = cv2.VideoCapture(str(demo_video_path()))
    source = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        source.append(frame)
    capture.release()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "g": str(fps)}
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(source[i % len(source)], format="bgr24")
            picture.pts = i
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


# -- the loop a user writes ---------------------------------------------------------------------


def run_loop(video: Path, model_path: Path, skip: int) -> dict[str, float]:
    """fps and CPU ms per frame of decode → resize → default ORT session → decode, measured
    after the first ``skip`` frames (the session's first runs are slow)."""
    import onnxruntime as ort

    from framepipe.core.processing.postprocess import Thresholds, decode_centerface
    from framepipe.ext._preprocess import ResizePlan

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    plan = ResizePlan(720, 1280, 384, 640, True)
    thresholds = Thresholds(confidence=0.5, iou=0.3, max_detections=300)
    capture = cv2.VideoCapture(str(video))
    frames = faces = 0
    started = cpu0 = 0.0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if frames == skip:
            started, cpu0 = time.perf_counter(), time.process_time()
        image = cv2.resize(frame, (640, 360))
        image = cv2.copyMakeBorder(image, 0, 24, 0, 0, cv2.BORDER_CONSTANT, value=0)
        blob = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32).transpose(2, 0, 1)[None]
        heatmap, scale, offset, landmarks = session.run(None, {name: np.ascontiguousarray(blob)})
        found = decode_centerface(heatmap[0], scale[0], offset[0], landmarks[0], plan, thresholds)
        faces += len(found)
        frames += 1
    capture.release()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    counted = frames - skip
    return {
        "loop_fps": counted / elapsed,
        "loop_cpu_ms_per_frame": 1000 * cpu / counted,
        "loop_frames": float(frames),
        "loop_faces": float(faces),
    }


# -- the floor: the model alone, decode alone ----------------------------------------------------


def usable_cores() -> int:
    """The inference service's default K on the CPU (concurrent runs): one per usable core,
    as :class:`framepipe.core.inference.InferenceEngine` decides it."""
    return max(1, len(os.sched_getaffinity(0)))


def run_model_ceiling(runs: int, warmup: int = 4) -> dict[str, float]:
    """K threads running the service's own session (framepipe's OnnxRunner, the settings the
    service reads) on a prepared 720p-sized input: fps and CPU ms per run, nothing else."""
    import threading

    from framepipe.core.processing.model import LoadedModel
    from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings

    settings = ProcessingSettings.from_env()
    model = LoadedModel(ModelRegistry.from_settings(settings).get("centerface"), settings)
    height, width = model.input_hw(720, 1280)
    k = usable_cores()
    rng = np.random.default_rng(0)
    inputs = [
        rng.random((1, 3, height, width), dtype=np.float32) * 255 for _ in range(k)
    ]  # one per thread, as the service's threads each fill their own
    for _ in range(warmup):
        model.runner.run(inputs[0])
    per_thread = max(1, runs // k)

    def work(i: int) -> None:
        for _ in range(per_thread):
            model.runner.run(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(k)]
    started, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    done = per_thread * k
    return {
        "model_ceiling_fps": done / elapsed,
        "model_cpu_ms_per_run": 1000 * cpu / done,
        "model_concurrency": float(k),
        "model_input_height": float(height),
        "model_input_width": float(width),
    }


def bracketed_ceiling(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The ceiling measured on both sides of the pipelines' runs: each side's figures, and
    their means as ``model_ceiling_fps`` and ``model_cpu_ms_per_run``."""
    result = dict(before)
    for key in ("model_ceiling_fps", "model_cpu_ms_per_run"):
        result[f"{key}_before"] = before[key]
        result[f"{key}_after"] = after[key]
        result[key] = (before[key] + after[key]) / 2
    return result


def run_plain_decode(video: Path) -> dict[str, float]:
    """A plain PyAV loop over the whole file (threaded decode, as framepipe's backend): each
    frame decoded and copied out with ``to_ndarray()``; CPU ms per frame of this process."""
    from framepipe.bench._calibrate import plain_decode_cpu_s

    return {"plain_decode_ms": 1000 * plain_decode_cpu_s(str(video), max_frames=1 << 30)}


# -- framepipe ----------------------------------------------------------------------------------


class Server:
    """``framepipe serve`` on a free port (:class:`~framepipe._serve_process.ServeProcess`, its output
    in ``log_path``), with the model's service started ahead of time."""

    def __init__(self, log_path: Path) -> None:
        env = {
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "FRAMEPIPE_PRELOAD_MODELS": "centerface",
        }
        self.process = ServeProcess(env=env, log_path=log_path, ready_timeout_s=120)
        self.proc, self.port = self.process.proc, self.process.port
        deadline = time.monotonic() + 120
        while "started ahead of time" not in log_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.process.kill()
                tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
                raise RuntimeError("the model's service did not start:\n" + tail)
            time.sleep(0.1)
        self.client = SyncStreamManagerClient("127.0.0.1", self.port, operations_timeout=60)

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def uss_mb(self) -> float:
        from framepipe.core.budget import process_unique_bytes

        return sum(process_unique_bytes(p.pid) for p in self.tree()) / 2**20

    def shm_mb(self) -> float:
        from framepipe.core.budget import shared_segments_bytes

        return shared_segments_bytes({p.pid for p in self.tree()}) / 2**20

    def stop(self) -> None:
        self.process.stop(60)


@contextmanager
def server() -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="fp-bench-server-") as scratch:
        running = Server(Path(scratch) / "serve.log")
        try:
            yield running
        finally:
            running.stop()


def init(srv: Server, reference: str, **video: Any) -> str:
    from framepipe.protocol.payloads import (
        InitialisePipelinePayload,
        MemorySinkConfiguration,
        ModelConfiguration,
        VideoConfiguration,
    )

    payload = InitialisePipelinePayload(
        video_configuration=VideoConfiguration(video_reference=reference, **video),
        processing_configuration=ModelConfiguration(model="centerface"),
        sink_configuration=MemorySinkConfiguration(results_buffer_size=64),
    )
    pipeline_id = srv.client.initialise_pipeline(payload).context.pipeline_id
    assert pipeline_id
    return pipeline_id


def run_framepipe(srv: Server, files: list[Path], frames: int, skip: int) -> dict[str, float]:
    """Pipelines on ``files`` (every frame), drained by this process; fps, CPU per frame and
    USS over the window between the ``skip``-th result of every pipeline and the moment the
    first pipeline has ``frames - skip`` results."""
    ids = [init(srv, str(f), source_buffer_filling_strategy="WAIT") for f in files]
    counts = dict.fromkeys(ids, 0)
    window: dict[str, float] = {}
    uss: list[float] = []
    shm: list[float] = []
    deadline = time.monotonic() + 600
    end_at = frames - skip
    while time.monotonic() < deadline:
        for pipeline_id in ids:
            entries = srv.client.consume_pipeline_result(
                pipeline_id, excluded_fields=["image"], max_entries=256
            ).entries
            counts[pipeline_id] += len(entries)
        if "start" not in window and min(counts.values()) >= skip:
            window.update(start=time.perf_counter(), cpu0=srv.cpu_s(), n0=sum(counts.values()))
        if "start" in window and len(uss) < 3 and time.perf_counter() - window["start"] > len(uss):
            uss.append(srv.uss_mb())
            shm.append(srv.shm_mb())
        # (and results inside the window: a drain may have taken one pipeline past end_at)
        if (
            "start" in window
            and max(counts.values()) >= end_at
            and sum(counts.values()) > window["n0"]
        ):
            elapsed = time.perf_counter() - window["start"]
            cpu = srv.cpu_s() - window["cpu0"]
            done = sum(counts.values()) - window["n0"]
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"pipelines did not deliver in time: {counts}")
    for pipeline_id in ids:
        srv.client.terminate_pipeline(pipeline_id)
    return {
        "fps": done / elapsed,
        "cpu_ms_per_frame": 1000 * cpu / done,
        "uss_mb": max(uss) if uss else srv.uss_mb(),
        "shm_mb": max(shm) if shm else srv.shm_mb(),
        "frames_in_window": float(done),
    }


def run_latency(srv: Server, seconds: float) -> dict[str, float] | None:
    """One pipeline on a live 720p30 RTSP stream: the pipeline's capture → result percentiles."""
    from framepipe.testing.rtsp import RtspServer, system_python_has_gst_rtsp

    if not system_python_has_gst_rtsp():
        return None
    with tempfile.TemporaryDirectory(prefix="fp-bench-rtsp-") as scratch:
        video = make_video(Path(scratch) / "live.mp4", frames=int(30 * (seconds + 15)))
        camera = RtspServer(file=video, fps=30)
        camera.start()
        try:
            pipeline_id = init(srv, camera.url)
            deadline = time.monotonic() + seconds + 30
            first = None
            while time.monotonic() < deadline:
                got = srv.client.consume_pipeline_result(
                    pipeline_id, excluded_fields=["image"], max_entries=256
                ).entries
                if got and first is None:
                    first = time.monotonic()
                if first is not None and time.monotonic() - first >= seconds:
                    break
                time.sleep(0.02)
            report = srv.client.get_status(pipeline_id).report["framepipe"]
            srv.client.terminate_pipeline(pipeline_id)
        finally:
            camera.kill()
    latency = report["latency_ms"][0]
    source = report["sources"][0]
    return {
        "latency_p50_ms": float(latency["e2e_p50"]),
        "latency_p99_ms": float(latency["e2e_p99"]),
        "latency_samples": float(latency["samples"]),
        "latency_source_fps": float(source["measured_fps"]),
        "latency_frames_dropped": float(sum(source["frames_dropped"].values())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument("--quick", action="store_true", help="shorter files (about 2 minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny files: does it still run?")
    args = parser.parse_args()
    # A window needs results on both sides of it: files longer than a drain of the pipelines'
    # sinks (64 results each), so the window's first and last polls cannot be the same.
    frames = 120 if args.smoke else 300 if args.quick else 600
    skip = 10 if args.smoke else 30
    latency_s = 3.0 if args.smoke else 10.0 if args.quick else 20.0

    from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings

    model_path = ModelRegistry.from_settings(ProcessingSettings.from_env()).get("centerface").path
    result: dict[str, Any] = {
        "benchmark": "inference_service",
        "cores": len(os.sched_getaffinity(0)),
    }
    with tempfile.TemporaryDirectory(prefix="fp-bench-service-") as scratch:
        root = Path(scratch)
        first = make_video(root / "v0.mp4", frames)
        files = [first]
        for i in range(1, 4):  # distinct files (distinct decoders), the same content
            copy = root / f"v{i}.mp4"
            copy.write_bytes(first.read_bytes())
            files.append(copy)
        loops = [run_loop(first, model_path, skip) for _ in range(1 if args.smoke else 2)]
        result["loop_fps"] = statistics.median(r["loop_fps"] for r in loops)
        result["loop_cpu_ms_per_frame"] = statistics.median(
            r["loop_cpu_ms_per_frame"] for r in loops
        )
        result["loop_faces"] = loops[0]["loop_faces"]
        result["plain_decode_ms"] = statistics.median(
            run_plain_decode(first)["plain_decode_ms"] for _ in range(1 if args.smoke else 3)
        )
        ceiling_runs = 40 if args.smoke else 200
        before = run_model_ceiling(runs=ceiling_runs)
        with server() as srv:
            one = run_framepipe(srv, files[:1], frames, skip)
            result["fps_n1"] = one["fps"]
            result["ratio_n1"] = one["fps"] / result["loop_fps"]
            result["cpu_ms_per_frame_n1"] = one["cpu_ms_per_frame"]
            four = run_framepipe(srv, files, frames, skip)
            result["fps_total_n4"] = four["fps"]
            result["ratio_n4"] = four["fps"] / result["loop_fps"]
            result["cpu_ms_per_frame_n4"] = four["cpu_ms_per_frame"]
            result["uss_total_mb_n4"] = four["uss_mb"]
            result["shm_mb_n4"] = four["shm_mb"]
            after = run_model_ceiling(runs=ceiling_runs)  # the server idle meanwhile
            result.update(bracketed_ceiling(before, after))
            same = run_framepipe(srv, [first] * 4, frames, skip)
            result["fps_total_n4_same_file"] = same["fps"]
            latency = run_latency(srv, latency_s)
            if latency is not None:
                result.update(latency)
    result["load_average"] = os.getloadavg()[0]
    result["fps_n1_of_ceiling"] = result["fps_n1"] / result["model_ceiling_fps"]
    result["fps_total_n4_of_ceiling"] = result["fps_total_n4"] / result["model_ceiling_fps"]
    result["outside_model_ms_n1"] = (
        result["cpu_ms_per_frame_n1"] - result["model_cpu_ms_per_run"] - result["plain_decode_ms"]
    )
    targets = [
        ("fps_n1 >= 0.85 x model_ceiling_fps", result["fps_n1_of_ceiling"] >= 0.85),
        ("fps_total_n4 >= 0.85 x model_ceiling_fps", result["fps_total_n4_of_ceiling"] >= 0.85),
        ("outside_model_ms_n1 <= 2.0", result["outside_model_ms_n1"] <= 2.0),
        ("ratio_n1 >= 1.25", result["ratio_n1"] >= 1.25),
        ("fps_total_n4 >= 1.3 x loop_fps", result["fps_total_n4"] >= 1.3 * result["loop_fps"]),
        (
            "cpu_ms_per_frame_n4 <= 0.8 x loop",
            result["cpu_ms_per_frame_n4"] <= 0.8 * result["loop_cpu_ms_per_frame"],
        ),
        ("uss_total_mb_n4 < 800", result["uss_total_mb_n4"] < 800),
    ]
    if "latency_p50_ms" in result:
        targets += [
            ("latency_p50_ms < 60", result["latency_p50_ms"] < 60),
            ("latency_p99_ms < 120", result["latency_p99_ms"] < 120),
        ]
    print("CenterFace on 1280x720, every frame, CPU provider")
    print(
        f"  model ceiling (bare session, service settings, K={int(result['model_concurrency'])}): "
        f"{result['model_ceiling_fps']:.1f} fps ({result['model_ceiling_fps_before']:.1f} before "
        f"the pipelines, {result['model_ceiling_fps_after']:.1f} after), "
        f"{result['model_cpu_ms_per_run']:.1f} ms CPU/run; "
        f"plain PyAV decode {result['plain_decode_ms']:.2f} ms CPU/frame"
    )
    print(
        f"  loop (cv2 + default ORT session): {result['loop_fps']:.1f} fps, {result['loop_cpu_ms_per_frame']:.1f} ms CPU/frame"
    )
    print(
        f"  framepipe, 1 pipeline:  {result['fps_n1']:.1f} fps ({result['ratio_n1']:.2f}x), {result['cpu_ms_per_frame_n1']:.1f} ms CPU/frame"
    )
    print(
        f"  framepipe, 4 pipelines: {result['fps_total_n4']:.1f} fps total ({result['ratio_n4']:.2f}x), {result['cpu_ms_per_frame_n4']:.1f} ms CPU/frame, USS {result['uss_total_mb_n4']:.0f} MB + shm {result['shm_mb_n4']:.0f} MB"
    )
    print(f"  framepipe, 4 on one file: {result['fps_total_n4_same_file']:.1f} fps total")
    print(
        f"  of the ceiling: n1 {result['fps_n1_of_ceiling']:.2f}, n4 {result['fps_total_n4_of_ceiling']:.2f}; "
        f"CPU outside model and decode (n1): {result['outside_model_ms_n1']:.2f} ms/frame"
    )
    if "latency_p50_ms" in result:
        print(
            f"  live 720p30 RTSP, capture -> result: p50 {result['latency_p50_ms']:.1f} ms, p99 {result['latency_p99_ms']:.1f} ms"
        )
    for name, met in targets:
        print(f"  target {name}: {'met' if met else 'MISSED'}")
    print(f"  (load average {result['load_average']:.1f})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
