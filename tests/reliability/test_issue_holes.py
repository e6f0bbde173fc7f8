"""Each small hole the issue reported, tried again on a real manager and the real command line:
bad input is ``invalid_payload`` naming what was wrong (never ``internal_error``, never a
traceback in the log), and unsafe settings stop ``framepipe serve`` with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framepipe._serve_process import ServeProcess, serve_command
from framepipe.protocol.framing import encode_frame
from tests.integration.manager_harness import ROOT, ManagerProcess, running_manager, wait_for
from tests.reliability.conftest import TOKEN, settled
from tests.tls import self_signed

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def init(**video: Any) -> dict[str, Any]:
    return {
        "type": "init",
        "auth_token": TOKEN,
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": "/nonexistent.mp4",
            **video,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
    }


def with_token(inner: bytes) -> bytes:
    """A raw frame holding ``inner`` and the token (so that it is checked, not refused unread)."""
    return encode_frame(b'{"auth_token": "' + TOKEN.encode() + b'", "x": ' + inner + b"}")


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerProcess]:
    with running_manager({"FRAMEPIPE_TOKEN": TOKEN}) as running:
        settled(running)
        yield running


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (with_token(b"[" * 100_000 + b"]" * 100_000), "JSON items"),
        (with_token(b"[" * 40_000 + b"]" * 40_000), "levels deep"),
        (init(video_reference="/v" * 5000), "limit is 4096"),
        (init(video_reference="/" + "n" * 300), "File name too long"),
        ({**init(), "consumption_timeout": 0}, "consumption_timeout"),
        ({**init(), "consumption_timeout": -1}, "consumption_timeout"),
        (init(max_fps=1e-9), "max_fps"),
        (init(video_reference="/dev/zero"), "not a video capture device"),
        (init(video_reference="/dev/null"), "not a video capture device"),
    ],
    ids=[
        "100k-deep",
        "40k-deep",
        "10kB-reference",
        "long-file-name",
        "consumption-timeout-0",
        "consumption-timeout-negative",
        "max-fps-1e-9",
        "dev-zero",
        "dev-null",
    ],
)
def test_bad_input_is_invalid_payload_naming_it(
    manager: ManagerProcess, request_: dict[str, Any] | bytes, fragment: str
) -> None:
    answer = manager.request(request_)
    response = answer["response"]
    assert response["error_type"] == "invalid_payload", response
    assert fragment in response["error_message"], response
    assert manager.workers() == [], "nothing was started for a refused request"


def test_no_traceback_was_logged_for_any_of_it(manager: ManagerProcess) -> None:
    assert (
        manager.request({"type": "list_pipelines", "auth_token": TOKEN})["response"]["pipelines"]
        == []
    )
    assert "Traceback" not in manager.output()
    assert "internal_error" not in manager.output()


# --- settings: refused at start, exit status 2 ---------------------------------------------


def serve(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", "serve", "--port", "0", *args],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_an_empty_token_stops_the_start() -> None:
    result = serve(env={"FRAMEPIPE_TOKEN": ""})
    assert result.returncode == 2
    assert "FRAMEPIPE_TOKEN is set but empty" in result.stderr


def test_a_public_address_without_a_token_stops_the_start(tmp_path: Path) -> None:
    # Refused before anything is bound: no socket is opened beyond loopback.
    result = serve("--host", "0.0.0.0", "--video-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--allow-unauthenticated" in result.stderr
    result = serve("--host", "0.0.0.0", env={"FRAMEPIPE_TOKEN": TOKEN})
    assert result.returncode == 2 and "FRAMEPIPE_VIDEO_DIRS" in result.stderr


def test_a_public_address_allowed_on_purpose_is_warned_about(tmp_path: Path) -> None:
    """Run in a network namespace of its own (only a loopback device there): the address
    0.0.0.0 is bound without reaching any real network."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode != 0:
        pytest.skip("needs unshare -n (root) to bind 0.0.0.0 in a private network namespace")
    server = ServeProcess(
        env={"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        command=[
            unshare,
            "-n",
            *serve_command(
                "--host", "0.0.0.0", "--allow-unauthenticated", "--video-dir", str(tmp_path)
            ),
        ],
    )
    try:
        output = server.output()
        assert "WARNING" in output and "WITHOUT a token" in output, output
        assert "without TLS" in output, output
    finally:
        server.stop()


# --- the command line reads the token and speaks TLS --------------------------------------


def pipelines(*args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", "pipelines", *args],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_pipelines_command_reads_framepipe_token(manager: ManagerProcess) -> None:
    port = str(manager.port)
    anonymous = pipelines("--port", port, "list", env={"FRAMEPIPE_TOKEN": ""})
    assert anonymous.returncode == 2 and "FRAMEPIPE_TOKEN is set but empty" in anonymous.stderr
    listed = pipelines("--port", port, "list", "--json", env={"FRAMEPIPE_TOKEN": TOKEN})
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["pipelines"] == []
    wrong = pipelines("--port", port, "--token", "not-the-token-at-all", "list")
    assert wrong.returncode == 1 and "authorisation_error" in wrong.stderr


def test_tls_end_to_end_through_the_command_line(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = {"FRAMEPIPE_TOKEN": TOKEN, "FRAMEPIPE_TLS_CERT": str(cert), "FRAMEPIPE_TLS_KEY": str(key)}
    with running_manager(env) as manager:
        assert any("(TLS)" in line for line in manager.lines)
        port = str(manager.port)
        ok = pipelines(
            "--port", port, "--tls-ca", str(cert), "list", "--json", env={"FRAMEPIPE_TOKEN": TOKEN}
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["pipelines"] == []
        untrusted = pipelines("--port", port, "--tls", "list", env={"FRAMEPIPE_TOKEN": TOKEN})
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        plain = pipelines("--port", port, "--timeout", "5", "list", env={"FRAMEPIPE_TOKEN": TOKEN})
        assert plain.returncode == 1


# --- video directories on a real manager ----------------------------------------------------


def test_video_dirs_confine_file_references(tmp_path: Path, long_video: Path) -> None:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    inside = allowed / "clip.mp4"
    inside.symlink_to(long_video)  # a link inside pointing outside: refused once resolved
    copy = allowed / "copy.mp4"
    shutil.copyfile(long_video, copy)
    env = {"FRAMEPIPE_TOKEN": TOKEN, "FRAMEPIPE_VIDEO_DIRS": str(allowed)}
    with running_manager(env) as manager:
        for reference in (str(long_video), str(inside), f"{allowed}/../{long_video.name}"):
            response = manager.request(init(video_reference=reference))["response"]
            assert response["error_type"] == "invalid_payload", response
            assert "outside the video directories" in response["error_message"]
        started = manager.request(init(video_reference=str(copy), max_fps=10))
        assert started["response"]["status"] == "success", started
        pipeline_id = started["pipeline_id"]
        wait_for(lambda: len(manager.workers()) == 1, 30, "the pipeline's worker")
        ended = manager.request(
            {"type": "terminate", "pipeline_id": pipeline_id, "auth_token": TOKEN}
        )
        assert ended["response"]["status"] == "success"
