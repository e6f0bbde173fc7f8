"""The README's Python example as a user edits it, copied into a script in a directory of their
own (as written it runs in tests/e2e/test_readme_examples.py): a path that does not exist, a
file that is not a video, a file cut short, an unknown model — each must fail with the exception
naming the cause, never print nothing and exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from framepipe.testing import make_test_video

ROOT = Path(__file__).resolve().parents[2]


def readme_python_example() -> str:
    """The README's first Python example (the local ``Pipeline``), as written there."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    example: str = next(b for b in blocks if "from framepipe import Pipeline" in b)
    return example


def run_script(source: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,  # not the checkout: the example must not depend on where it runs
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


def with_video(example: str, path: str) -> str:
    """The example with the user's own video in place of the bundled one."""
    assert "demo_video_path()" in example
    return example.replace("Pipeline(demo_video_path(),", f"Pipeline({path!r},")


def test_a_path_that_does_not_exist_raises_not_found(tmp_path: Path) -> None:
    result = run_script(with_video(readme_python_example(), "no-such-video.mp4"), tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert last_line(result.stderr) == (
        "framepipe.protocol.errors.NotFoundError: video_reference 'no-such-video.mp4' not found"
    )


def test_a_file_no_decoder_can_open_raises_at_start(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(64 * 1024))
    result = run_script(with_video(readme_python_example(), str(corrupt)), tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert last_line(result.stderr).startswith(
        f"framepipe.protocol.errors.OperationError: could not open video_reference '{corrupt}'"
    ), result.stderr


def test_an_unknown_model_raises(tmp_path: Path) -> None:
    example = readme_python_example().replace('model="centerface"', 'model="no-such-model"')
    result = run_script(example, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert last_line(result.stderr).startswith(
        "framepipe.protocol.errors.InvalidPayloadError: model 'no-such-model' is not registered"
    ), result.stderr


def _cut_short(tmp_path: Path) -> Path:
    """A 10 s video (300 frames) of which only the first half of the bytes survived."""
    whole = make_test_video(tmp_path / "whole.mp4", frames=300, faststart=True)
    data = whole.path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_file_cut_short_ends_results_with_the_failure_after_its_results(
    tmp_path: Path,
) -> None:
    cut = _cut_short(tmp_path)
    result = run_script(with_video(readme_python_example(), str(cut)), tmp_path)
    assert result.returncode == 1
    printed = result.stdout.splitlines()
    assert 20 <= len(printed) < 100, printed  # the frames before the cut, at max_fps=10
    assert re.match(
        r"framepipe.protocol.errors.OperationError: .*ended at frame \d+ of the 300 its "
        r"container announces: the file is truncated or damaged$",
        last_line(result.stderr),
    ), result.stderr


def test_on_prediction_users_get_the_failure_when_leaving_the_block(tmp_path: Path) -> None:
    cut = _cut_short(tmp_path)
    source = f"""
from framepipe import Pipeline

def show(outputs, frames_metadata):
    print(frames_metadata[0].frame_id, flush=True)

with Pipeline({str(cut)!r}, on_prediction=show) as pipeline:
    pipeline.join()
"""
    result = run_script(source, tmp_path)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) >= 100, result.stdout
    assert "the file is truncated or damaged" in last_line(result.stderr), result.stderr
    assert "in join" in result.stderr  # raised by join(), not only when leaving the block
