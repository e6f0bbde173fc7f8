"""TCP front end: `status` round trip under 50 concurrent clients, and response serialisation.

Compares, in the same run:
- framepipe's asyncio front end (framepipe.server.manager.tcp) with an in-process handler
  answering a realistic 1.7 kB status report — alone, and with one request held by a hung handler;
- the obvious baseline: the reference's shape, a ``socketserver.TCPServer`` (one request at a
  time) reading the same frames and answering with ``json.dumps``.
Each server runs in its own process; the clients (framepipe's async StreamManagerClient, one
connection per request as the protocol requires) run in this process.

Also times the response serialisation: framepipe.protocol._json.dumps against json.dumps on a
status report and on a consume_result carrying a 780 kB base64 image (byte-identical output).

Usage: python perf/bench_tcp_front.py [--clients 50] [--requests 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import socketserver
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from framepipe.client import StreamManagerClient
from framepipe.core.processes import die_with_parent
from framepipe.protocol import _json
from framepipe.protocol.commands import Command, StatusCommand
from framepipe.protocol.envelope import StatusBody, SuccessBody

HOST = "127.0.0.1"
HUNG_ID = "hung"
REPORT: dict[str, Any] = {
    "video_source_status_updates": [
        {
            "timestamp": "2026-11-25T11:43:51.147064",
            "severity": 20,
            "event_type": "SOURCE_STATE_UPDATE",
            "payload": {
                "previous_state": "NOT_STARTED",
                "new_state": "INITIALISING",
                "source_id": 0,
            },
            "context": "video_source",
        }
    ]
    * 6,
    "latency_reports": [
        {
            "source_id": 0,
            "frame_decoding_latency": 372.36834088235304,
            "inference_latency": 0.0015696176470588236,
            "e2e_latency": 372.3699105,
        }
    ],
    "inference_throughput": 29.75863256448241,
    "sources_metadata": [
        {
            "source_properties": {"width": 1920, "height": 1080, "fps": 30.0, "is_file": True},
            "source_reference": "/videos/test_1080p30_long.mp4",
            "buffer_size": 64,
            "state": "RUNNING",
            "source_id": 0,
        }
    ],
}


class _Handler:
    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        if isinstance(command, StatusCommand) and command.pipeline_id == HUNG_ID:
            await asyncio.Event().wait()  # a hung worker: never answers
        return StatusBody(report=REPORT)


def _run_framepipe(port_out: Any, use_uvloop: bool) -> None:
    die_with_parent()
    from framepipe.server.manager.tcp import TcpFrontSettings, start_server

    async def main() -> None:
        front = await start_server(_Handler(), TcpFrontSettings(host=HOST, port=0))
        port_out.send(front.port)
        await asyncio.Event().wait()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def run_framepipe(port_out: Any) -> None:
    _run_framepipe(port_out, use_uvloop=False)


def run_framepipe_uvloop(port_out: Any) -> None:
    _run_framepipe(port_out, use_uvloop=True)


class _ReferenceStyleHandler(socketserver.BaseRequestHandler):
    """The reference's request handler shape: read header and body, answer, one at a time."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        header = sock.recv(4)
        size = int.from_bytes(header, "big")
        body = b""
        while len(body) < size:
            chunk = sock.recv(16384)
            if not chunk:
                return
            body += chunk
        data = json.loads(body)
        response = {
            "request_id": "00000000-0000-0000-0000-000000000000",
            "response": {"status": "success", "report": REPORT},
            "pipeline_id": data.get("pipeline_id"),
        }
        payload = json.dumps(response).encode("utf-8")
        sock.sendall(len(payload).to_bytes(4, "big") + payload)


class _ReferenceStyleServer(socketserver.TCPServer):
    # socketserver's default listen backlog is 5; with 50 clients connecting at once the
    # kernel drops SYNs and clients stall for 1 s retransmits. Give the baseline the same
    # backlog as framepipe so only the serving model differs.
    request_queue_size = 1024
    allow_reuse_address = True


def run_reference_style(port_out: Any) -> None:
    die_with_parent()
    server = _ReferenceStyleServer((HOST, 0), _ReferenceStyleHandler)
    port_out.send(server.server_address[1])
    server.serve_forever()


async def measure(
    port: int, clients: int, requests: int, *, hung: bool
) -> tuple[list[float], float]:
    """Per-request round trips, and the wall time of the whole load (after set-up)."""
    timings: list[float] = []
    hung_task = None
    if hung:
        hanging = StreamManagerClient.init(HOST, port, operations_timeout=None)
        hung_task = asyncio.create_task(hanging.get_status(HUNG_ID))
        await asyncio.sleep(0.2)

    async def one_client() -> None:
        client = StreamManagerClient.init(HOST, port, operations_timeout=10.0)
        for _ in range(requests):
            started = time.perf_counter()
            await client.get_status("pipeline")
            timings.append(time.perf_counter() - started)

    # warm-up
    await StreamManagerClient.init(HOST, port, 10.0).get_status("pipeline")
    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    wall = time.perf_counter() - started
    if hung_task is not None:
        assert not hung_task.done(), "the hung request must still be pending"
        hung_task.cancel()
    return timings, wall


