"""Process liveness and lifetime, in one place for every framepipe process kind.

* :func:`pid_alive` — is a pid a live process? A zombie counts as dead: it will never touch a
  segment or answer a pipe again.
* :func:`die_with_parent` — called first thing in a child (pipeline worker, decode process,
  inference service): the kernel SIGKILLs it when its parent dies (``PR_SET_PDEATHSIG``), and
  it exits at once if the parent died before that took effect.
* :func:`name_process` — the name ``ps`` and ``/proc/<pid>/comm`` show (processes forked from
  one template share a command line; their names tell a worker from a decode process).
* :func:`wait_for_exit` — a bounded wait until a set of pids are gone.
* :func:`describe_exit` — how a child ended, in words (``was killed by SIGKILL``).
* :func:`kill_tree` — SIGKILL a child process and everything below it, and collect it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "describe_exit",
    "die_with_parent",
    "kill_tree",
    "name_process",
    "pid_alive",
    "wait_for_exit",
]

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie is dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # the state is the first field after the ")" that closes the command name
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a child: have the kernel SIGKILL this process when its parent dies (Linux).

    ``parent_pid``: the parent the caller expects; when the current parent is another process
    (the expected one died before ``prctl`` took effect) this process ends at once. A no-op
    where ``prctl`` is not available.
    """
    expected = os.getppid() if parent_pid is None else parent_pid
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    if os.getppid() != expected:
        os.kill(os.getpid(), signal.SIGKILL)


def name_process(name: str) -> None:
    """Set this process's name (its main thread's, at most 15 bytes; Linux; else a no-op)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is not None:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def wait_for_exit(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait (bounded, polling) until none of ``pids`` is alive; returns those still alive."""
    deadline = time.monotonic() + timeout
    remaining = {pid for pid in pids if pid_alive(pid)}
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = {pid for pid in remaining if pid_alive(pid)}
    return remaining


def describe_exit(exitcode: int | None) -> str:
    """``killed by SIGKILL`` / ``exited with code 3`` (multiprocessing's exit codes)."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


def kill_tree(proc: subprocess.Popen[Any], wait_s: float = 10.0) -> None:
    """SIGKILL every process below ``proc`` (those it started, and theirs), then ``proc``
    itself, and wait up to ``wait_s`` to collect it."""
    import psutil  # (only here: the processes that import this module need not load it)

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(wait_s)
