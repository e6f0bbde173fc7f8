"""Starting decode processes cheaply and making sure they die with their owner.

Decode processes come from a ``forkserver`` (never a plain fork of a process that may run
threads or ONNX Runtime): the server process imports numpy, OpenCV and PyAV once, and every
decode process is a fork of it, so starting one costs a few tens of milliseconds instead of
the ~0.5 s of a spawn that re-imports them.

A decode process is a child of the forkserver, which exits when its owner's process exits;
``PR_SET_PDEATHSIG`` then kills the decode process. The decode process also treats EOF on
its control pipe (its owner is gone) as the order to stop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.context
import os
import signal
import threading

PR_SET_PDEATHSIG = 1
#: Modules the forkserver imports once, so forked decode processes start warm.
PRELOAD = ["numpy", "cv2", "av", "framepipe.core.sources.worker"]

_lock = threading.Lock()
_configured = False


def decode_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context decode processes are started from."""
    global _configured
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, multiprocessing.context.ForkServerContext)
    with _lock:
        if not _configured:
            context.set_forkserver_preload(PRELOAD)
            _configured = True
    return context


def warm_forkserver() -> None:
    """Start the forkserver now (it imports the decode stack once) rather than on first use."""
    from multiprocessing import forkserver

    decode_context()
    forkserver.ensure_running()


def die_with_parent() -> None:
    """In a child: SIGKILL me when my parent dies (Linux); a no-op elsewhere."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
