"""A load generator for a real manager: N asyncio clients in a process of their own, each
sending ``status`` / ``consume_result`` / ``list_pipelines`` in a loop for a fixed time."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from dataclasses import dataclass, field
from typing import Any

from framepipe.client import StreamManagerClient

HOST = "127.0.0.1"


@dataclass
class LoadResult:
    requests: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    by_command: dict[str, int] = field(default_factory=dict)
    results_consumed: int = 0
    elapsed_s: float = 0.0


async def _client(
    port: int,
    token: str | None,
    pipeline_ids: list[str],
    deadline: float,
    think_s: float,
    seed: int,
    result: LoadResult,
) -> None:
    rng = random.Random(seed)
    client = StreamManagerClient.init(HOST, port, operations_timeout=10.0, auth_token=token)
    await asyncio.sleep(rng.uniform(0, think_s))  # spread the clients' phases
    while time.monotonic() < deadline:
        pipeline_id = rng.choice(pipeline_ids)
        roll = rng.random()
        name = "status" if roll < 0.4 else "consume" if roll < 0.8 else "list"
        started = time.perf_counter()
        try:
            if name == "status":
                report = (await client.get_status(pipeline_id)).report
                if not report.get("sources_metadata"):
                    raise AssertionError(f"status report without sources: {report}")
            elif name == "consume":
                consumed = await client.consume_pipeline_result(pipeline_id, max_entries=8)
                result.results_consumed += len(consumed.entries)
            else:
                listed = (await client.list_pipelines()).pipelines
                if set(pipeline_ids) - set(listed):
                    raise AssertionError(f"pipelines missing from {listed}")
            result.latencies_s.append(time.perf_counter() - started)
        except Exception as error:
            result.errors.append(f"{name}: {type(error).__name__}: {error}")
        result.requests += 1
        result.by_command[name] = result.by_command.get(name, 0) + 1
        await asyncio.sleep(rng.uniform(0.5 * think_s, 1.5 * think_s))


async def run_load(
    port: int,
    token: str | None,
    pipeline_ids: list[str],
    *,
    clients: int,
    seconds: float,
    think_s: float = 0.1,
) -> LoadResult:
    result = LoadResult()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _client(port, token, pipeline_ids, deadline, think_s, seed, result)
            for seed in range(clients)
        )
    )
    result.elapsed_s = time.monotonic() - started
    return result


def _load_process(args: tuple[Any, ...], connection: Any) -> None:
    port, token, pipeline_ids, clients, seconds, think_s = args
    connection.send(
        asyncio.run(
            run_load(port, token, pipeline_ids, clients=clients, seconds=seconds, think_s=think_s)
        )
    )
    connection.close()


def load_in_process(
    port: int,
    token: str | None,
    pipeline_ids: list[str],
    *,
    clients: int,
    seconds: float,
    think_s: float = 0.1,
) -> LoadResult:
    """:func:`run_load` in a spawned process (its client work does not slow this one)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_load_process,
        args=((port, token, pipeline_ids, clients, seconds, think_s), sender),
        name="load",
        daemon=True,
    )
    process.start()
    sender.close()
    try:
        # Read before joining: the result is larger than a pipe's buffer.
        if not receiver.poll(seconds + 60):
            raise AssertionError(f"the load did not end within {seconds + 60:.0f} s")
        result: LoadResult = receiver.recv()
        process.join(10)
        return result
    except EOFError:
        raise AssertionError(f"the load process died (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
        receiver.close()
