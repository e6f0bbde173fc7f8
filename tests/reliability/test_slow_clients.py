"""Clients that hold connections without completing a request: slow-loris clients trickling
bytes, and a thousand connections opened and abandoned. The manager drops each at its read
timeout (or, at its connection limit, drops the oldest one still sending to make room), keeps
answering everyone else meanwhile, and ends with as many descriptors as it started with."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.protocol.framing import encode_message
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for
from tests.reliability.attack import Prober, Sampler, fd_count
from tests.reliability.conftest import TOKEN, start_passthrough

READ_TIMEOUT_S = 2.0
HOST = "127.0.0.1"


def manager_env(**extra: str) -> dict[str, str]:
    return {"FRAMEPIPE_TOKEN": TOKEN, "FRAMEPIPE_READ_TIMEOUT": str(READ_TIMEOUT_S), **extra}


def running_fds(manager: ManagerProcess, client: SyncStreamManagerClient, pipeline_id: str) -> int:
    """The manager's descriptors once the pipeline runs: after its first result, when its
    source's frame ring (whose segment the manager holds open) exists."""
    wait_for(
        lambda: client.consume_pipeline_result(pipeline_id).outputs,
        30,
        "the pipeline's first result",
    )
    return fd_count(manager.pid)


def settle_fds(manager: ManagerProcess, target: int, timeout: float = 15.0) -> int:
    """Wait until the manager holds at most ``target`` descriptors; the count then."""
    wait_for(lambda: fd_count(manager.pid) <= target, timeout, f"at most {target} descriptors")
    return fd_count(manager.pid)


