"""A real stream manager process for tests, and a raw wire client (one request per connection)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from framepipe._serve_process import ServeProcess
from framepipe.protocol.framing import encode_message
from framepipe.server.worker.process import WORKER_PROCESS_NAME

ROOT = Path(__file__).resolve().parents[2]


class ManagerProcess(ServeProcess):
    """``python -m framepipe serve --port 0`` with the given environment, run from the
    checkout."""

    def __init__(self, env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        super().__init__(
            args, env={"PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT, ready_timeout_s=20
        )

    def workers(self) -> list[psutil.Process]:
        """The pipeline workers (forked from the process template, named ``fp-worker``) and
        any other process the manager spawned itself (not its helpers)."""
        try:
            manager = psutil.Process(self.pid)
            children = manager.children()
            own = " ".join(manager.cmdline())
        except psutil.Error:
            return []
        workers = [proc for proc in self.tree() if _name(proc) == WORKER_PROCESS_NAME]
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
                helpers = ("resource_tracker", "forkserver", "framepipe.server.manager.reaper")
                # (a child with the manager's own command line is a fork not yet exec'd: the
                # forkserver or the resource tracker being started)
                if cmdline != own and not any(helper in cmdline for helper in helpers):
                    workers.append(child)
            except psutil.Error:
                continue
        return workers

    def decoders(self) -> list[psutil.Process]:
        """Decode processes anywhere in the manager's tree (the template's children that are
        not workers)."""
        found = []
        for proc in self.tree():
            try:
                parent = proc.parent()
                if (
                    parent is not None
                    and "forkserver" in " ".join(parent.cmdline())
                    and _name(proc) != WORKER_PROCESS_NAME
                ):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def request(self, message: dict[str, Any] | bytes, timeout: float = 30.0) -> dict[str, Any]:
        return wire_request(self.port, message, timeout)


@contextmanager
def running_manager(env: Mapping[str, str] | None = None) -> Iterator[ManagerProcess]:
    manager = ManagerProcess(env)
    try:
        yield manager
    finally:
        if manager.proc.poll() is None:
            code = manager.stop()
            assert code == 0, f"manager exited with {code}:\n{manager.output()}"


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


def wire_request(
    port: int, message: dict[str, Any] | bytes, timeout: float = 30.0
) -> dict[str, Any]:
    data = message if isinstance(message, bytes) else encode_message(message)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        header = _recv_exact(sock, 4)
        body = _recv_exact(sock, int.from_bytes(header, "big"))
    document: dict[str, Any] = json.loads(body)
    return document


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
