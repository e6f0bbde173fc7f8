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


def _owner_pid(entry: str) -> int | None:
    """The owner pid in ``fp-<pid>-<id>`` / ``sem.fp-<pid>-<id>``."""
    head = entry.removeprefix("sem.").removeprefix("fp-").split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _ours(entry: str, family: set[int]) -> bool:
    """Whether an entry belongs to this test run: owned by this process or one of its
    descendants, or by a process that is gone. A live process outside this run (another
    test session on the same machine) owns its segments; they are not this test's leak."""
    pid = _owner_pid(entry)
    return pid is None or pid in family or not psutil.pid_exists(pid)


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
    family = {os.getpid()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        children = _children()
        family.update(p.pid for p in children)
        new_children = [p for p in children if p.pid not in children_before and p.is_running()]
        new_children = [p for p in new_children if p.status() != psutil.STATUS_ZOMBIE]
        leaked_shm = {e for e in framepipe_shm_entries() - shm_before if _ours(e, family)}
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
