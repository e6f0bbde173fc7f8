"""The classic architecture, as most Python video-inference services are built.

One app process holds, per stream, a decode thread (``cv2.VideoCapture``) that puts each
frame (pickled) into that stream's ``multiprocessing.Queue``; an inference process per stream
takes it, runs the model with its own ONNX Runtime session (:class:`ClassicModel`) — or, for
passthrough, just receives the frame — and puts the result into one results queue, which a
collector thread of the app process drains. Live-like streams keep the freshest frame: the
frame queue holds one frame, and a decode thread that finds it full replaces the queued frame
with the new one (counted as ``drop_oldest``); a file is read at its own frame rate, like a
camera; frames not due at the model's rate are grabbed but never retrieved (``max_fps``).

Run as ``python -m framepipe.bench._classic '<json config>'`` by the bench, which measures its
process tree from the outside. Commands arrive one per line on stdin, answers go one per line
to stdout: ``poll`` → ``STATS {json}``, ``open`` → ``OK`` (a window starts), ``close`` →
``WINDOW {json}`` (the window's figures), ``stop`` → exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from framepipe.bench._threads import set_thread_name
from framepipe.bench.config import PASSTHROUGH

QUEUE_FRAMES = 1  # the freshest frame, as live video services keep it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A baseline process never outlives the bench (a user's service would not need this)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# -- the inference process ------------------------------------------------------------------


def inference_main(index: int, frames: Any, results: Any, model: str) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_thread_name("bl-infer")
    worker = None
    if model != PASSTHROUGH:
        from framepipe.bench._classic_model import ClassicModel

        worker = ClassicModel(model)
    results.put(("ready", index))
    while True:
        item = frames.get()
        if item is None:
            break
        if item[0] == "hello":
            continue
        frame_id, capture_ns, frame = item
        if worker is None:
            height, width = frame.shape[:2]
            output: dict[str, Any] = {
                "frame_id": frame_id,
                "image": {"width": width, "height": height},
            }
            run_ns = 0
        else:
            output, run_ns = worker.process(frame)
        results.put(("result", index, frame_id, capture_ns, run_ns, output))


# -- the app process ------------------------------------------------------------------------


class _RateGate:
    """Deliver at most ``fps`` frames per second of capture time, without drift (the same
    rule as framepipe's decoders)."""

    def __init__(self, fps: float | None) -> None:
        self.fps = fps
        self.next_due_ns = 0

    def due(self, capture_ns: int) -> bool:
        if self.fps is None:
            return True
        if capture_ns < self.next_due_ns:
            return False
        interval = int(1e9 / self.fps)
        self.next_due_ns = max(self.next_due_ns + interval, capture_ns - interval // 2)
        return True


@dataclass
class _Stream:
    index: int
    reference: str
    frames: Any  # multiprocessing.Queue
    state: str = "INITIALISING"
    error: str = ""
    drops: dict[str, int] = field(default_factory=dict)
    queue_cpu_ns: int = 0  # decode thread CPU inside queue calls (moved to the frame path)
    results: int = 0
    # the open window
    window_results: int = 0
    window_ages_ms: list[float] = field(default_factory=list)
    window_run_ns: int = 0
    drops_at_open: dict[str, int] = field(default_factory=dict)
    queue_ns_at_open: int = 0

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class ClassicApp:
    def __init__(self, config: dict[str, Any]) -> None:
        self.references: list[str] = list(config["references"])
        self.model: str = config["model"]
        self.pace_fps: float | None = config.get("pace_fps")
        self.gate_fps: float | None = config.get("gate_fps")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.window_open = False
        self.window_started = 0.0
        ctx = multiprocessing.get_context()
        self.results: Any = ctx.Queue()
        self.streams = [
            _Stream(i, ref, ctx.Queue(maxsize=QUEUE_FRAMES))
            for i, ref in enumerate(self.references)
        ]
        # the inference processes first, before this process has any thread of its own
        self.processes = [
            ctx.Process(
                target=inference_main,
                args=(s.index, s.frames, self.results, self.model),
                name=f"classic-inference-{s.index}",
                daemon=True,
            )
            for s in self.streams
        ]
        for process in self.processes:
            process.start()
        self.threads: list[threading.Thread] = []

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < len(self.streams):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{len(self.streams) - ready} inference processes not ready")
            message = self.results.get(timeout=left)
            if message[0] == "ready":
                ready += 1
        # Start each frame queue's feeder thread (it pickles and writes) from this thread:
        # a thread inherits its creator's name, and one created by a decode thread would be
        # counted as decoding.
        for stream in self.streams:
            stream.frames.put(("hello",))

    def start(self) -> None:
        import cv2  # noqa: F401  (after the inference processes were forked: no threads then)

        collector = threading.Thread(target=self._collect, name="collector", daemon=True)
        collector.start()
        self.threads.append(collector)
        for stream in self.streams:
            thread = threading.Thread(
                target=self._decode, args=(stream,), name=f"decode-{stream.index}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _decode(self, stream: _Stream) -> None:
        import cv2

        set_thread_name("bl-decode")
        capture = cv2.VideoCapture(stream.reference, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            stream.state, stream.error = "ERROR", f"cannot open {stream.reference}"
            return
        stream.state = "RUNNING"
        gate = _RateGate(self.gate_fps)
        interval = 1.0 / self.pace_fps if self.pace_fps else 0.0
        next_due = time.monotonic()
        frame_id = 0
        try:
            while not self.stop.is_set():
                if interval:  # a file, read at its own frame rate like a camera
                    delay = next_due - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        break
                    next_due = max(next_due + interval, time.monotonic() - interval)
                if not capture.grab():
                    stream.state = "ENDED"
                    break
                capture_ns = time.time_ns()
                frame_id += 1
                if not gate.due(capture_ns):
                    stream.drop("max_fps")
                    continue
                ok, frame = capture.retrieve()
                if not ok:
                    continue
                self._hand_over(stream, (frame_id, capture_ns, frame))
        finally:
            capture.release()

    def _hand_over(self, stream: _Stream, item: tuple[int, int, Any]) -> None:
        started = time.thread_time_ns()
        try:
            stream.frames.put_nowait(item)
        except queue.Full:
            try:
                stream.frames.get_nowait()  # the queued frame is stale: replace it
                stream.drop("drop_oldest")
            except queue.Empty:
                pass
            try:
                stream.frames.put_nowait(item)
            except queue.Full:
                stream.drop("buffer_full")
        stream.queue_cpu_ns += time.thread_time_ns() - started

    def _collect(self) -> None:
        while not self.stop.is_set():
            try:
                message = self.results.get(timeout=0.2)
            except queue.Empty:
                continue
            if message[0] != "result":
                continue
            _, index, _frame_id, capture_ns, run_ns, _output = message
            age_ms = (time.time_ns() - capture_ns) / 1e6
            stream = self.streams[index]
            with self.lock:
                stream.results += 1
                if self.window_open:
                    stream.window_results += 1
                    stream.window_ages_ms.append(age_ms)
                    stream.window_run_ns += run_ns

    # -- commands -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "results": [s.results for s in self.streams],
                "states": [s.state for s in self.streams],
                "errors": [s.error for s in self.streams],
            }

    def open_window(self) -> None:
        with self.lock:
            for s in self.streams:
                s.window_results, s.window_ages_ms, s.window_run_ns = 0, [], 0
                s.drops_at_open = dict(s.drops)
                s.queue_ns_at_open = s.queue_cpu_ns
            self.window_open = True
            self.window_started = time.monotonic()

    def close_window(self) -> dict[str, Any]:
        from framepipe.bench.results import percentile

        with self.lock:
            self.window_open = False
            window_s = time.monotonic() - self.window_started
            streams = []
            for s in self.streams:
                drops = {
                    k: v - s.drops_at_open.get(k, 0)
                    for k, v in s.drops.items()
                    if v - s.drops_at_open.get(k, 0)
                }
                streams.append(
                    {
                        "delivered": s.window_results,
                        "age_p50_ms": percentile(s.window_ages_ms, 50),
                        "age_p99_ms": percentile(s.window_ages_ms, 99),
                        "drops": drops,
                        "state": s.state,
                        "run_cpu_s": s.window_run_ns / 1e9,
                        "queue_cpu_s": (s.queue_cpu_ns - s.queue_ns_at_open) / 1e9,
                    }
                )
        return {"window_s": window_s, "streams": streams}

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        for stream in self.streams:
            with contextlib.suppress(queue.Full):
                stream.frames.put_nowait(None)
        deadline = time.monotonic() + 5
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for stream in self.streams:
            stream.frames.cancel_join_thread()
            stream.frames.close()
        self.results.cancel_join_thread()
        self.results.close()


def main(argv: list[str]) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_thread_name("bl-app")
    config = json.loads(argv[0])
    app = ClassicApp(config)
    try:
        app.wait_ready(timeout=float(config.get("ready_timeout_s", 120.0)))
        app.start()
        print("READY", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "poll":
                print("STATS " + json.dumps(app.stats()), flush=True)
            elif command == "open":
                app.open_window()
                print("OK", flush=True)
            elif command == "close":
                print("WINDOW " + json.dumps(app.close_window()), flush=True)
            elif command == "stop":
                break
    finally:
        app.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
