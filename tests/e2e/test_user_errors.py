"""Errors a user meets first, as they meet them: a port that is taken, a request the HTTP gateway
refuses, a body that is not JSON. Each is one line that says what was wrong and which setting
or field to change."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway_harness import running_gateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


def serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEPIPE_", "STREAM_"))}
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", "serve", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_taken_port_names_the_flag_and_the_setting(tmp_path: Path, taken_port: int) -> None:
    for args, env in (
        (("--port", str(taken_port)), None),
        ((), {"STREAM_MANAGER_PORT": str(taken_port)}),
    ):
        result = serve(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip()
        assert line.startswith(f"framepipe: cannot listen on 127.0.0.1:{taken_port}: "), line
        assert "--port or STREAM_MANAGER_PORT" in line and "0: any free port" in line, line


def test_a_taken_http_port_names_the_flag(tmp_path: Path, taken_port: int) -> None:
    result = serve("--port", "0", "--http-port", str(taken_port), cwd=tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the manager's log of its own start
    assert line.startswith("framepipe: cannot listen for HTTP"), line
    assert f"127.0.0.1:{taken_port}" in line and "--http-port" in line, line


def test_http_400s_carry_the_error_class_and_say_where_json_broke() -> None:
    with running_gateway() as gateway:
        missing = gateway.http.post(
            "/inference_pipelines/initialise",
            json={"video_configuration": {"type": "VideoConfiguration"}},
        )
        assert missing.status_code == 400
        body = missing.json()
        assert body["error_type"] == "invalid_payload"
        assert body["error_class"] == "InvalidPayloadError"
        assert "video_configuration.video_reference" in body["message"]

        broken = gateway.http.post(
            "/inference_pipelines/initialise",
            content=b'{"video_configuration": {"type": "VideoConfiguration",\n'
            b' "video_reference": "x.mp4",}}',
            headers={"Content-Type": "application/json"},
        )
        assert broken.status_code == 400
        body = broken.json()
        assert body["error_class"] == "InvalidPayloadError"
        assert body["message"] == (
            "the body is not valid JSON: Expecting property name enclosed in double quotes "
            "at line 2, column 29"
        )
