"""Starting decode processes (and pipeline workers) cheaply, and making sure they die with
their owner.

Decode processes come from a ``forkserver`` (never a plain fork of a process that may run
threads or ONNX Runtime): the server process imports numpy, OpenCV and PyAV once, and every
decode process is a fork of it, so starting one costs a few tens of milliseconds instead of
the ~0.5 s of a spawn that re-imports them. The preloaded objects are frozen out of the garbage
collector before any fork (:mod:`framepipe.core._gc_freeze`): a child's first collection would
otherwise copy every page that holds one (~9.5 MB per process).

The same forkserver is the template of every other per-stream process: pipeline workers
(:mod:`framepipe.server.worker.handle`) are forked from it too, with the modules they need added to
its preload list (:func:`template_context`). The template never imports ONNX Runtime or
initialises CUDA (neither survives a fork): a process that runs a model imports it after.

A decode process is a child of the forkserver, which exits when its owner's process exits;
``PR_SET_PDEATHSIG`` then kills the decode process. The decode process also treats EOF on
its control pipe (its owner is gone) as the order to stop.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from collections.abc import Sequence
from multiprocessing import (
    forkserver,
    popen_forkserver,
    reduction,
    resource_tracker,
    spawn,
    util,
)
from typing import Any

#: Modules the forkserver imports once, so forked decode processes start warm. The last
#: freezes what they made out of the garbage collector (shared with every child, not copied).
PRELOAD = ["numpy", "cv2", "av", "framepipe.core.sources.decoder", "framepipe.core._gc_freeze"]

_lock = threading.Lock()
_preload: list[str] = []  # what the forkserver will preload (set before it starts)


def template_context(preload: Sequence[str] = ()) -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context per-stream processes are forked from: the forkserver, which
    preloads :data:`PRELOAD` and ``preload`` (modules a kind of process needs; they are added
    before the forkserver starts, after that a child imports them itself)."""
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, multiprocessing.context.ForkServerContext)
    with _lock:
        wanted = [m for m in (*PRELOAD[:-1], *preload) if m not in _preload]
        if wanted or not _preload:
            # the GC freeze stays last: it freezes what every other module made
            _preload[:] = [m for m in _preload if m != PRELOAD[-1]] + wanted + [PRELOAD[-1]]
            context.set_forkserver_preload(list(_preload))
    return context


def decode_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context decode processes are started from."""
    return template_context()


def _ensure_forkserver() -> None:
    """Start the forkserver (if it does not run yet) with SIGINT blocked, as CPython starts its
    resource tracker: the forkserver ignores SIGINT only once it has imported ``PRELOAD`` (a
    second or more), and a terminal's Ctrl-C in that time reaches it too (the whole process
    group) and kills it. The mask is inherited by the forkserver and the processes it forks;
    in the caller a Ctrl-C of that moment is only delayed. The resource tracker is started
    first: starting it unblocks SIGINT again (it blocks and unblocks around its own spawn)."""
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _noop() -> None:
    """Target of the warm-up process."""


def warm_forkserver(timeout: float = 60.0, preload: Sequence[str] = ()) -> None:
    """Start the forkserver now and wait until it has imported the decode stack and
    ``preload`` (one no-op child is forked and reaped), so the first process forked from it
    starts as fast as the rest."""
    template_context(preload)
    _ensure_forkserver()
    process = DecodeProcess(target=_noop, name="framepipe-warmup", daemon=True)
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
    process.close()


class _DecodePopen(popen_forkserver.Popen):
    """The forkserver Popen, minus re-running the owner's ``__main__`` in the child.

    A decode process needs nothing from ``__main__`` (its target lives in this package), and
    re-importing a user's script in every decode process is slow and surprising (a script
    without an ``if __name__ == "__main__"`` guard would start pipelines recursively).
    The body is CPython's ``popen_forkserver.Popen._launch`` with those two keys dropped.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        _ensure_forkserver()
        popen_forkserver.set_spawning_popen(self)  # type: ignore[attr-defined]
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            popen_forkserver.set_spawning_popen(None)  # type: ignore[attr-defined]
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class DecodeProcess(multiprocessing.context.ForkServerProcess):
    """A forkserver child that does not re-run the owner's ``__main__``, and ignores Ctrl-C
    from its first Python step on (the forkserver restores the default handler in the child; a
    terminal's Ctrl-C reaches the whole process group, and the owner decides what it means)."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        template_context()
        return _DecodePopen(process_obj)

    def _bootstrap(self, parent_sentinel: Any = None) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return int(super()._bootstrap(parent_sentinel))  # type: ignore[misc]


#: Any per-stream process forked from the template (a pipeline worker too).
TemplateProcess = DecodeProcess
