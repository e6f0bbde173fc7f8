"""The reference's captured frames (wire-examples.md), parsed for the golden tests.

The file lists request/response pairs: a title, a direction (``C->S`` or ``S->C``), the 4-byte
header in hex, and the JSON payload on one line. Long payloads are shown cut, ending with
``…<N chars shown of M>``; for those only a prefix is known.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
)
from framepipe.protocol.payloads import InitialisePipelinePayload

REPO_ROOT = Path(__file__).resolve().parents[1]
COPY = REPO_ROOT / "tests" / "data" / "reference-wire-examples.md"
SHARED = REPO_ROOT.parent / "shared" / "reference" / "wire-examples.md"

_ENTRY = re.compile(
    r"^\*\*(?P<title>.+?)\*\* `(?P<direction>C->S|S->C)` header=`(?P<header>[0-9a-f]*)` "
    r"\(len (?P<length>\d+|None)\)\n```json\n(?P<body>.*?)\n```",
    re.MULTILINE | re.DOTALL,
)
_CUT = re.compile(r" …<\d+ chars shown of \d+>$")


@dataclass(frozen=True)
class Frame:
    section: str
    title: str
    direction: str
    header: bytes
    body: bytes
    truncated: bool  # the markdown shows only a prefix of the body

    @property
    def raw(self) -> bool:
        """Hand-made bytes sent by the capture script, not by the reference client."""
        return self.title.startswith("raw:")

    @property
    def wire(self) -> bytes:
        return self.header + self.body

    def json(self) -> object:
        return json.loads(self.body)


@dataclass(frozen=True)
class Exchange:
    request: Frame
    response: Frame

    @property
    def name(self) -> str:
        return f"{self.request.section} / {self.request.title}"


def load_frames(path: Path = COPY) -> list[Frame]:
    text = path.read_text(encoding="utf-8")
    section_starts = [
        (m.start(), m.group(1)) for m in re.finditer(r"^### (.+)$", text, re.MULTILINE)
    ]
    frames = []
    for match in _ENTRY.finditer(text):
        section = next(
            (name for start, name in reversed(section_starts) if start < match.start()), ""
        )
        body = match.group("body")
        cut = _CUT.search(body)
        if cut:
            body = body[: cut.start()]
        frames.append(
            Frame(
                section=section,
                title=match.group("title"),
                direction=match.group("direction"),
                header=bytes.fromhex(match.group("header")),
                body=body.encode("utf-8"),
                truncated=cut is not None,
            )
        )
    return frames


def load_exchanges(path: Path = COPY) -> list[Exchange]:
    frames = load_frames(path)
    exchanges = []
    for request, response in zip(frames[0::2], frames[1::2], strict=True):
        assert (request.direction, response.direction) == ("C->S", "S->C"), request.title
        assert request.title == response.title
        exchanges.append(Exchange(request, response))
    return exchanges


# title -> (the reference's error_type, framepipe's error_type): the reference's bugs. The same
# KeyError bug answers the "20 s clip" section's `terminate` of a pipeline the health check had
# already reaped (framepipe: not_found); its title is shared with a successful terminate, so it
# is not keyed here.
DELIBERATE_DIFFERENCES = {
    "raw: terminate unknown pipeline id": ("invalid_payload", "not_found"),
    "raw: valid JSON but not an object (list)": ("internal_error", "invalid_payload"),
    "raw: header says 0 bytes": ("internal_error", "invalid_payload"),
    "raw: truncated header (2 bytes)": ("internal_error", "invalid_payload"),
    "raw: header longer than body (declares 100, sends 10)": ("internal_error", "invalid_payload"),
    # framepipe refuses over-budget admission as an operation error naming the numbers
    "init #2": ("internal_error", "operation_error"),
}


def command_for(request: dict[str, Any]) -> Command:
    """The command a client call builds for this captured request (as a user would call it)."""
    kind = request["type"]
    if kind == "list_pipelines":
        return ListPipelinesCommand()
    if kind == "init":
        fields = {k: v for k, v in request.items() if k != "type"}
        return InitCommand(payload=InitialisePipelinePayload.model_validate(fields))
    if kind == "consume_result":
        return ConsumeResultCommand(
            pipeline_id=request["pipeline_id"], excluded_fields=request["excluded_fields"]
        )
    simple = {"status": StatusCommand, "mute": MuteCommand, "resume": ResumeCommand}
    if kind in simple:
        return simple[kind](pipeline_id=request["pipeline_id"])
    assert kind == "terminate"
    return TerminateCommand(pipeline_id=request["pipeline_id"])
