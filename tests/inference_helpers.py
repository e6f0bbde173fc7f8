"""Run one batch through a processor and the model it needs, synchronously (for tests)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.core.inference import InferenceEngine, SubmittedFrame
from framepipe.core.processing import ModelRegistry, ProcessingSpec, build_processor

Frame = npt.NDArray[np.uint8]


def process(
    spec: ProcessingSpec,
    frames: Sequence[Frame | None],
    metadata: Sequence[Any | None] | None = None,
    registry: ModelRegistry | None = None,
    engine: InferenceEngine | None = None,
) -> list[dict[str, Any] | None]:
    """The outputs of ``spec``'s processor for one batch (its model run in ``engine``, or in
    an engine made for this call)."""
    processor = build_processor(spec)
    metadata = list(metadata) if metadata is not None else [None] * len(frames)
    predictions = None
    if processor.model is not None:
        own = engine is None
        if engine is None:
            engine = InferenceEngine(
                processor.model.model, providers=processor.model.providers, registry=registry
            )
        try:
            channel = engine.open_channel(processor.model, "test")
            done: Future[Any] = Future()
            channel.submit(
                [None if f is None else SubmittedFrame(f) for f in frames], done.set_result
            )
            outcome = done.result(60)
            channel.close()
        finally:
            if own:
                engine.close()
        if isinstance(outcome, BaseException):
            raise outcome
        predictions = outcome
    return processor.compose(frames, metadata, predictions)
