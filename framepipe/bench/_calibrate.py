"""The floors the bench measures its runs against, in its own process: the CPU one ONNX
Runtime ``run`` of a model costs, as framepipe configures its sessions, and the CPU a plain
PyAV loop spends decoding a frame of the same stream.

framepipe's server runs the model inside its own processes, where the bench cannot tell the
model's CPU from the rest from the outside; so it is measured here, in the bench process, in
the same session: framepipe's own model loader (the processing settings the server reads from
the same environment), the frame size of the streams, ``process_time`` around ``run`` (all of
the process's threads, so any intra-op threads count). The bench subtracts
``runs x this`` from framepipe's CPU to get the cost outside decode and inference.
"""

from __future__ import annotations

import logging
import time

import numpy as np


def model_run_cpu_s(model: str, width: int, height: int, runs: int = 20) -> float:
    from framepipe.core.processing import LoadedModel, ModelRegistry, ProcessingSettings

    if model == "passthrough":
        return 0.0
    registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
    # the server's workers say it in their logs when a GPU provider cannot start; once is enough
    quiet = logging.getLogger("framepipe.core.processing.runner")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        loaded = LoadedModel(registry.get(model), registry.settings)
    finally:
        quiet.setLevel(level)
    in_h, in_w = loaded.input_hw(height, width)
    batch = np.zeros((1, 3, in_h, in_w), loaded.runner.input.dtype)
    for _ in range(3):
        loaded.runner.run(batch)
    started = time.process_time()
    for _ in range(runs):
        loaded.runner.run(batch)
    return (time.process_time() - started) / runs


def plain_decode_cpu_s(path: str, max_frames: int = 300, pace_fps: float | None = None) -> float:
    """CPU per frame of a plain PyAV loop over the video file at ``path`` (threaded decode, as
    framepipe's backend; each frame decoded and copied out with ``to_ndarray()``), over its
    first ``max_frames`` frames (all of them when it has fewer). ``pace_fps``: read at that
    rate, as a camera delivers and as the bench replays its files (a decoder that sleeps
    between frames finds its caches cold: on a 2-core Xeon a 720p frame cost 1.7 ms paced at
    30 fps against 1.1 ms in a tight loop); None: as fast as it can."""
    import av

    frames = 0
    started = time.process_time()
    origin = time.monotonic()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray()
            frames += 1
            if frames >= max_frames:
                break
            if pace_fps:
                left = origin + frames / pace_fps - time.monotonic()
                if left > 0:
                    time.sleep(left)
    if frames == 0:
        raise ValueError(f"{path}: no video frame could be decoded")
    return (time.process_time() - started) / frames