class Trickler:
    """``count`` connections each sending a valid request one byte per ``interval_s``: the
    request would take far longer than the server's read timeout to arrive."""

    def __init__(self, port: int, count: int, interval_s: float = 0.25) -> None:
        request = encode_message({"type": "list_pipelines", "auth_token": TOKEN, "pad": "p" * 64})
        self.request = request
        self.interval_s = interval_s
        self.sockets: list[socket.socket] = []
        self.opened: list[float] = []
        self.ended: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=5)
            sock.setblocking(False)
            self.sockets.append(sock)
            self.opened.append(time.monotonic())

    def run(self, deadline_s: float) -> None:
        """Trickle until every connection was ended by the server, or ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        sent = 0
        while len(self.ended) < len(self.sockets) and time.monotonic() < deadline:
            for index, sock in enumerate(self.sockets):
                if index in self.ended:
                    continue
                self._read(index, sock)
                if index in self.ended or sent >= len(self.request):
                    continue
                try:
                    sock.send(self.request[sent : sent + 1])
                except OSError:
                    self.ended[index] = time.monotonic()
            sent += 1
            time.sleep(self.interval_s)

    def _read(self, index: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.answers[index] = self.answers.get(index, b"") + data
        self.ended.setdefault(index, time.monotonic())

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def lifetimes(self) -> list[float]:
        return [self.ended[i] - self.opened[i] for i in sorted(self.ended)]

    def error_classes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for answer in self.answers.values():
            for name in ("RequestTimeoutError", "ConnectionLimitError"):
                if name.encode() in answer:
                    found[name] = found.get(name, 0) + 1
        return found


@pytest.mark.parametrize(
    ("slow", "max_connections"), [(100, None), (150, 64)], ids=["under-the-cap", "over-the-cap"]
)
def test_slow_loris_clients_are_dropped_and_others_are_served(
    long_video: Path, figures: list[str], slow: int, max_connections: int | None
) -> None:
    extra = {"FRAMEPIPE_MAX_CONNECTIONS": str(max_connections)} if max_connections else {}
    with running_manager(manager_env(**extra)) as manager:
        client = SyncStreamManagerClient(
            host=HOST, port=manager.port, operations_timeout=30, auth_token=TOKEN
        )
        pipeline_id = start_passthrough(client, long_video)
        baseline_fds = running_fds(manager, client, pipeline_id)
        with Prober(manager.port, pipeline_id, token=TOKEN, timeout_s=2.0) as prober:
            trickler = Trickler(manager.port, slow)
            try:
                trickler.run(deadline_s=READ_TIMEOUT_S + 8)
            finally:
                trickler.close()
        lifetimes = trickler.lifetimes()
        classes = trickler.error_classes()
        summary = prober.stats.summary_ms()
        figures.append(
            f"slow-loris[{slow} clients, cap {max_connections or 512}]: dropped after "
            f"{min(lifetimes):.1f}-{max(lifetimes):.1f} s (read timeout {READ_TIMEOUT_S:g} s), "
            f"answers {classes}; status p99 {summary['p99_ms']:.1f} ms, max "
            f"{summary['max_ms']:.1f} ms over {int(summary['probes'])} probes"
        )

        assert len(lifetimes) == slow, "every slow client was dropped"
        assert max(lifetimes) < READ_TIMEOUT_S + 2.0
        if max_connections is None:
            assert classes == {"RequestTimeoutError": slow}
            assert min(lifetimes) > READ_TIMEOUT_S - 0.5  # not before its time
        else:  # beyond the cap, the oldest were dropped at once to make room (with an answer
            # when their socket was still taking one)
            early = [t for t in lifetimes if t < READ_TIMEOUT_S - 0.5]
            assert len(early) >= slow - max_connections, sorted(lifetimes)
            assert set(classes) <= {"ConnectionLimitError", "RequestTimeoutError"}
        assert not prober.stats.failures, prober.stats.failures[:5]
        assert len(prober.stats.latencies_s) >= 10 and max(prober.stats.latencies_s) < 2.0
        settle_fds(manager, baseline_fds + 2)
        assert client.get_status(pipeline_id).status == "success"
        client.terminate_pipeline(pipeline_id)


def test_a_thousand_abandoned_connections_leave_no_descriptor_behind(
    long_video: Path, figures: list[str]
) -> None:
    with running_manager(manager_env()) as manager:
        client = SyncStreamManagerClient(
            host=HOST, port=manager.port, operations_timeout=30, auth_token=TOKEN
        )
        pipeline_id = start_passthrough(client, long_video)
        baseline_fds = running_fds(manager, client, pipeline_id)
        abandoned: list[socket.socket] = []
        try:
            with (
                Sampler(manager.pid, interval_s=0.1) as sampler,
                Prober(manager.port, pipeline_id, token=TOKEN, timeout_s=2.0) as prober,
            ):
                started = time.monotonic()
                for index in range(1000):
                    sock = socket.create_connection((HOST, manager.port), timeout=5)
                    if index % 2:
                        sock.send(b"\x00")  # half of them start a header, half send nothing
                    abandoned.append(sock)
                opened_s = time.monotonic() - started
                # They are dropped within the read timeout (after the kernel hands over those
                # that sent nothing: TCP_DEFER_ACCEPT holds them for a second or two first).
                settled = settle_fds(manager, baseline_fds + 2, timeout=READ_TIMEOUT_S + 10)
                dropped_s = time.monotonic() - started
        finally:
            for sock in abandoned:
                with contextlib.suppress(OSError):
                    sock.close()
        summary = prober.stats.summary_ms()
        figures.append(
            f"abandoned connections: 1000 opened in {opened_s:.1f} s, all dropped "
            f"{dropped_s:.1f} s after the first; manager fds {baseline_fds} before, peak "
            f"{sampler.peaks.fds}, {settled} after; status p99 {summary['p99_ms']:.1f} ms over "
            f"{int(summary['probes'])} probes"
        )
        # The connection cap (512) held: never more than it open at once, give or take the
        # few evicted sockets that asyncio closes on its next pass and the prober's.
        assert sampler.peaks.fds < baseline_fds + 512 + 24
        assert not prober.stats.failures, prober.stats.failures[:5]
        assert max(prober.stats.latencies_s) < 2.0
        time.sleep(0.5)
        assert fd_count(manager.pid) <= baseline_fds + 2
        assert client.list_pipelines().pipelines == [pipeline_id]
        client.terminate_pipeline(pipeline_id)
