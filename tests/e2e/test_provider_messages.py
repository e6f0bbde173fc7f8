"""What a user on a machine without a GPU hears about execution providers.

The project installs ``onnxruntime-gpu`` on Linux x86_64 (pyproject.toml), which lists the CUDA
provider everywhere; on a machine without a GPU it cannot start. That is no news to the user:
one INFO line says which provider runs. It is a warning only when a GPU provider was asked for
(FRAMEPIPE_PROVIDERS) — or a GPU is present and its provider failed, which this machine cannot
show. Run with the real onnxruntime-gpu and the real model, as a user runs ``framepipe run``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from framepipe.data import demo_video_path

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers() or bool(glob.glob("/dev/nvidia*")),
    reason="needs onnxruntime-gpu (the project's build on Linux x86_64) on a machine without a GPU",
)


def run_centerface(cwd: Path, **env: str) -> list[str]:
    """``framepipe run`` of 3 frames with CenterFace; its log lines (stderr, progress aside)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEPIPE_")}
    command = [sys.executable, "-m", "framepipe.cli", "run", str(demo_video_path())]
    result = subprocess.run(
        [*command, "--model", "centerface", "--frames", "3", "--json"],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if " framepipe." in line]


def test_no_gpu_and_none_asked_for_is_one_info_line(tmp_path: Path) -> None:
    lines = run_centerface(tmp_path)
    assert not [line for line in lines if " WARNING " in line], lines
    providers = [line for line in lines if "running on" in line]
    assert len(providers) == 1, lines
    assert " INFO " in providers[0] and "running on CPUExecutionProvider" in providers[0]


def test_a_gpu_asked_for_and_missing_is_a_warning(tmp_path: Path) -> None:
    lines = run_centerface(tmp_path, FRAMEPIPE_PROVIDERS="cuda,cpu")
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines
    assert "CUDAExecutionProvider unavailable" in warnings[0]
    assert "running on CPUExecutionProvider" in warnings[0]
