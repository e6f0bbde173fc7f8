"""The manager's side of one worker process: start, request/reply by id, kill, reap.

A worker is forked from the process template (:func:`framepipe.core.sources.launcher.
template_context`, the forkserver decode processes come from) with the modules a pipeline
needs preloaded there (:data:`WORKER_PRELOAD`), so it shares their pages instead of holding a
copy of its own, and starts in milliseconds. The template never imports ONNX Runtime or
initialises CUDA; a worker that runs a model itself imports it after the fork.

Replies are read by a small thread per worker that blocks in ``Connection.recv()`` and hands
each message to the event loop; the loop never blocks on a pipe. Every request waits with a
timeout; a worker that misses it is for the caller to kill (:meth:`WorkerHandle.kill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import psutil

from framepipe.core.processes import describe_exit
from framepipe.errors import OperationError
from framepipe.protocol.errors import ERROR_CLASSES
from framepipe.server.child_process import ChildProcess, start_child
from framepipe.server.worker.messages import (
    ReplyBody,
    WorkerCommand,
    WorkerReady,
    WorkerReply,
    WorkerRequest,
)
from framepipe.server.worker.process import WARM_MODULES, WorkerOptions, worker_main

log = logging.getLogger("framepipe.manager")


class WorkerGone(OperationError):
    """The worker process ended (or closed its pipe) before answering."""


class WorkerTimeout(OperationError):
    """The worker did not answer within the bound."""


#: What the template preloads for a worker (no ONNX Runtime: a service runs the model).
WORKER_PRELOAD = (*WARM_MODULES, "framepipe.server.worker.process")


def start_worker_process(options: WorkerOptions) -> tuple[BaseProcess, Connection]:
    """Start a worker process from the template; returns it and the manager's end of its
    command pipe."""
    from framepipe.core.sources.launcher import TemplateProcess, template_context

    ctx = template_context(WORKER_PRELOAD)
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    process = TemplateProcess(
        target=worker_main,
        args=(child_conn, options),
        name="framepipe-worker",
        daemon=False,  # a daemonic process may not start processes of its own
    )
    try:
        process.start()
    finally:
        child_conn.close()  # else EOF never arrives here when the worker dies
    return process, parent_conn


def _is_resource_tracker(proc: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False


class WorkerHandle(ChildProcess):
    """One spawned worker process and its command pipe."""

    kill_wait_s = 5.0

    def __init__(
        self, process: BaseProcess, conn: Connection, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.spawned_at = time.monotonic()
        self.ready: asyncio.Future[WorkerReady] = loop.create_future()
        self.closed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[WorkerReply]] = {}
        super().__init__(process, conn, loop, kind="worker")

    @classmethod
    async def spawn(cls, *, terminate_timeout_s: float) -> WorkerHandle:
        """Start a worker, forked from the template (which has no threads, CUDA or ONNX
        Runtime of its own). The hand-over of the start-up data runs in a thread, off the loop.
        """
        loop = asyncio.get_running_loop()
        options = WorkerOptions(
            parent_pid=os.getpid(),
            terminate_timeout_s=terminate_timeout_s,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        process, conn = await start_child(start_worker_process, options)
        return cls(process, conn, loop)

    # ---- messages from the reader thread (on the loop) -----------------------------------------

    def _deliver(self, message: object) -> None:
        if isinstance(message, WorkerReply):
            future = self._pending.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, WorkerReady):
            if not self.ready.done():
                self.ready.set_result(message)
        else:
            log.warning("worker %d sent an unexpected %s", self.pid, type(message).__name__)

    def _on_closed(self) -> None:
        self.closed.set()
        error = WorkerGone(self._gone_message())
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # mark retrieved: nobody may be waiting for it
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def _gone_message(self) -> str:
        code = self.exitcode
        if code is None:
            return f"the pipeline worker (pid {self.pid}) closed its pipe"
        return f"the pipeline worker (pid {self.pid}) {describe_exit(code)}"

    # ---- requests ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return super().alive and not self.closed.is_set()

    async def wait_ready(self, timeout: float) -> WorkerReady:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self.ready)
        except TimeoutError:
            raise WorkerTimeout(
                f"the pipeline worker (pid {self.pid}) did not start within {timeout:g} s"
            ) from None

    async def request(
        self,
        command: WorkerCommand,
        *,
        timeout: float,
        request_id: str | None = None,
    ) -> ReplyBody | None:
        """Send one command and wait for its reply; raises the error class the worker reported."""
        if self.closed.is_set():
            raise WorkerGone(self._gone_message())
        request_id = request_id or str(uuid.uuid4())
        while request_id in self._pending:  # a client may reuse an id; ours must stay unique
            request_id = f"{request_id}+"
        future: asyncio.Future[WorkerReply] = self._loop.create_future()
        self._pending[request_id] = future
        name = type(command).__name__
        try:
            # Commands are small; a socketpair buffer holds many, so this does not block even
            # when the worker is stopped (at most one command per pipeline is in flight).
            self.conn.send(WorkerRequest(request_id=request_id, command=command))
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise WorkerTimeout(
                f"the pipeline worker (pid {self.pid}) did not answer '{name}' within {timeout:g} s"
            ) from None
        except OSError:  # BrokenPipeError, ConnectionResetError, ...
            raise WorkerGone(self._gone_message()) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.failure is not None:
            failure = reply.failure
            raise ERROR_CLASSES[failure.error_type](
                failure.message, failure.public_message, error_class=failure.error_class
            )
        return reply.body

    # ---- ending ------------------------------------------------------------------------------

    def signal_tree(self, signo: signal.Signals) -> None:
        """Send a signal to the worker and every process under it.

        multiprocessing's resource trackers are spared: once their owner is gone they unlink
        the semaphores it registered (a killed tracker would leak them in /dev/shm).
        """
        try:
            procs = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.pid != self.pid and _is_resource_tracker(proc):
                    continue
                proc.send_signal(signo)

    def kill(self) -> None:
        """SIGKILL the worker and its descendants (works on a stopped process too)."""
        self.signal_tree(signal.SIGKILL)

    def _overdue(self, timeout: float) -> None:
        log.warning("worker %d did not exit within %.1f s: killing it", self.pid, timeout)
