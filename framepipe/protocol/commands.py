"""Typed commands: what a request means, parsed from the wire dict by :func:`parse_command`.

A request is a JSON object ``{"type": <command>, "pipeline_id"?: ..., ...payload}``. Each command
type has one model; ``init`` and ``webrtc`` carry their payload (the request's other fields) as
``payload``. Unknown fields are ignored, as the reference ignores them; a missing or wrong field
is an :class:`InvalidPayloadError` whose message names it.

:meth:`Command.to_wire` gives the dict the reference client sends for the same command, in the
same key order, so a request built here is byte-identical to the reference's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framepipe.protocol.errors import InvalidPayloadError, preview
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    InitialiseWebRTCPipelinePayload,
    Name,
)

TYPE_KEY = "type"
PIPELINE_ID_KEY = "pipeline_id"
AUTH_TOKEN_KEY = "auth_token"
"""framepipe extension: the shared token, when the server requires one."""

MAX_ENTRIES_LIMIT = 10_000
"""Upper bound of ``consume_result``'s ``max_entries`` extension."""
MAX_EXCLUDED_FIELDS = 1024
"""Entries of ``consume_result``'s ``excluded_fields``."""


class CommandType(StrEnum):
    INIT = "init"
    WEBRTC = "webrtc"
    MUTE = "mute"
    RESUME = "resume"
    STATUS = "status"
    TERMINATE = "terminate"
    LIST_PIPELINES = "list_pipelines"
    CONSUME_RESULT = "consume_result"


class Command(BaseModel):
    """Base of every command."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)
    command_type: ClassVar[CommandType]

    @property
    def target_pipeline_id(self) -> str | None:
        """The pipeline the command names (None for list_pipelines, init and webrtc)."""
        return None

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError


class ListPipelinesCommand(Command):
    command_type = CommandType.LIST_PIPELINES
    type: Literal[CommandType.LIST_PIPELINES] = CommandType.LIST_PIPELINES

    def to_wire(self) -> dict[str, Any]:
        return {TYPE_KEY: self.type.value}


class PipelineCommand(Command):
    """A command addressed to one existing pipeline."""

    pipeline_id: Name

    @property
    def target_pipeline_id(self) -> str | None:
        return self.pipeline_id

    def to_wire(self) -> dict[str, Any]:
        return {TYPE_KEY: self.command_type.value, PIPELINE_ID_KEY: self.pipeline_id}


class StatusCommand(PipelineCommand):
    command_type = CommandType.STATUS
    type: Literal[CommandType.STATUS] = CommandType.STATUS


class MuteCommand(PipelineCommand):
    command_type = CommandType.MUTE
    type: Literal[CommandType.MUTE] = CommandType.MUTE


class ResumeCommand(PipelineCommand):
    command_type = CommandType.RESUME
    type: Literal[CommandType.RESUME] = CommandType.RESUME


class TerminateCommand(PipelineCommand):
    command_type = CommandType.TERMINATE
    type: Literal[CommandType.TERMINATE] = CommandType.TERMINATE


class ConsumeResultCommand(PipelineCommand):
    """Pop one entry of the pipeline's result sink (the reference's semantics), or with the
    ``max_entries`` extension up to that many entries, oldest first."""

    command_type = CommandType.CONSUME_RESULT
    type: Literal[CommandType.CONSUME_RESULT] = CommandType.CONSUME_RESULT
    excluded_fields: Annotated[list[Name], Field(max_length=MAX_EXCLUDED_FIELDS)] = Field(
        default_factory=list
    )
    max_entries: Annotated[int, Field(ge=1, le=MAX_ENTRIES_LIMIT)] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = super().to_wire()
        wire["excluded_fields"] = list(self.excluded_fields)
        if self.max_entries is not None:
            wire["max_entries"] = self.max_entries
        return wire


class InitCommand(Command):
    command_type = CommandType.INIT
    type: Literal[CommandType.INIT] = CommandType.INIT
    payload: InitialisePipelinePayload

    def to_wire(self) -> dict[str, Any]:
        wire = self.payload.to_wire()
        wire[TYPE_KEY] = self.type.value
        return wire


class WebRTCCommand(Command):
    command_type = CommandType.WEBRTC
    type: Literal[CommandType.WEBRTC] = CommandType.WEBRTC
    payload: InitialiseWebRTCPipelinePayload

    def to_wire(self) -> dict[str, Any]:
        wire = self.payload.to_wire()
        wire[TYPE_KEY] = self.type.value
        return wire


AnyCommand = (
    ListPipelinesCommand
    | StatusCommand
    | MuteCommand
    | ResumeCommand
    | TerminateCommand
    | ConsumeResultCommand
    | InitCommand
    | WebRTCCommand
)

_SIMPLE_COMMANDS: dict[CommandType, type[Command]] = {
    CommandType.LIST_PIPELINES: ListPipelinesCommand,
    CommandType.STATUS: StatusCommand,
    CommandType.MUTE: MuteCommand,
    CommandType.RESUME: ResumeCommand,
    CommandType.TERMINATE: TerminateCommand,
    CommandType.CONSUME_RESULT: ConsumeResultCommand,
}
_VALID_TYPES = ", ".join(t.value for t in CommandType)


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field: ``field 'a.b': <what is wrong>``."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"])
        field = f"{prefix}{location}" if location else prefix.rstrip(".") or "payload"
        message = item["msg"].removeprefix("Value error, ")  # our validators' own sentences
        problems.append(f"field '{field}': {message}")
    return "; ".join(problems)


def parse_command(data: dict[str, Any]) -> Command:
    """The typed command in a request object. Raises InvalidPayloadError naming the problem."""
    if not isinstance(data, dict):  # callers may hand over any decoded JSON value
        raise InvalidPayloadError(f"A request must be a JSON object, got {type(data).__name__}")
    if TYPE_KEY not in data:
        raise InvalidPayloadError(
            f"Request is missing the required field 'type' (one of {_VALID_TYPES})"
        )
    raw_type = data[TYPE_KEY]
    try:
        command_type = CommandType(raw_type)
    except ValueError:
        raise InvalidPayloadError(
            f"Unknown command type {preview(raw_type)} in field 'type'; "
            f"expected one of {_VALID_TYPES}"
        ) from None
    if command_type in (CommandType.INIT, CommandType.WEBRTC):
        return _parse_initialisation(command_type, data)
    model = _SIMPLE_COMMANDS[command_type]
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidPayloadError(
            f"Invalid '{command_type.value}' command: {describe_validation_error(error)}"
        ) from None


def _parse_initialisation(command_type: CommandType, data: dict[str, Any]) -> Command:
    fields = {k: v for k, v in data.items() if k not in (TYPE_KEY, AUTH_TOKEN_KEY)}
    try:
        if command_type is CommandType.INIT:
            return InitCommand(payload=InitialisePipelinePayload.model_validate(fields))
        return WebRTCCommand(payload=InitialiseWebRTCPipelinePayload.model_validate(fields))
    except ValidationError as error:
        message = f"Invalid '{command_type.value}' command: {describe_validation_error(error)}"
        raise InvalidPayloadError(message, public_message=message) from None
