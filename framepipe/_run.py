"""``framepipe run VIDEO``: one local pipeline (no manager), its results printed as they come."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from framepipe.errors import InvalidPayloadError


def run_local(
    video: str, *, model: str, max_fps: float | None, frames: int | None, output: str | None = None
) -> int:
    from framepipe.core.pipeline import Pipeline, frame_metadata_to_wire
    from framepipe.core.sources import FrameMetadata

    if output is not None and not Path(video).is_file():
        raise InvalidPayloadError(f"--output needs a video file to re-read, {video!r} is not one")

    console = Console()
    reference: str | int = int(video) if video.isdigit() else video
    count = 0
    enough = threading.Event()
    kept: dict[int, dict[str, Any] | None] = {}

    def on_prediction(
        outputs: Sequence[dict[str, Any] | None], metadata: Sequence[FrameMetadata | None]
    ) -> None:
        nonlocal count
        for result, frame in zip(outputs, metadata, strict=False):
            if frame is None:
                continue
            count += 1
            wire = frame_metadata_to_wire(frame)
            if output is not None:
                kept[wire["frame_id"]] = result
            summary = (
                ", ".join(f"{k}: {_short(v)}" for k, v in (result or {}).items()) or "(passthrough)"
            )
            console.print(f"source {wire['source_id']} frame {wire['frame_id']:>5}  {summary}")
        if frames is not None and count >= frames:
            enough.set()

    pipeline = Pipeline(reference, model=model, on_prediction=on_prediction, max_fps=max_fps)
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
    if output is not None:
        written = write_annotated(Path(video), Path(output), kept)
        console.print(f"wrote {written} annotated frames to {output}")
    return 0


def write_annotated(video: Path, output: Path, results: dict[int, dict[str, Any] | None]) -> int:
    """Re-read ``video`` and write the frames that have a result, with its detections drawn.

    Frame ids count decoded frames from 1, so the n-th decoded frame (from 0) is id n + 1.
    """
    import av

    from framepipe.core.processing import annotate

    written = 0
    with av.open(str(video)) as source, av.open(str(output), mode="w") as sink:
        in_stream = source.streams.video[0]
        rate = in_stream.average_rate or 30
        out_stream = sink.add_stream("libx264", rate=rate)
        out_stream.width = in_stream.codec_context.width
        out_stream.height = in_stream.codec_context.height
        out_stream.pix_fmt = "yuv420p"
        out_stream.options = {"preset": "veryfast", "crf": "23"}
        for index, frame in enumerate(source.decode(in_stream)):
            frame_id = index + 1
            if frame_id not in results:
                continue
            pixels: Any = frame.to_ndarray(format="bgr24")
            image = annotate(pixels, results[frame_id])
            out_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            out_frame.pts = written
            for packet in out_stream.encode(out_frame):
                sink.mux(packet)
            written += 1
        for packet in out_stream.encode(None):
            sink.mux(packet)
    return written


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(value))[:60] + "}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
