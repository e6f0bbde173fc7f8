"""Typed responses (the reference client's names and fields)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class CommandContext(BaseModel):
    request_id: str | None = Field(default=None, description="Server-side request id")
    pipeline_id: str | None = Field(default=None, description="Pipeline the command concerned")


class CommandResponse(BaseModel):
    status: str
    context: CommandContext


class InferencePipelineStatusResponse(CommandResponse):
    report: dict[str, Any]


class ListPipelinesResponse(CommandResponse):
    pipelines: list[str]


class FrameMetadata(BaseModel):
    frame_timestamp: datetime
    frame_id: int
    source_id: int | None


class ConsumedEntry(BaseModel):
    """One result-sink entry: one output per video source, aligned with ``frames_metadata``."""

    outputs: list[dict[str, Any] | None]
    frames_metadata: list[FrameMetadata | None]


class ConsumePipelineResponse(CommandResponse):
    """``outputs``/``frames_metadata``: the oldest entry (empty when the sink was empty).
    ``entries``: every entry received, oldest first (more than one only with ``max_entries``)."""

    outputs: list[dict[str, Any] | None]
    frames_metadata: list[FrameMetadata | None]
    entries: list[ConsumedEntry] = Field(default_factory=list)
    #: With ``max_entries``: entries still waiting in the sink (a reply is cut short at the
    #: server's byte cap, always after at least one entry); None from a server that does not say.
    entries_waiting: int | None = None


class InitializeWebRTCPipelineResponse(CommandResponse):
    sdp: str
    type: str
