"""The command line end to end: `framepipe demo` and `framepipe pipelines ...` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.manager_harness import running_manager

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pipelines_commands_against_a_running_manager() -> None:
    with running_manager() as manager:
        listed = cli("pipelines", "--port", str(manager.port), "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["pipelines"] == []
        missing = cli("pipelines", "--port", str(manager.port), "status", "no-such-id")
        assert missing.returncode == 1
        assert "not_found" in missing.stderr and "no-such-id" in missing.stderr


def test_serve_rejects_bad_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "framepipe.cli", "serve"],
        cwd=ROOT,
        env={**ENV, "STREAM_MANAGER_PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "STREAM_MANAGER_PORT" in result.stderr


def test_demo_runs_and_exits_cleanly() -> None:
    result = cli("demo", "--seconds", "90", timeout=180)  # it ends when the video does
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "started in" in result.stdout
    assert result.stdout.count("frame ") >= 10, result.stdout[-2000:]
    # the bundled face detector on the bundled video: faces found, with a score and a box
    text = " ".join(result.stdout.split())  # the terminal may wrap long lines anywhere
    assert "model centerface" in text
    assert len(re.findall(r"face 0\.\d\d \[\d+,\d+ \d+x\d+\]", text)) >= 5
    assert "shut down cleanly" in result.stdout
