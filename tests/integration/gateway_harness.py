"""A real stream manager with its HTTP gateway (`framepipe serve --port 0 --http-port 0`), and
helpers to read Server-Sent Events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration.manager_harness import ManagerProcess, wait_for

_GATEWAY = re.compile(r"HTTP gateway on (http://[\d.]+:\d+)")


class Gateway:
    def __init__(self, manager: ManagerProcess) -> None:
        self.manager = manager
        self.url = wait_for(self._announced, 20, "the HTTP gateway to announce its address")
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def _announced(self) -> str | None:
        for line in list(self.manager.lines):
            match = _GATEWAY.search(line)
            if match:
                return match.group(1)
        if self.manager.proc.poll() is not None:
            raise RuntimeError("manager exited:\n" + self.manager.output())
        return None

    def close(self) -> None:
        self.http.close()


@contextmanager
def running_gateway(
    env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Gateway]:
    manager = ManagerProcess(env, args=("--http-port", "0", *args))
    try:
        gateway = Gateway(manager)
        try:
            yield gateway
        finally:
            gateway.close()
    finally:
        if manager.proc.poll() is None:
            code = manager.stop()
            assert code == 0, f"manager exited with {code}:\n{manager.output()}"
        else:
            manager.kill()


def init_body(video: str, **video_fields: Any) -> dict[str, Any]:
    """An `initialise` body: passthrough processing of ``video``, every frame (WAIT/LAZY)."""
    return {
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": video,
            "source_buffer_filling_strategy": "WAIT",
            "source_buffer_consumption_strategy": "LAZY",
            **video_fields,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
    }


@dataclass
class SseEvent:
    event: str | None = None
    id: str | None = None
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Events of a text/event-stream, as lines (without their line ends) arrive."""
    current = SseEvent()
    for line in lines:
        if line == "":
            if current.event or current.data or current.comments:
                yield current
            current = SseEvent()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data = value if not current.data else current.data + "\n" + value
