"""WebRTC benchmark: glass-to-glass latency and sustained fps over loopback, 640x480.

A real manager (``framepipe serve``, ICE on 127.0.0.1) runs a WebRTC pipeline; a Python peer
(aiortc, :class:`framepipe.testing.webrtc.TestPeer`) sends 640x480 frames at 30 fps — the demo
video's moving face, with the frame's number written in a band at the bottom — and reads the
number back from every frame the server returns. Latency is glass to glass on the peer's own
clock: frame handed to the peer's encoder → the annotated frame decoded by the peer (encode,
RTP over loopback, the server's decode, the ring, inference, drawing, encode, RTP, decode).

Measured in one run:

* the demo model (``centerface``): latency p50 / p99, returned fps, and the p99 of the last
  10 s against the first 10 s (a backlog would make the later frames later and later);
* baseline, same run: the same path with ``passthrough`` (no model) — the transport's floor.

Targets: p50 < 150 ms, p99 < 300 ms, last-10-s p99 within 1.2x of the first 10 s (60 s run).
``--quick``: 20 s with the model, 8 s baseline, 5 s windows (``--smoke``: 6, 3 and 2 s).
``--json`` prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framepipe._serve_process import ServeProcess  # noqa: E402
from framepipe.client import StreamManagerClient  # noqa: E402
from framepipe.protocol.payloads import (  # noqa: E402
    InitialiseWebRTCPipelinePayload,
    ModelConfiguration,
    VideoConfiguration,
    WebRTCOffer,
)
from framepipe.server.webrtc.ice import offer_host_addresses  # noqa: E402
from framepipe.testing.webrtc import COUNTER_BAND, TestPeer, read_counter, stamp_counter  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 480, 30.0
WARMUP_S = 3.0  # model loading, the first keyframes, the encoders' rate control settling


def start_manager(log_path: Path) -> ServeProcess:
    """``framepipe serve --port 0`` with ICE on loopback (the shared ServeProcess)."""
    env = {
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "FRAMEPIPE_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
    }
    return ServeProcess(env=env, log_path=log_path)


def demo_frames(count: int = 100) -> list[np.ndarray]:
    """The demo video's moving face at 640x360, placed in 640x480 frames (top: room for the
    server's HUD; bottom: the counter band)."""
    frames = []
    with av.open(str(ROOT / "framepipe/data/demo_faces.mp4")) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number >= count:
                break
            canvas = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
            top = (HEIGHT - COUNTER_BAND - 360) // 2
            canvas[top : top + 360] = cv2.resize(frame.to_ndarray(format="bgr24"), (WIDTH, 360))
            frames.append(canvas)
    return frames


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def run_peer(port: int, model: str, duration_s: float, window_s: float) -> dict[str, Any]:
    frames = demo_frames()

    def draw(number: int) -> np.ndarray:
        image = frames[number % len(frames)].copy()
        stamp_counter(image, number)
        return image

    samples: list[tuple[float, float]] = []  # (seconds since the first frame sent, latency ms)

    def on_frame(returned: Any) -> None:
        number = read_counter(returned.image)
        sent = peer.sent_ns.get(number)
        if sent is None or not peer.sent_ns:
            return
        first = peer.sent_ns[0]
        samples.append(((sent - first) / 1e9, (returned.arrived_ns - sent) / 1e6))

    peer = TestPeer(draw, fps=FPS, keep_frames=1, on_frame=on_frame)
    client = StreamManagerClient(host="127.0.0.1", port=port, operations_timeout=120)
    answer = await client.initialise_webrtc_pipeline(
        InitialiseWebRTCPipelinePayload(
            video_configuration=VideoConfiguration(video_reference="webrtc"),
            processing_configuration=ModelConfiguration(model=model),
            webrtc_offer=WebRTCOffer(**await peer.offer()),
            webrtc_peer_timeout=5,
            webcam_fps=FPS,
        )
    )
    await peer.accept({"sdp": answer.sdp, "type": answer.type})
    pipeline_id = answer.context.pipeline_id
    assert pipeline_id is not None
    await peer.wait_for(lambda: peer.returned_count > 0, 120, "the first returned frame")
    await asyncio.sleep(WARMUP_S)
    # Every window: the server's own capture → result latency and the machine's load, to tell
    # the path's behaviour from the machine's (the host is shared).
    server: list[dict[str, Any]] = []
    elapsed = 0.0
    while elapsed < duration_s:
        step = min(window_s, duration_s - elapsed)
        await asyncio.sleep(step)
        elapsed += step
        report = (await client.get_status(pipeline_id)).report
        e2e = (report["framepipe"]["latency_ms"] or [{}])[0]
        server.append(
            {
                "at_s": round(elapsed, 1),
                "server_e2e_p50_ms": round(e2e.get("e2e_p50") or 0.0, 1),
                "load_average": round(os.getloadavg()[0], 2),
            }
        )
    status = (await client.get_status(pipeline_id)).report
    await client.terminate_pipeline(pipeline_id)
    await peer.close()

    measured = [(t, ms) for t, ms in samples if t >= WARMUP_S]
    latencies = [ms for _, ms in measured]
    start = measured[0][0] if measured else 0.0
    end = measured[-1][0] if measured else 0.0
    first = [ms for t, ms in measured if t < start + window_s]
    last = [ms for t, ms in measured if t > end - window_s]
    span = end - start
    source = status["framepipe"]["sources"][0]
    first_p99, last_p99 = percentile(first, 99), percentile(last, 99)
    windows = []
    for index, sample in enumerate(server):
        lo, hi = start + index * window_s, start + (index + 1) * window_s
        values = [ms for t, ms in measured if lo <= t < hi]
        windows.append(
            {**sample, "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
        )
    return {
        "model": model,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "fps": round((len(measured) - 1) / span, 2) if span > 0 else 0.0,
        "frames_returned": len(measured),
        "first_window_p99_ms": first_p99,
        "last_window_p99_ms": last_p99,
        "last_over_first_p99": round(last_p99 / first_p99, 3) if first_p99 and last_p99 else None,
        "server_e2e_p50_ms": (status["framepipe"]["latency_ms"] or [{}])[0].get("e2e_p50"),
        "input_frames": source["frames_decoded"],
        "input_dropped": source["frames_dropped"],
        "return_replaced": status["framepipe"]["webrtc"]["dropped"]["return_replaced"],
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s run, 8 s baseline")
    parser.add_argument(
        "--smoke", action="store_true", help="6 s run, 3 s baseline: does it still run?"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    parser.add_argument("--duration", type=float, help="seconds measured with the model")
    args = parser.parse_args()
    duration = args.duration or (6.0 if args.smoke else 20.0 if args.quick else 60.0)
    window = 2.0 if args.smoke else 5.0 if args.quick else 10.0
    baseline_duration = 3.0 if args.smoke else 8.0 if args.quick else 15.0
    load = os.getloadavg()[0]
    offer_host_addresses(["127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="fp-bench-webrtc-") as scratch:
        manager = start_manager(Path(scratch) / "serve.log")
        try:
            baseline = asyncio.run(run_peer(manager.port, "passthrough", baseline_duration, window))
            model = asyncio.run(run_peer(manager.port, "centerface", duration, window))
        finally:
            manager.stop()
    result = {
        "benchmark": "webrtc",
        "resolution": f"{WIDTH}x{HEIGHT}",
        "input_fps": FPS,
        "duration_s": duration,
        "window_s": window,
        "cores": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "webrtc_latency_p50_ms": model["latency_p50_ms"],
        "webrtc_latency_p99_ms": model["latency_p99_ms"],
        "webrtc_fps": model["fps"],
        "webrtc_first_window_p99_ms": model["first_window_p99_ms"],
        "webrtc_last_window_p99_ms": model["last_window_p99_ms"],
        "webrtc_last_over_first_p99": model["last_over_first_p99"],
        "model": model,
        "baseline_passthrough": baseline,
        "targets": {
            "latency_p50_ms": 150,
            "latency_p99_ms": 300,
            "last_over_first_p99": 1.2,
        },
    }
    if not args.json:
        for name, run in (("passthrough (baseline)", baseline), ("centerface", model)):
            print(
                f"{name:>22}: p50 {run['latency_p50_ms']} ms, p99 {run['latency_p99_ms']} ms, "
                f"{run['fps']} fps returned, p99 last/first window "
                f"{run['last_over_first_p99']}, input dropped {run['input_dropped']}"
            )
            for window in run["windows"]:
                print(f"{'':>24}{window}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
