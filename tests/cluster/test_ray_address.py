"""``framepipe serve --backend ray`` with an address where no Ray cluster answers: one line,
exit status 2, within seconds (not a hang)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from framepipe.testing.rtsp import free_port

pytestmark = pytest.mark.cluster


def test_an_address_that_does_not_answer_is_one_clear_line() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "framepipe.cli",
            "serve",
            "--port",
            "0",
            "--backend",
            "ray",
            "--address",
            address,
        ],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"framepipe: no Ray cluster answers at {address}")
    assert "ray start --head" in lines[0]
    assert elapsed < 15, elapsed
    assert "listening" not in result.stdout
