#!/usr/bin/env python3
"""End to end in one process: 720p demo frames -> preprocess -> CenterFace (640 wide) -> records.

Each frame of the bundled demo video (1280x720) is decoded with cv2 (not timed) and run the
way an inference engine's runner runs it: ``LoadedModel.infer`` letterboxes it into a 640x384
input, runs ONNX Runtime and decodes faces, and ``prediction_to_wire`` makes the reference's
prediction records. The runner's ``run`` is
wrapped with a timer, so each frame's time splits into inference and everything outside it
(preprocessing, decoding, NMS, records with uuid4 ids).

The baseline, in the same run, replaces the Cython pass with the usual cv2 + numpy
preprocessing into a fresh array (resize, copyMakeBorder, cvtColor, astype/transpose) and
keeps the same model and decoder.

Usage: perf/bench_inference.py [--frames N] [--threads T] [--quick | --smoke] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from framepipe.core.processing import (
    LoadedModel,
    ModelRegistry,
    ModelSpec,
    ProcessingSettings,
    prediction_to_wire,
    thresholds_for,
)
from framepipe.data import demo_video_path


def frames(limit: int) -> Iterator[npt.NDArray[np.uint8]]:
    capture = cv2.VideoCapture(str(demo_video_path()))
    try:
        for _ in range(limit):
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            if not ok:
                raise SystemExit(f"cannot read {demo_video_path()}")
            yield frame
    finally:
        capture.release()


def usual_preprocess(
    frame: npt.NDArray[np.uint8], height: int, width: int
) -> npt.NDArray[np.float32]:
    """cv2 + numpy letterbox for CenterFace (RGB, 0-255, pad 0) into a fresh array."""
    h, w = frame.shape[:2]
    r = min(height / h, width / w)
    nw, nh = round(w * r), round(h * r)
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (height - nh) // 2, (width - nw) // 2
    padded = cv2.copyMakeBorder(
        resized, top, height - nh - top, left, width - nw - left, cv2.BORDER_CONSTANT, value=0
    )
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.astype(np.float32).transpose(2, 0, 1))[None]


class InferenceClock:
    """Wraps ``runner.run`` and accumulates the time spent inside it."""

    def __init__(self, model: LoadedModel) -> None:
        self.inside = 0.0
        inner = model.runner.run

        def run(batch: npt.NDArray[np.floating]) -> list[npt.NDArray[np.float32]]:
            t0 = time.perf_counter()
            try:
                return inner(batch)
            finally:
                self.inside += time.perf_counter() - t0

        model.runner.run = run  # type: ignore[method-assign]


def measure(
    process: Callable[[npt.NDArray[np.uint8]], object], clock: InferenceClock, n: int
) -> dict[str, Any]:
    totals, outside, inside = [], [], []
    for frame in frames(n):
        clock.inside = 0.0
        t0 = time.perf_counter()
        process(frame)
        total = time.perf_counter() - t0
        totals.append(total)
        inside.append(clock.inside)
        outside.append(total - clock.inside)
    ms = 1e3
    return {
        "frames": n,
        "fps": n / sum(totals),
        "total_ms": statistics.median(totals) * ms,
        "inference_ms": statistics.median(inside) * ms,
        "outside_ms": statistics.median(outside) * ms,
        "outside_p90_ms": sorted(outside)[int(0.9 * (n - 1))] * ms,
        "outside_fraction": sum(outside) / sum(totals),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and cv2 threads)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    parser.add_argument("--quick", action="store_true", help="50 frames")
    parser.add_argument("--smoke", action="store_true", help="10 frames: does it still run?")
    args = parser.parse_args()
    if args.quick or args.smoke:
        args.frames = min(args.frames, 10 if args.smoke else 50)
    cv2.setNumThreads(args.threads)
    settings = ProcessingSettings(intra_op_threads=args.threads, providers=("cpu",))
    registry = ModelRegistry.from_settings(settings)
    model = LoadedModel(registry.get("centerface"), registry.settings)
    thresholds = thresholds_for(ModelSpec("centerface"), model)  # one decoder for both paths
    clock = InferenceClock(model)
    in_h, in_w = model.input_hw(720, 1280)

    def fused(frame: npt.NDArray[np.uint8]) -> dict[str, Any]:
        [result] = model.infer([frame], thresholds)
        assert result is not None
        return prediction_to_wire(result, model.class_names, model.keypoint_names)

    for frame in frames(10):  # warm up both paths
        fused(frame)
    framepipe = measure(fused, clock, args.frames)

    def usual(frame: npt.NDArray[np.uint8]) -> object:
        plan = model.preprocessor.plan(frame.shape[0], frame.shape[1], in_h, in_w)
        outputs = model.runner.run(usual_preprocess(frame, in_h, in_w))
        result = model._decode(outputs, 0, plan, thresholds, 1)
        return prediction_to_wire(result, model.class_names, model.keypoint_names)

    for frame in frames(10):
        usual(frame)
    baseline = measure(usual, clock, args.frames)
    faces = sum(len(fused(f)["predictions"]) for f in frames(args.frames))

    print(
        f"CenterFace end to end, 1280x720 -> {in_w}x{in_h}, CPU provider, {args.threads} intra-op thread(s), "
        f"{args.frames} frames ({faces} faces found)"
    )
    print(
        f"{'pipeline':28} {'fps':>7} {'total ms':>9} {'inference ms':>13} {'outside ms':>11} {'p90':>7} {'outside %':>10}"
    )
    for name, r in (("framepipe (fused Cython)", framepipe), ("baseline (cv2 + numpy)", baseline)):
        print(
            f"{name:28} {r['fps']:7.1f} {r['total_ms']:9.2f} {r['inference_ms']:13.2f} {r['outside_ms']:11.3f} "
            f"{r['outside_p90_ms']:7.3f} {100 * r['outside_fraction']:9.1f}%"
        )
    print(
        "(medians per frame; outside = everything but the ONNX Runtime call; target outside < 2 ms)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "inference",
                    "model": "centerface",
                    "input": [in_h, in_w],
                    "threads": args.threads,
                    "fps": round(framepipe["fps"], 2),
                    "outside_inference_ms": round(framepipe["outside_ms"], 4),
                    "outside_inference_p90_ms": round(framepipe["outside_p90_ms"], 4),
                    "outside_fraction": round(framepipe["outside_fraction"], 4),
                    "inference_ms": round(framepipe["inference_ms"], 3),
                    "baseline_fps": round(baseline["fps"], 2),
                    "baseline_outside_inference_ms": round(baseline["outside_ms"], 4),
                    "faces": faces,
                    "framepipe": framepipe,
                    "baseline": baseline,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
