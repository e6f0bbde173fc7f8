"""The parts `framepipe bench` measures with, on real processes and the real model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import cv2
import pytest

from framepipe.bench._classic_model import ClassicModel
from framepipe.bench._media import MediaLibrary, probe
from framepipe.bench._procs import (
    DECODE,
    MODEL,
    Kind,
    TreeSampler,
    classify_classic,
    group_classic_thread,
)
from framepipe.bench.config import Resolution
from framepipe.core.processing import (
    ModelRegistry,
    ProcessingSettings,
)
from framepipe.data import demo_video_path

# A process whose threads are named like the classic baseline's: one burns CPU as
# "bl-decode", one as "bl-model", the main thread sleeps; a child process idles.
_BURNER = textwrap.dedent(
    """
    import ctypes, subprocess, sys, threading, time
    def burn(name, seconds):
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
        t = time.thread_time()
        while time.thread_time() - t < seconds:
            pass
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    print("ready", flush=True)
    sys.stdin.readline()
    threads = [threading.Thread(target=burn, args=("bl-decode", 0.4)),
               threading.Thread(target=burn, args=("bl-model", 0.2))]
    for t in threads: t.start()
    for t in threads: t.join()
    print("done", flush=True)
    sys.stdin.readline()
    child.kill(); child.wait()
    """
)


def test_tree_sampler_splits_cpu_by_process_kind_and_thread_name() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        sampler = TreeSampler(proc.pid, classify_classic, group_classic_thread, interval_s=0.1)
        sampler.begin()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        window = sampler.end()
        memory = sampler.memory()
    finally:
        proc.stdin.write("end\n")
        proc.stdin.flush()
        proc.wait(30)
        proc.stdin.close()
        proc.stdout.close()
    # clock ticks are 10 ms; the burners ran 0.4 s and 0.2 s of CPU
    assert window.by_group[DECODE] == pytest.approx(0.4, abs=0.06)
    assert window.by_group[MODEL] == pytest.approx(0.2, abs=0.06)
    assert window.seconds >= window.by_group[DECODE] + window.by_group[MODEL] - 0.02
    assert window.processes == {Kind.APP: 1, Kind.INFERENCE: 1}
    assert window.window_s > 0.5
    assert memory.uss_by_kind[Kind.APP] > 1_000_000
    assert memory.uss_by_kind[Kind.INFERENCE] > 1_000_000
    assert memory.shm_bytes == 0


def test_generated_streams_are_long_enough_and_cached(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    library = MediaLibrary(folder / "cache", folder / "run")
    small = Resolution("240p30", 320, 240)
    started = time.monotonic()
    path = library.generated(small, 12.0)
    info = probe(str(path))
    assert (info.width, info.height, info.fps) == (320, 240, 30.0)
    assert info.frames is not None and info.frames >= 12 * 30
    # every frame decodes, numbered clip after numbered clip
    capture = cv2.VideoCapture(str(path))
    decoded = 0
    while capture.grab():
        decoded += 1
    capture.release()
    assert decoded == info.frames
    first = time.monotonic() - started
    again = time.monotonic()
    assert library.generated(small, 12.0) == path
    assert time.monotonic() - again < max(0.5, first / 4)  # cached
    links = library.distinct_files(path, 3)
    assert len(set(links)) == 3
    assert all(Path(link).stat().st_ino == path.stat().st_ino for link in links)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    settings = ProcessingSettings()
    if not (settings.cache_dir / "centerface.onnx").is_file():
        pytest.skip("the bundled model is not fetched (make models)")
    return ModelRegistry.from_settings(settings)


def test_the_classic_baseline_finds_the_same_faces_as_framepipe(registry: ModelRegistry) -> None:
    from framepipe.core.inference import predictions_to_wire
    from framepipe.core.processing import LoadedModel, Thresholds

    classic = ClassicModel("centerface")
    entry = registry.get("centerface")
    loaded = LoadedModel(entry, registry.settings, providers=["cpu"])
    thresholds = Thresholds(entry.default_confidence, entry.default_iou, 300)
    capture = cv2.VideoCapture(str(demo_video_path()))
    compared = 0
    for index in range(0, 60, 12):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = capture.read()
        assert ok
        result = loaded.infer([frame], thresholds)[0]
        assert result is not None
        ours = predictions_to_wire(loaded, frame, result)
        theirs, run_ns = classic.process(frame)
        assert run_ns > 0
        assert theirs["image"] == ours["image"]
        a, b = ours["predictions"], theirs["predictions"]
        assert len(a) == len(b) and a, (a, b)
        for p, q in zip(
            sorted(a, key=lambda p: p["x"]), sorted(b, key=lambda p: p["x"]), strict=True
        ):
            assert p["class"] == q["class"] == "face"
            for key in ("x", "y", "width", "height"):
                assert p[key] == pytest.approx(q[key], abs=4.0), key
            assert p["confidence"] == pytest.approx(q["confidence"], abs=0.05)
            assert len(p["keypoints"]) == len(q["keypoints"]) == 5
        compared += 1
    capture.release()
    assert compared == 5


_LISTENER = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); "
    "s.bind('\\0' + sys.argv[1]); s.listen(); print('ready', flush=True); sys.stdin.readline()"
)


@pytest.mark.parametrize("address", ["framepipe-1-svc-centerface-0-abc123", "something-else"])
def test_an_inference_service_is_told_from_a_worker_by_its_listening_address(
    address: str,
) -> None:
    import os

    from framepipe.bench._procs import classify_framepipe, process_info

    # looks like a spawned worker or service of the manager (this process plays the manager)
    proc = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, address, "--multiprocessing-fork"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        info = process_info(proc.pid)
        assert info is not None
        kind = classify_framepipe(info, process_info(os.getpid()), os.getpid())
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()
    assert kind == (Kind.SERVICE if "-svc-" in address else Kind.WORKER)