def _run_clients(coroutine: Any) -> tuple[list[float], float]:
    """The load generator's loop: uvloop when installed (the same for every server measured),
    so the clients' own overhead weighs as little as possible."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[no-any-return]
    return uvloop.run(coroutine)  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def serve_and_measure(target: Any, clients: int, requests: int, hung: bool) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(sender,), daemon=True)
    process.start()
    try:
        if not receiver.poll(30):
            raise RuntimeError("server did not start")
        port = receiver.recv()
        server = psutil.Process(process.pid)
        cpu_before = sum(server.cpu_times()[:2])
        timings, wall = _run_clients(measure(port, clients, requests, hung=hung))
        server_cpu = sum(server.cpu_times()[:2]) - cpu_before
    finally:
        process.kill()
        process.join(5)
    return {
        "p50_ms": statistics.median(timings) * 1e3,
        "p99_ms": percentile(timings, 0.99) * 1e3,
        "max_ms": max(timings) * 1e3,
        "requests_per_s": len(timings) / wall,
        # CPU the server process spent per request: robust to the noise of a shared machine
        "server_cpu_us_per_request": server_cpu / (len(timings) + 1) * 1e6,
    }


def time_call(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


def serialisation() -> dict[str, float]:
    status = {
        "request_id": "r" * 36,
        "response": {"status": "success", "report": REPORT},
        "pipeline_id": "p" * 36,
    }
    image = base64.b64encode(os.urandom(583_000)).decode()
    consume = {
        "request_id": "r" * 36,
        "response": {
            "status": "success",
            "outputs": [{"image": {"type": "base64", "value": image}}],
            "frames_metadata": [
                {"frame_timestamp": "2026-11-25T11:37:36.266349", "frame_id": 2, "source_id": 0}
            ],
        },
        "pipeline_id": "p" * 36,
    }
    for document in (status, consume):
        assert _json.dumps(document) == json.dumps(document).encode()
    return {
        "status_json_dumps_us": time_call(lambda: json.dumps(status).encode(), 2000),
        "status_framepipe_us": time_call(lambda: _json.dumps(status), 2000),
        "consume_780kB_json_dumps_us": time_call(lambda: json.dumps(consume).encode(), 20),
        "consume_780kB_framepipe_us": time_call(lambda: _json.dumps(consume), 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=40, help="requests per client")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    parser.add_argument("--quick", action="store_true", help="20 requests per client")
    parser.add_argument("--smoke", action="store_true", help="10 clients x 5: does it still run?")
    args = parser.parse_args()
    if args.quick:
        args.requests = min(args.requests, 20)
    if args.smoke:
        args.clients, args.requests = min(args.clients, 10), min(args.requests, 5)

    # (row name, JSON key, server, hung request present)
    plan: list[tuple[str, str, Any, bool]] = [
        ("reference-style socketserver", "baseline", run_reference_style, False),
        ("framepipe tcp front (asyncio loop)", "framepipe_asyncio", run_framepipe, False),
        ("  + 1 hung request", "framepipe_asyncio_hung", run_framepipe, True),
    ]
    if _has_uvloop():
        plan += [
            ("framepipe tcp front (uvloop)", "framepipe_uvloop", run_framepipe_uvloop, False),
            ("  + 1 hung request", "framepipe_uvloop_hung", run_framepipe_uvloop, True),
        ]
    rows = {
        (name, key): serve_and_measure(target, args.clients, args.requests, hung)
        for name, key, target, hung in plan
    }
    codec = serialisation()

    print(
        f"status round trip, {args.clients} concurrent clients x {args.requests} requests (one connection each)"
    )
    print(
        f"{'server':40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8} {'srv cpu us/req':>15}"
    )
    for (name, _), row in rows.items():
        print(
            f"{name:40} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f} {row['requests_per_s']:8.0f} {row['server_cpu_us_per_request']:15.0f}"
        )
    print()
    print("response serialisation (byte-identical output)")
    print(f"{'message':28} {'json.dumps us':>14} {'framepipe us':>14}")
    print(
        f"{'status report (1.7 kB)':28} {codec['status_json_dumps_us']:14.1f} {codec['status_framepipe_us']:14.1f}"
    )
    print(
        f"{'consume_result (780 kB)':28} {codec['consume_780kB_json_dumps_us']:14.1f} {codec['consume_780kB_framepipe_us']:14.1f}"
    )
    if args.json:
        result: dict[str, float] = {}
        for (_, key), row in rows.items():
            for metric, value in row.items():
                name = f"{key}_status_rtt_{metric}" if metric.endswith("_ms") else f"{key}_{metric}"
                result[name] = round(value, 3)
        result.update({k: round(v, 2) for k, v in codec.items()})
        print(json.dumps(result))


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
