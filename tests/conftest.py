"""Suite-wide guards: a test that leaks a shared-memory segment, a semaphore or a child
process fails, and what it leaked is cleaned up so the next test starts clean."""

from __future__ import annotations

import contextlib
import os
import signal
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


# multiprocessing's helper daemons live for the whole session by design; they are not leaks
# (and killing one makes the next spawn warn "resource_tracker: process died unexpectedly").
_DAEMONS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _is_daemon(proc: psutil.Process, owners: set[int]) -> bool:
    """A multiprocessing daemon of this process or of one of ``owners`` (processes that
    existed before the test, e.g. a module's server, which start them when they need them).
    Only the daemons themselves: a process forked BY a forkserver (a decode process) has the
    forkserver's command line too, and must still be checked."""
    try:
        return proc.ppid() in owners and any(
            marker in " ".join(proc.cmdline()) for marker in _DAEMONS
        )
    except psutil.Error:
        return False


def _children(owners: set[int] | None = None) -> list[psutil.Process]:
    owners = {os.getpid()} | (owners or set())
    try:
        return [p for p in psutil.Process().children(recursive=True) if not _is_daemon(p, owners)]
    except psutil.Error:
        return []


def _describe(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:4])
    except psutil.Error as exc:  # it ended (or turned zombie) meanwhile
        return type(exc).__name__


def _entry_pid(name: str) -> int | None:
    # fp-<pid>-<id> / sem.fp-<pid>-<id>
    try:
        return int(name.split("fp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


_ROOT = Path(__file__).resolve().parents[1]


def _ours(name: str, tree: set[int]) -> bool:
    """The machine is shared: an entry owned by a live process outside this test's process
    tree belongs to someone else and is neither a leak of ours nor ours to delete — unless
    that process runs in this checkout (an orphan of ours, reparented when its parent died,
    still holding the segment: a leak)."""
    pid = _entry_pid(name)
    if pid is None or pid in tree:
        return True
    try:
        owner = psutil.Process(pid)
        if owner.status() == psutil.STATUS_ZOMBIE:
            return True
        return Path(owner.cwd()).resolve().is_relative_to(_ROOT)
    except psutil.Error:
        return True  # dead
    except OSError:
        return False


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
        new_children = [
            p for p in _children(children_before) if p.pid not in children_before and p.is_running()
        ]
        new_children = [p for p in new_children if p.status() != psutil.STATUS_ZOMBIE]
        tree = {os.getpid()} | children_before | {p.pid for p in _children(children_before)}
        leaked_shm = {n for n in framepipe_shm_entries() - shm_before if _ours(n, tree)}
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
            + ", ".join(f"{p.pid} ({_describe(p)})" for p in new_children)
        )
    if leaked_shm:
        problems.append(f"shared-memory entries leaked: {sorted(leaked_shm)}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def as_foreground_job() -> None:
    """``preexec_fn`` for a command that a test interrupts as a terminal's Ctrl-C would: the
    child takes SIGINT and SIGQUIT as a shell's foreground job does. A suite started in the
    background (``make test &``, ``nohup``) runs with both ignored, and a child inherits
    that: Python then installs no KeyboardInterrupt handler and the Ctrl-C never arrives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: the test manages leak checks itself")


@pytest.fixture(scope="session", autouse=True)
def decode_forkserver() -> None:
    """Start the forkserver that decode processes fork from (and its resource tracker) once,
    before any test, so they are not counted as processes a test leaked. They exit with
    the test session."""
    from framepipe.core.sources.launcher import warm_forkserver

    warm_forkserver()
