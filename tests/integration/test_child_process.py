"""The manager's one child-process supervisor (workers and inference services use it)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from framepipe.core.processes import pid_alive
from framepipe.server.child_process import ChildProcess, start_child


def _echo(conn: Connection) -> None:
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message == "hang":
            time.sleep(60)
        conn.send(("echo", message))


def _start(delay_s: float) -> tuple[BaseProcess, Connection]:
    time.sleep(delay_s)  # a slow start: the starter may be cancelled meanwhile
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_echo, args=(child,), daemon=True)
    process.start()
    child.close()
    return process, parent


class _Recorder(ChildProcess):
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.messages: asyncio.Queue[object] = asyncio.Queue()
        self.closed = asyncio.Event()
        super().__init__(process, conn, asyncio.get_running_loop(), kind="test child")

    def _deliver(self, message: object) -> None:
        self.messages.put_nowait(message)

    def _on_closed(self) -> None:
        self.closed.set()


def test_messages_reach_the_loop_and_an_overdue_child_is_killed_and_reaped() -> None:
    async def scenario() -> None:
        child = _Recorder(*await start_child(_start, 0.0))
        assert child.send("hello")
        assert await asyncio.wait_for(child.messages.get(), 30) == ("echo", "hello")
        assert child.send("hang")
        code = await child.reap(0.2)  # it does not exit on its own: killed
        assert code == -9 and child.exitcode == -9 and not child.alive
        await asyncio.wait_for(child.closed.wait(), 10)
        assert await child.reap(0.2) == -9  # idempotent

    asyncio.run(scenario())


def test_a_child_whose_starter_was_cancelled_is_ended_once_it_exists() -> None:
    started: list[BaseProcess] = []

    def start(delay_s: float) -> tuple[BaseProcess, Connection]:
        process, conn = _start(delay_s)
        started.append(process)
        return process, conn

    async def scenario() -> None:
        task = asyncio.create_task(start_child(start, 0.5))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        deadline = time.monotonic() + 30
        while not started and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    (process,) = started
    process.join(10)
    assert process.exitcode == -9 and not pid_alive(process.pid or 0)
