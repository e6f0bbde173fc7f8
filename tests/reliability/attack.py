"""Tools to attack a real manager process and watch what it costs (tests and perf/bench_attack.py).

Everything here is bounded: each loop stops at a deadline and after a maximum count, sockets
have timeouts, and everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from framepipe.client import SyncStreamManagerClient
from framepipe.protocol.framing import encode_frame

HOST = "127.0.0.1"


def amplification_frame(arrays: int = 5_000_000) -> bytes:
    """The issue's attack: 15 MB of empty JSON arrays (5 million lists once parsed), no token."""
    return encode_frame(b"[" + b",".join([b"[]"] * arrays) + b"]")


def heavy_valid_frame(
    token: str | None, items: int = 49_000, size: int = 1024 * 1024 - 64
) -> bytes:
    """The most expensive request the default limits let through: a ``list_pipelines`` with the
    token, ~1 MiB, holding just under 50,000 JSON items (each parsed into a Python object)."""
    head = b'{"type": "list_pipelines", "auth_token": "' + (token or "").encode() + b'", "x": ['
    body = b",".join([b"1"] * items)
    pad = b'], "pad": "' + b"p" * max(0, size - len(head) - len(body) - 14) + b'"}'
    return encode_frame(head + body + pad)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Peaks:
    rss_mb: float = 0.0
    uss_mb: float = 0.0
    fds: int = 0
    samples: int = 0
    rss_series: list[float] = field(default_factory=list)


class Sampler:
    """Samples a process's RSS, USS and open descriptors in a thread; keeps the peaks."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> None:
        try:
            info = self.process.memory_full_info()
            fds = self.process.num_fds()
        except psutil.Error:
            return
        peaks = self.peaks
        peaks.rss_mb = max(peaks.rss_mb, info.rss / 2**20)
        peaks.uss_mb = max(peaks.uss_mb, info.uss / 2**20)
        peaks.fds = max(peaks.fds, fds)
        peaks.samples += 1
        peaks.rss_series.append(info.rss / 2**20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def fd_count(pid: int) -> int:
    return int(psutil.Process(pid).num_fds())


@dataclass
class AttackStats:
    sent: int = 0
    answered: int = 0
    cut: int = 0  # the server closed or reset before an answer
    error_classes: dict[str, int] = field(default_factory=dict)


class Attackers:
    """``clients`` threads, each sending ``frame`` on a new connection again and again until
    ``duration_s`` has passed (or ``max_sends`` each), reading whatever answer comes."""

    def __init__(
        self,
        port: int,
        frame: bytes,
        *,
        clients: int = 16,
        duration_s: float = 4.0,
        max_sends: int = 1000,
        socket_timeout_s: float = 15.0,
    ) -> None:
        self.port = port
        self.frame = frame
        self.clients = clients
        self.duration_s = duration_s
        self.max_sends = max_sends
        self.socket_timeout_s = socket_timeout_s
        self.stats = AttackStats()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True, name=f"attacker-{i}")
            for i in range(clients)
        ]
        self._deadline = 0.0

    def __enter__(self) -> Attackers:
        self._deadline = time.monotonic() + self.duration_s
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self.duration_s + 2 * self.socket_timeout_s + 5)

    def _run(self) -> None:
        for _ in range(self.max_sends):
            if time.monotonic() >= self._deadline:
                return
            answer = b""
            try:
                with socket.create_connection(
                    (HOST, self.port), timeout=self.socket_timeout_s
                ) as s:
                    with contextlib.suppress(OSError):  # refused early: the server stopped reading
                        s.sendall(self.frame)
                    answer = _read_some(s)
            except OSError:
                pass
            self._record(answer)

    def _record(self, answer: bytes) -> None:
        with self._lock:
            self.stats.sent += 1
            if len(answer) > 4:
                self.stats.answered += 1
                marker = b'"error_class": "'
                start = answer.find(marker)
                if start >= 0:
                    end = answer.find(b'"', start + len(marker))
                    name = answer[start + len(marker) : end].decode(errors="replace")
                    self.stats.error_classes[name] = self.stats.error_classes.get(name, 0) + 1
            else:
                self.stats.cut += 1


def _read_some(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(limit)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def _attack_process(
    port: int,
    arrays: int,
    clients: int,
    duration_s: float,
    token: str | None,
    cpus: set[int] | None,
    connection: Any,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    frame = heavy_valid_frame(token) if arrays == 0 else amplification_frame(arrays)
    attackers = Attackers(port, frame, clients=clients, duration_s=duration_s)
    with attackers:
        pass
    connection.send(attackers.stats)
    connection.close()


class AttackProcess:
    """:class:`Attackers` in a process of their own (so that the attack's client-side work
    does not slow a prober in this process): ``with AttackProcess(...) as attack: ...``;
    ``attack.stats`` once it has ended."""

    def __init__(
        self,
        port: int,
        *,
        clients: int = 16,
        duration_s: float = 4.0,
        arrays: int = 5_000_000,
        heavy_valid_with_token: str | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        """``arrays``: the amplification body's size; or, with ``heavy_valid_with_token``, the
        clients send :func:`heavy_valid_frame` with that token instead. ``cpus``: the cores the
        attack runs on (default: any)."""
        if heavy_valid_with_token is not None:
            arrays = 0
        context = multiprocessing.get_context("spawn")
        self._results, self._sender = context.Pipe(duplex=False)
        self.duration_s = duration_s
        self.process = context.Process(
            target=_attack_process,
            args=(port, arrays, clients, duration_s, heavy_valid_with_token, cpus, self._sender),
            name="attack",
            daemon=True,
        )
        self.stats = AttackStats()
        self._joined = False

    def __enter__(self) -> AttackProcess:
        self.process.start()
        self._sender.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        if self._joined:
            return
        self._joined = True
        try:  # read before joining (a result larger than the pipe's buffer would block it)
            if self._results.poll(self.duration_s + 60):
                self.stats = self._results.recv()
        except EOFError:
            pass  # the attack process died: stats stay empty, and the test says so
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._results.close()


@dataclass
class ProbeStats:
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary_ms(self) -> dict[str, float]:
        values = self.latencies_s
        return {
            "probes": float(len(values)),
            "failures": float(len(self.failures)),
            "p50_ms": round(statistics.median(values) * 1e3, 2) if values else float("nan"),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 2),
            "max_ms": round(max(values) * 1e3, 2) if values else float("nan"),
        }


class Prober:
    """An authenticated ``status`` every ``interval_s`` (one connection each, as the protocol
    requires), each bounded by ``timeout_s``, in a thread, until stopped."""

    def __init__(
        self,
        port: int,
        pipeline_id: str,
        *,
        token: str | None,
        timeout_s: float = 2.0,
        interval_s: float = 0.05,
        max_probes: int = 5000,
        check: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self.client = SyncStreamManagerClient(
            host=HOST, port=port, operations_timeout=timeout_s, auth_token=token
        )
        self.pipeline_id = pipeline_id
        self.interval_s = interval_s
        self.max_probes = max_probes
        self.check = check
        self.stats = ProbeStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prober")

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        for _ in range(self.max_probes):
            if self._stop.is_set():
                return
            started = time.perf_counter()
            try:
                report = self.client.get_status(self.pipeline_id).report
                if self.check is not None:
                    self.check(report)
                self.stats.latencies_s.append(time.perf_counter() - started)
            except Exception as error:
                self.stats.failures.append(f"{type(error).__name__}: {error}")
            self._stop.wait(self.interval_s)
