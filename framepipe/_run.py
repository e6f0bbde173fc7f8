"""``framepipe run VIDEO``: one local pipeline (no manager), its results printed as they come."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from framepipe.core.sinks import FrameMetadataLike, frame_metadata_to_wire
from framepipe.server.worker import build_processor


def run_local(video: str, *, model: str, max_fps: float | None, frames: int | None) -> int:
    from framepipe.core.pipeline import Pipeline

    console = Console()
    reference: str | int = int(video) if video.isdigit() else video
    processor = build_processor({"type": "ModelConfiguration", "model": model})
    count = 0
    enough = threading.Event()

    def on_prediction(
        outputs: Sequence[dict[str, Any] | None], metadata: Sequence[FrameMetadataLike | None]
    ) -> None:
        nonlocal count
        for output, frame in zip(outputs, metadata, strict=False):
            if frame is None:
                continue
            count += 1
            wire = frame_metadata_to_wire(frame)
            summary = (
                ", ".join(f"{k}: {_short(v)}" for k, v in (output or {}).items()) or "(passthrough)"
            )
            console.print(f"source {wire['source_id']} frame {wire['frame_id']:>5}  {summary}")
        if frames is not None and count >= frames:
            enough.set()

    pipeline = Pipeline(
        reference, processor=processor, on_prediction=on_prediction, max_fps=max_fps
    )
    started = time.monotonic()
    pipeline.start()
    try:
        while not enough.wait(0.1):
            if pipeline.finished:
                break
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        pipeline.terminate()
        pipeline.join(10.0)
    elapsed = time.monotonic() - started
    console.print(f"{count} results in {elapsed:.1f} s ({count / elapsed if elapsed else 0:.1f}/s)")
    return 0


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(value))[:60] + "}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
