"""``framepipe run`` as a user runs it: progress, a summary, an annotated recording (of a file and
of a live stream), JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from framepipe.data import demo_truth_path, demo_video_path
from framepipe.testing import make_test_video
from tests.conftest import as_foreground_job
from tests.rtsp import RtspServer, system_python_has_gst_rtsp

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def framepipe(
    *args: str, cwd: Path, terminal: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    if terminal:  # rich draws the live progress as on a terminal
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def plain(text: str) -> str:
    """Terminal output as text: colours gone, each redraw of the progress line on its own line."""
    return ANSI.sub("", text).replace("\r", "\n")


def decoded(path: Path | str) -> Iterator[npt.NDArray[np.uint8]]:
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            yield frame.to_ndarray(format="bgr24")


def box_mask(
    shape: tuple[int, ...], box: tuple[float, ...], margin: float
) -> npt.NDArray[np.bool_]:
    """The pixels of ``box`` (x1, y1, x2, y2) grown by ``margin`` (shrunk when negative)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    x1, y1, x2, y2 = box
    inside: npt.NDArray[np.bool_] = (
        (xs >= x1 - margin) & (xs <= x2 + margin) & (ys >= y1 - margin) & (ys <= y2 + margin)
    )
    return inside


def row(summary: str, name: str) -> str:
    """The value of one row of the summary table."""
    match = re.search(rf"│ {re.escape(name)}\s+│ (.*?)\s+│", summary)
    assert match, (name, summary)
    return match.group(1)


def test_a_file_with_the_model_shows_progress_a_summary_and_records_the_boxes(
    tmp_path: Path,
) -> None:
    output = tmp_path / "annotated.mp4"
    result = framepipe(
        "run",
        str(demo_video_path()),
        "--model",
        "centerface",
        "--output",
        str(output),
        cwd=tmp_path,
        terminal=True,
    )
    shown = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    progress = [line for line in plain(result.stderr).splitlines() if " frames · " in line]
    positions = [
        int(m.group(1)) for line in progress if (m := re.search(r"(\d+)/200 frames", line))
    ]
    assert positions and positions[-1] == 200, shown
    assert len(set(positions)) >= 2, "the progress moved while the video was processed"
    assert "fps" in progress[-1] and "ETA" in progress[-1]

    summary = plain(result.stdout)
    assert row(summary, "results") == "200"
    assert row(summary, "frames decoded") == "200" and row(summary, "frames processed") == "200"
    assert row(summary, "drops by reason") == "none"
    assert row(summary, "state").startswith("FINISHED")
    faces = int(re.fullmatch(r"face (\d+)", row(summary, "detections per class")).group(1))  # type: ignore[union-attr]
    truth = json.loads(demo_truth_path().read_text())["per_frame"]
    visible = sum(1 for t in truth if t["visible"] == "full")
    assert faces >= 0.9 * visible
    assert f"{output}: 200 frames written, 0 dropped" in " ".join(summary.split())
    assert re.search(r"capture → result\s+│\s+[\d.]+", summary), summary

    # the recording: every frame, in order, with a box where the face is and nothing elsewhere
    boxed = 0
    count = 0
    for index, (original, annotated) in enumerate(
        zip(decoded(demo_video_path()), decoded(output), strict=True)
    ):
        count += 1
        diff = np.abs(original.astype(np.int16) - annotated.astype(np.int16)).max(axis=2)
        face = truth[index]
        box = tuple(face["face"])
        far = diff[~box_mask(diff.shape, box, 60)]  # beyond the box, its label, its keypoints
        assert far.mean() < 6 and (far > 50).mean() < 1e-3, f"frame {index}: changed far away"
        if face["visible"] == "full":
            # the box's edges, whatever the detector's jitter around the true box
            edges = box_mask(diff.shape, box, 10) & ~box_mask(diff.shape, box, -10)
            boxed += int((diff[edges] > 50).sum() > 300)
        elif face["visible"] == "none":
            assert (diff > 50).sum() < 50, f"frame {index} has no face but something was drawn"
    assert count == 200
    assert boxed >= 0.9 * visible, (boxed, visible)


def test_json_for_scripts_counts_drops_by_reason(tmp_path: Path) -> None:
    clip = make_test_video(tmp_path / "clip.mp4", frames=90, width=160, height=120, fps=30)
    result = framepipe("run", str(clip.path), "--max-fps", "10", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(" frames · ") == 0  # no progress drawn when stderr is no terminal
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["state"] == "FINISHED" and summary["stopped_by"] == "end"
    assert summary["frames_decoded"] == 90
    assert summary["results"] == summary["frames_processed"] == 30
    assert summary["frames_dropped"] == {"max_fps": 60}
    assert summary["model"] == "passthrough" and summary["detections"] == {}
    assert summary["frame_age_ms"]["p50"] is not None and summary["output"] is None


@pytest.mark.rtsp
def test_a_live_stream_is_recorded_until_ctrl_c(tmp_path: Path) -> None:
    if not system_python_has_gst_rtsp():
        pytest.skip("GStreamer RTSP server not installed (make system-deps)")
    server = RtspServer(fps=15)
    server.start()
    output = tmp_path / "camera.mp4"
    shown: list[str] = []
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TTY_COMPATIBLE": "1", "COLUMNS": "200"}
        command = [sys.executable, "-m", "framepipe.cli", "run", server.url, "--json"]
        with subprocess.Popen(
            [*command, "--output", str(output)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_foreground_job,
        ) as process:
            stderr, stdout_pipe = process.stderr, process.stdout
            assert stderr is not None and stdout_pipe is not None
            reader = threading.Thread(
                target=lambda: shown.extend(iter(lambda: stderr.read(256), "")), daemon=True
            )
            reader.start()
            try:
                # a stream has no length: a live counter, no bar to fill, no ETA
                counting = re.compile(r"\d+/\? frames · [1-9]\d* results")
                deadline = time.monotonic() + 60
                while not counting.search(plain("".join(shown))):
                    assert process.poll() is None, "".join(shown)
                    assert time.monotonic() < deadline, "no result counted:\n" + "".join(shown)
                    time.sleep(0.1)
                process.send_signal(signal.SIGINT)
                process.wait(60)  # (stderr is the reader's: no communicate(), which reads it too)
                stdout = stdout_pipe.read()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                reader.join(10)
    finally:
        server.kill()
    assert process.returncode == 0, "".join(shown)[-3000:]
    assert "ETA" not in plain("".join(shown))
    summary = json.loads(stdout)
    assert summary["stopped_by"] == "interrupt" and summary["video"] == server.url
    recording = summary["output"]
    assert recording["error"] is None and recording["frames_written"] > 0
    assert sum(1 for _ in decoded(output)) == recording["frames_written"]
    assert recording["frames_written"] + recording["frames_dropped"] >= summary["results"]


def test_errors_are_one_line_with_a_hint(tmp_path: Path) -> None:
    video = str(demo_video_path())
    for args, cause in (
        (("run", "no-such-video.mp4", "--output", str(tmp_path / "never.mp4")), "not found"),
        (("run", video, "--model", "no-such-model"), "not registered"),
        (("run", video, "--output", str(tmp_path / "missing" / "out.mp4")), "not a writable"),
        (("run", video, "--output", str(tmp_path / "out.txt")), "not a video file name"),
    ):
        result = framepipe(*args, cwd=tmp_path)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("framepipe: ") and cause in lines[-1], lines
        assert "(hint: " in lines[-1] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "a run that recorded nothing leaves no file"
