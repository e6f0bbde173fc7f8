"""`framepipe pipelines ...` and `framepipe top` as a user runs them: tables, --json, the
server's settings (token included), one-line errors, and Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing import SyntheticVideo, make_test_video
from tests.conftest import as_foreground_job
from tests.integration.manager_harness import ManagerProcess, running_manager

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("FRAMEPIPE_", "STREAM_MANAGER_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "framepipe.cli", *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """100 s at 30 fps: replayed in real time, it outlives each test."""
    path = tmp_path_factory.mktemp("cli") / "v.mp4"
    return make_test_video(path, frames=3000, width=128, height=72, fps=30)


@pytest.fixture
def manager_with_pipeline(video: SyntheticVideo) -> Iterator[tuple[ManagerProcess, str]]:
    """A manager running one pipeline, its results waiting in its sink."""
    with running_manager() as manager:
        client = SyncStreamManagerClient("127.0.0.1", manager.port, operations_timeout=60)
        started = client.initialise_pipeline(
            InitialisePipelinePayload(
                video_configuration=VideoConfiguration(
                    video_reference=str(video.path), realtime_replay=True
                ),
                processing_configuration=ModelConfiguration(model="passthrough"),
            )
        )
        pipeline_id = started.context.pipeline_id
        assert pipeline_id
        yield manager, pipeline_id
        client.terminate_pipeline(pipeline_id)


def test_list_and_status_as_tables_and_json(
    manager_with_pipeline: tuple[ManagerProcess, str],
) -> None:
    manager, pipeline_id = manager_with_pipeline
    env = {"STREAM_MANAGER_PORT": str(manager.port)}  # the server's own setting
    table = cli("pipelines", "list", env=env)
    assert table.returncode == 0, table.stderr
    assert "drops by reason" in table.stdout and pipeline_id in table.stdout
    listed = json.loads(cli("pipelines", "list", "--json", env=env).stdout)
    assert listed["pipelines"] == [pipeline_id]
    assert listed["reports"][pipeline_id]["sources_metadata"]

    status = cli("pipelines", "status", pipeline_id, env=env)
    assert status.returncode == 0, status.stderr
    for heading in ("state", "results produced", "sources", "recent events", str(pipeline_id)):
        assert heading in status.stdout
    report = json.loads(cli("pipelines", "status", pipeline_id, "--json", env=env).stdout)
    assert report["context"]["pipeline_id"] == pipeline_id and "report" in report

    consumed = cli("pipelines", "consume", pipeline_id, "--max-entries", "3", "--json", env=env)
    entries = json.loads(consumed.stdout)["entries"]
    assert 1 <= len(entries) <= 3
    lines = cli("pipelines", "consume", pipeline_id, "--max-entries", "2", env=env).stdout
    assert re.search(r"source 0 frame \d+ .*: \{", lines), lines

    paused = cli("pipelines", "pause", pipeline_id, "--json", env=env)
    assert json.loads(paused.stdout)["status"] == "success"
    resumed = cli("pipelines", "--port", str(manager.port), "resume", pipeline_id)
    assert resumed.stdout.strip() == f"resumed {pipeline_id}", resumed.stderr


def test_top_prints_one_snapshot_per_refresh_and_stops_after_count(
    manager_with_pipeline: tuple[ManagerProcess, str],
) -> None:
    manager, pipeline_id = manager_with_pipeline
    env = {"STREAM_MANAGER_PORT": str(manager.port)}
    lines = cli("top", "--json", "--count", "2", "--interval", "0.2", env=env).stdout.splitlines()
    assert len(lines) == 2
    assert [p["pipeline_id"] for p in json.loads(lines[-1])["pipelines"]] == [pipeline_id]
    table = cli("top", "--count", "1", env=env)
    assert table.returncode == 0 and pipeline_id in table.stdout and "Ctrl-C" in table.stdout
    refused = cli("top", "--interval", "0.01", env=env)
    assert refused.returncode == 2 and "at least 0.2" in refused.stderr


def test_top_leaves_cleanly_on_ctrl_c() -> None:
    with running_manager() as manager:
        primary, secondary = pty.openpty()  # a terminal: the live view redraws in place
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAM_MANAGER_")},
            "PYTHONPATH": str(ROOT),
            "STREAM_MANAGER_PORT": str(manager.port),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "framepipe.cli", "top", "--interval", "0.2"],
            cwd=ROOT,
            env=env,
            stdin=secondary,
            stdout=secondary,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=as_foreground_job,
        )
        os.close(secondary)
        screen = b""
        deadline = time.monotonic() + 60
        try:
            while b"Ctrl-C leaves" not in screen and time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 1)
                if ready:
                    screen += os.read(primary, 65536)
            assert b"(no pipelines)" in screen, screen[-2000:]
            proc.send_signal(signal.SIGINT)
            # Read the terminal until top leaves, as a terminal does: a pty nobody reads fills
            # up (~18 KB, a few seconds of redraws) and blocks top in write() for good.
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([primary], [], [], 0.1)[0]:
                    with contextlib.suppress(OSError):  # EIO once top has closed its side
                        os.read(primary, 65536)
            code = proc.wait(1)
            assert proc.stderr is not None
            errors = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(primary)
            if proc.stderr is not None:
                proc.stderr.close()
        assert code == 0 and "Traceback" not in errors, errors


def test_the_cli_reads_the_token_the_server_reads() -> None:
    manager = ManagerProcess({"FRAMEPIPE_TOKEN": "s3cret"})
    try:
        env = {"STREAM_MANAGER_PORT": str(manager.port)}
        refused = cli("pipelines", "list", env=env)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "authorisation_error" in refused.stderr
        assert "hint: set FRAMEPIPE_TOKEN" in refused.stderr
        allowed = cli("pipelines", "list", "--json", env={**env, "FRAMEPIPE_TOKEN": "s3cret"})
        assert allowed.returncode == 0, allowed.stderr
        flag = cli("pipelines", "list", "--json", "--token", "s3cret", env=env)
        assert flag.returncode == 0, flag.stderr
    finally:
        assert manager.stop() == 0


def test_errors_are_one_line_and_verbose_adds_the_traceback() -> None:
    unreachable = {"STREAM_MANAGER_PORT": "1"}
    quiet = cli("pipelines", "list", env=unreachable)
    assert quiet.returncode == 1
    assert quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    assert "127.0.0.1:1" in quiet.stderr and "hint: is `framepipe serve` running" in quiet.stderr
    verbose = cli("-v", "pipelines", "list", env=unreachable)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == quiet.stderr.strip()
    bad_setting = cli("pipelines", "list", env={"STREAM_MANAGER_PORT": "x"})
    assert bad_setting.returncode == 2 and "STREAM_MANAGER_PORT" in bad_setting.stderr


def test_serve_refuses_a_busy_http_port_in_one_line() -> None:
    with running_manager() as manager:
        busy = cli("serve", "--port", "0", "--http-port", str(manager.port), timeout=60)
        assert busy.returncode == 1, busy.stdout + busy.stderr
        last = busy.stderr.strip().splitlines()[-1]
        assert last.startswith("framepipe: cannot listen for HTTP") and "--http-port" in last
