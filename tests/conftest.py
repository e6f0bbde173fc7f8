"""Suite-wide guards: a test that leaks a shared-memory segment, a semaphore or a child
process fails, and what it leaked is cleaned up so the next test starts clean."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

SHM_DIR = Path("/dev/shm")
# Segments are /dev/shm/fp-<pid>-<id>; named semaphores are /dev/shm/sem.fp-<pid>-<id>.
_PREFIXES = ("fp-", "sem.fp-")


def framepipe_shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(_PREFIXES)}
    except FileNotFoundError:
        return set()


_ROOT = Path(__file__).resolve().parents[1]


def _owner_pid(name: str) -> int | None:
    pid_text = name.removeprefix("sem.").removeprefix("fp-").split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def _foreign(name: str) -> bool:
    """An entry owned by a live process of another checkout (a parallel test run on the same
    machine): not this test's leak, and not ours to unlink. Processes started by this suite,
    orphaned or not, run with their working directory in this checkout."""
    pid = _owner_pid(name)
    if pid is None:
        return False
    try:
        owner = psutil.Process(pid)
        if owner.status() == psutil.STATUS_ZOMBIE:
            return False
        return not Path(owner.cwd()).resolve().is_relative_to(_ROOT)
    except (psutil.Error, OSError):
        return False


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves an ``fp-`` entry in /dev/shm or a child process alive."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    shm_before = framepipe_shm_entries()
    children_before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        new_children = [p for p in _children() if p.pid not in children_before and p.is_running()]
        new_children = [p for p in new_children if p.status() != psutil.STATUS_ZOMBIE]
        leaked_shm = {n for n in framepipe_shm_entries() - shm_before if not _foreign(n)}
        if (not new_children and not leaked_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for proc in new_children:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for name in leaked_shm:
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / name).unlink()
    problems = []
    if new_children:
        problems.append(
            "child processes still alive: "
            + ", ".join(
                f"{p.pid} ({' '.join(p.cmdline()[:3]) if p.is_running() else '?'})"
                for p in new_children
            )
        )
    if leaked_shm:
        problems.append(f"shared-memory entries leaked: {sorted(leaked_shm)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: the test manages leak checks itself")


@pytest.fixture(scope="session", autouse=True)
def decode_forkserver() -> None:
    """Start the forkserver that decode processes fork from (and its resource tracker) once,
    before any test, so they are not counted as processes a test leaked. They exit with
    the test session."""
    from framepipe.core.sources.launcher import warm_forkserver

    warm_forkserver()
