"""Decode → consumer: plain ``cv2.VideoCapture.read()`` vs framepipe's decode process + ring.

(a) plain cv2: one process, ``cv2.VideoCapture.read()`` (decode + BGR) into fresh numpy
    arrays, every frame touched (one row summed);
(b) plain PyAV: one process, decode and copy the planes out (``to_ndarray()``: the 4:2:0
    planes, no colour conversion), every frame touched;
(c) framepipe: a decode process writes each frame straight into a shared-memory ring slot
    (PyAV: the native 4:2:0 planes; OpenCV: BGR) and the consumer (a Pipeline in this
    process) reads every frame in place (one row summed).

``cpu_ratio_vs_cv2`` = framepipe PyAV's CPU per frame / plain cv2's (target <= 0.8);
``cpu_ratio_vs_pyav_planes`` = framepipe PyAV's / plain PyAV's (target <= 1.05).

Same 1080p30 H.264 file, same run, alternating rounds; fps over first → last frame, CPU per
frame = all CPU the path used (decode process + consumer) / frames. Then 4 concurrent 720p
streams (4 threads of plain capture vs one framepipe Pipeline with 4 sources), and the frame
age a slow consumer sees under DROP_OLDEST (file played at its own pace).

    python perf/bench_decode.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framepipe.core.pipeline import Pipeline
from framepipe.core.pixels import YuvFrame
from framepipe.core.processing import Processor
from framepipe.core.sources import warm_forkserver
from framepipe.testing import make_test_video


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


class RowSum(Processor):
    """Reads every frame in place (one row; of a 4:2:0 frame, one row of its Y plane),
    records when each frame arrived."""

    reads_native_frames = True  # no BGR is made for it

    def __init__(self, delay_s: float = 0.0) -> None:
        self.arrivals: list[float] = []
        self.ages_ms: list[float] = []
        self.checksum = 0
        self.delay_s = delay_s

    def compose(
        self,
        frames: Sequence[npt.NDArray[np.uint8] | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        now_ns = time.time_ns()
        self.arrivals.append(time.perf_counter())
        for frame, meta in zip(frames, frames_metadata, strict=True):
            if frame is not None and meta is not None:
                height, width = frame.shape[:2]
                if isinstance(frame, YuvFrame):
                    row = frame.data[height // 2 * width : (height // 2 + 1) * width]
                else:
                    row = frame[height // 2]
                self.checksum += int(row.sum())
                self.ages_ms.append((now_ns - meta.capture_ns) / 1e6)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [None for _ in frames]


def plain_decode(path: Path) -> tuple[float, float, int]:
    """(fps, cpu ms per frame, frames) of cv2.VideoCapture.read() in this process."""
    cpu0 = cpu_now()
    cap = cv2.VideoCapture(str(path))
    first = last = 0.0
    n = 0
    checksum = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        checksum += int(frame[frame.shape[0] // 2].sum())
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    cap.release()
    cpu = cpu_now() - cpu0
    return (n - 1) / (last - first), cpu / n * 1000, n


def plain_pyav_decode(path: Path) -> tuple[float, float, int]:
    """(fps, cpu ms per frame, frames) of a plain PyAV loop in this process: threaded decode
    (as framepipe's backend), the planes copied out with ``to_ndarray()``, one row summed."""
    import av

    cpu0 = cpu_now()
    first = last = 0.0
    n = 0
    checksum = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            planes = frame.to_ndarray()
            checksum += int(planes[planes.shape[0] // 3].sum())
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
    cpu = cpu_now() - cpu0
    return (n - 1) / (last - first), cpu / n * 1000, n


def framepipe_decode(path: Path, decoder: str) -> tuple[float, float, int]:
    reader = RowSum()
    cpu0 = cpu_now()
    pipeline = Pipeline(str(path), processing=reader, decoder=decoder, decoding_buffer_size=8)
    pipeline.start()
    pipeline.join(120)
    pipeline.terminate()
    cpu = cpu_now() - cpu0 + pipeline.status().sources[0].decoder_cpu_s
    n = len(reader.arrivals)
    return (n - 1) / (reader.arrivals[-1] - reader.arrivals[0]), cpu / n * 1000, n


def plain_4x(path: Path) -> float:
    """Total fps of 4 plain captures in 4 threads (first frame → last frame of all)."""
    counts = [0, 0, 0, 0]
    firsts: list[float] = []
    lasts: list[float] = []

    def run(i: int) -> None:
        cap = cv2.VideoCapture(str(path))
        last = 0.0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            last = time.perf_counter()
            if counts[i] == 0:
                firsts.append(last)
            counts[i] += int(frame[frame.shape[0] // 2].sum() >= 0)
        lasts.append(last)
        cap.release()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (sum(counts) - 4) / (max(lasts) - min(firsts))


def framepipe_4x(path: Path, decoder: str) -> float:
    """Total fps of one framepipe Pipeline multiplexing 4 sources (first frame → last frame)."""
    reader = RowSum()
    pipeline = Pipeline([str(path)] * 4, processing=reader, decoder=decoder, decoding_buffer_size=8)
    pipeline.start()
    pipeline.join(300)
    pipeline.terminate()
    frames = len(reader.ages_ms)
    return (frames - 4) / (reader.arrivals[-1] - reader.arrivals[0])


def drop_oldest_age(path: Path, fps: float, processing_s: float) -> dict[str, float]:
    reader = RowSum(delay_s=processing_s)
    pipeline = Pipeline(
        str(path),
        processing=reader,
        realtime_replay=True,  # played at its own pace, like a camera
        source_buffer_filling_strategy="DROP_OLDEST",
        source_buffer_consumption_strategy="EAGER",
    )
    with pipeline:
        pipeline.join(600)
        report = pipeline.status()
    ages = np.array(reader.ages_ms[1:])
    return {
        "age_p50_ms": float(np.percentile(ages, 50)),
        "age_p99_ms": float(np.percentile(ages, 99)),
        "age_max_ms": float(ages.max()),
        "age_limit_ms": 2 * 1000 / fps,
        "frames_consumed": float(len(reader.ages_ms)),
        "frames_dropped": float(sum(report.sources[0].frames_dropped.values())),
        "seconds": float(report.uptime_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (< 45 s)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: does it still run?")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args()
    frames_1080 = 60 if args.smoke else 240 if args.quick else 600
    frames_720 = 30 if args.smoke else 150 if args.quick else 450
    rounds = 1 if args.smoke else 3 if args.quick else 5
    age_seconds = 2 if args.smoke else 8 if args.quick else 60
    warm_forkserver()
    with tempfile.TemporaryDirectory(prefix="fp-bench-") as tmp:
        tmpdir = Path(tmp)
        v1080 = make_test_video(
            tmpdir / "1080.mp4", frames=frames_1080, width=1920, height=1080, fps=30
        )
        v720 = make_test_video(
            tmpdir / "720.mp4", frames=frames_720, width=1280, height=720, fps=30
        )
        vage = make_test_video(
            tmpdir / "age.mp4", frames=int(age_seconds * 30), width=640, height=360, fps=30
        )
        plain_decode(v1080.path)  # warm caches
        runs: dict[str, list[tuple[float, float, int]]] = {
            "plain": [],
            "plain_pyav": [],
            "opencv": [],
            "pyav": [],
        }
        for _ in range(rounds):
            runs["plain"].append(plain_decode(v1080.path))
            runs["plain_pyav"].append(plain_pyav_decode(v1080.path))
            runs["opencv"].append(framepipe_decode(v1080.path, "opencv"))
            runs["pyav"].append(framepipe_decode(v1080.path, "pyav"))
        for name, rs in runs.items():
            assert all(r[2] == frames_1080 for r in rs), f"{name} lost frames: {[r[2] for r in rs]}"
        med = {
            name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for name, rs in runs.items()
        }
        fps_4_plain = statistics.median(plain_4x(v720.path) for _ in range(2))
        fps_4_fp = statistics.median(framepipe_4x(v720.path, "opencv") for _ in range(2))
        fps_4_fp_pyav = statistics.median(framepipe_4x(v720.path, "pyav") for _ in range(2))
        age = drop_oldest_age(vage.path, 30.0, 0.05)

    result = {
        "fps_plain": med["plain"][0],
        "fps_framepipe": med["opencv"][0],
        "overhead_ratio": med["plain"][0] / med["opencv"][0],
        "cpu_per_frame_ms_plain": med["plain"][1],
        "cpu_per_frame_ms_framepipe": med["opencv"][1],
        "fps_framepipe_pyav": med["pyav"][0],
        "cpu_per_frame_ms_framepipe_pyav": med["pyav"][1],
        "overhead_ratio_pyav": med["plain"][0] / med["pyav"][0],
        "fps_plain_pyav": med["plain_pyav"][0],
        "cpu_per_frame_ms_plain_pyav": med["plain_pyav"][1],
        # the 4:2:0 path's CPU against the two plain loops (targets <= 0.8 and <= 1.05)
        "cpu_ratio_vs_cv2": med["pyav"][1] / med["plain"][1],
        "cpu_ratio_vs_pyav_planes": med["pyav"][1] / med["plain_pyav"][1],
        "fps_total_4x720p": fps_4_fp,
        "fps_total_4x720p_pyav": fps_4_fp_pyav,
        "fps_total_4x720p_plain": fps_4_plain,
        "drop_oldest_age_p50_ms": age["age_p50_ms"],
        "drop_oldest_age_p99_ms": age["age_p99_ms"],
        "drop_oldest_age_max_ms": age["age_max_ms"],
        "drop_oldest_age_limit_ms": age["age_limit_ms"],
        "drop_oldest_seconds": age["seconds"],
        "frames_1080p": frames_1080,
        "rounds": rounds,
        "quick": args.quick,
    }
    nan = float("nan")
    rows = [
        (
            "1080p30 H.264, 1 stream",
            "fps",
            med["plain"][0],
            med["plain_pyav"][0],
            med["opencv"][0],
            med["pyav"][0],
        ),
        (
            "",
            "CPU ms/frame",
            med["plain"][1],
            med["plain_pyav"][1],
            med["opencv"][1],
            med["pyav"][1],
        ),
        ("720p30 H.264, 4 streams", "total fps", fps_4_plain, nan, fps_4_fp, fps_4_fp_pyav),
    ]
    print(
        f"{'case':26} {'metric':13} {'plain cv2':>10} {'plain pyav':>10} "
        f"{'fp opencv':>10} {'fp pyav':>10}"
    )
    for case, metric, a, b, c, d in rows:
        print(f"{case:26} {metric:13} {a:10.1f} {b:10.1f} {c:10.1f} {d:10.1f}")
    print(
        f"4:2:0 path CPU per frame: {result['cpu_ratio_vs_cv2']:.3f}x plain cv2 (target <= 0.8), "
        f"{result['cpu_ratio_vs_pyav_planes']:.3f}x plain PyAV + plane copy (target <= 1.05)"
    )
    print(
        f"overhead_ratio (plain fps / framepipe fps): opencv {result['overhead_ratio']:.3f}, pyav {result['overhead_ratio_pyav']:.3f}"
    )
    print(
        f"DROP_OLDEST, consumer 50 ms/frame, file at 30 fps for {age['seconds']:.0f} s: frame age at consumption "
        f"p50 {age['age_p50_ms']:.1f} ms, p99 {age['age_p99_ms']:.1f} ms, max {age['age_max_ms']:.1f} ms "
        f"(limit 2 intervals = {age['age_limit_ms']:.1f} ms + processing)"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
