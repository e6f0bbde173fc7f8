"""The CPU one ONNX Runtime ``run`` of a model costs, as framepipe configures its sessions.

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
