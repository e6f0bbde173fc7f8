"""The one helper that starts ``framepipe serve`` and reads its port (demo, bench, perf, tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from framepipe._serve_process import ServeProcess, announced_address
from framepipe.client import SyncStreamManagerClient


def test_the_announced_address_is_read_from_the_line_serve_prints() -> None:
    line = "framepipe: stream manager listening on 127.0.0.1:40123\n"
    assert announced_address(line) == ("127.0.0.1", 40123)
    assert announced_address("metrics endpoint listening on 127.0.0.1:9") is None


def test_a_started_server_answers_on_the_port_it_announced_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    with ServeProcess(log_path=log, env={"STREAM_API_PRELOADED_PROCESSES": "0"}) as server:
        assert server.port > 0
        client = SyncStreamManagerClient(host=server.host, port=server.port)
        assert client.list_pipelines().pipelines == []
        code = server.stop()
    assert code == 0, server.output()
    assert "listening on" in log.read_text()


def test_a_server_that_cannot_start_says_so_with_its_output() -> None:
    with pytest.raises(RuntimeError, match="exited before listening") as failure:
        ServeProcess(env={"STREAM_MANAGER_MAX_RAM_MB": "not-a-number"})
    assert "STREAM_MANAGER_MAX_RAM_MB" in str(failure.value)
