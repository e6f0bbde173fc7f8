"""Response envelope and bodies.

Every response is ``{"request_id": str, "response": {...}, "pipeline_id": str | null}`` — that
key order, and the body key orders below, are the reference's (see wire-examples.md); the
bytes come from :func:`encode_response`, written exactly as the reference's ``json.dumps``.

Bodies: :class:`SuccessBody` (``{"status": "success"}``; init, mute, resume, terminate),
:class:`ListPipelinesBody`, :class:`StatusBody`, :class:`ConsumeResultBody`,
:class:`WebRTCAnswerBody`, and :class:`FailureBody`. Success bodies may name the pipeline they
concern (``pipeline_id``; an ``init`` reply names the new pipeline); it goes into the envelope,
not the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

from framepipe.protocol import _json
from framepipe.protocol.errors import (
    ErrorType,
    FramepipeError,
    error_class_for,
)
from framepipe.protocol.framing import MalformedPayloadError, encode_frame

REQUEST_ID_KEY = "request_id"
RESPONSE_KEY = "response"
PIPELINE_ID_KEY = "pipeline_id"
STATUS_KEY = "status"
ERROR_TYPE_KEY = "error_type"


class OperationStatus(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class WireFrameMetadata(TypedDict):
    """One ``frames_metadata`` entry as sent: ISO-8601 timestamp, frame id, source id."""

    frame_timestamp: str
    frame_id: int
    source_id: int | None


@dataclass(frozen=True, slots=True)
class ResultEntry:
    """One entry of a result sink: one element per video source of a processing step
    (``None`` for a source without a frame in that batch), aligned with ``frames_metadata``.

    On the server's side, each output and the ``frames_metadata`` list may be their JSON as
    stored in a shared result buffer (:class:`~framepipe.protocol._json.RawJson`), spliced into
    the reply as it is."""

    outputs: list[dict[str, Any] | None] | list[Any]
    frames_metadata: list[WireFrameMetadata | None] | Any

    def to_wire(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "frames_metadata": self.frames_metadata}


@dataclass(frozen=True, slots=True, kw_only=True)
class SuccessBody:
    """``{"status": "success"}``. ``pipeline_id`` goes to the envelope, not the body."""

    pipeline_id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {STATUS_KEY: OperationStatus.SUCCESS.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class ListPipelinesBody(SuccessBody):
    pipelines: list[str]

    def to_wire(self) -> dict[str, Any]:
        # The reference puts "pipelines" before "status" here (and only here).
        return {"pipelines": list(self.pipelines), STATUS_KEY: OperationStatus.SUCCESS.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusBody(SuccessBody):
    report: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {STATUS_KEY: OperationStatus.SUCCESS.value, "report": self.report}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumeResultBody(SuccessBody):
    """One entry in ``outputs``/``frames_metadata`` (empty lists when the sink is empty).

    With the ``max_entries`` extension the entries after the first go, oldest first, in
    ``extra_entries`` (each ``{"outputs", "frames_metadata"}``); the field is absent otherwise,
    so a reference client sees exactly the reference's body.
    """

    outputs: list[dict[str, Any] | None] | list[Any] = field(default_factory=list)
    frames_metadata: list[WireFrameMetadata | None] | Any = field(default_factory=list)
    extra_entries: list[ResultEntry] | None = None
    entries_waiting: int | None = None  # with max_entries: entries left in the sink

    @classmethod
    def from_entries(
        cls,
        entries: list[ResultEntry],
        *,
        multi: bool,
        pipeline_id: str | None = None,
        waiting: int | None = None,
    ) -> ConsumeResultBody:
        """The body for ``entries`` popped from a sink (``multi``: max_entries was given;
        ``waiting``: how many are left, which a reply cut short by its byte cap says)."""
        first = entries[0] if entries else ResultEntry(outputs=[], frames_metadata=[])
        return cls(
            pipeline_id=pipeline_id,
            outputs=first.outputs,
            frames_metadata=first.frames_metadata,
            extra_entries=list(entries[1:]) if multi else None,
            entries_waiting=waiting if multi else None,
        )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            STATUS_KEY: OperationStatus.SUCCESS.value,
            "outputs": self.outputs,
            "frames_metadata": self.frames_metadata,
        }
        if self.extra_entries is not None:
            wire["extra_entries"] = [entry.to_wire() for entry in self.extra_entries]
        if self.entries_waiting is not None:
            wire["entries_waiting"] = self.entries_waiting
        return wire


@dataclass(frozen=True, slots=True, kw_only=True)
class WebRTCAnswerBody(SuccessBody):
    sdp: str
    type: str = "answer"

    def to_wire(self) -> dict[str, Any]:
        return {STATUS_KEY: OperationStatus.SUCCESS.value, "sdp": self.sdp, "type": self.type}


@dataclass(frozen=True, slots=True)
class FailureBody:
    """``{"status": "failure", "error_type", "error_class"?, "error_message"?,
    "public_error_message"?}`` — absent fields are left out, as the reference leaves them out."""

    error_type: ErrorType
    error_class: str | None = None
    error_message: str | None = None
    public_error_message: str | None = None

    @classmethod
    def from_error(cls, error: FramepipeError) -> FailureBody:
        if not error.describes_cause:
            return cls(error_type=error.error_type, public_error_message=error.public_message)
        return cls(
            error_type=error.error_type,
            error_class=error.error_class,
            error_message=error.message,
            public_error_message=error.explicit_public_message,
        )

    @classmethod
    def internal(cls, error: BaseException, request_id: str) -> FailureBody:
        """The body for an unexpected exception: its class name, no details (they are logged
        server-side under ``request_id``)."""
        return cls(
            error_type=ErrorType.INTERNAL_ERROR,
            error_class=type(error).__name__,
            error_message=f"Internal error of the stream manager (request_id={request_id}); "
            "details are in the server log.",
        )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            STATUS_KEY: OperationStatus.FAILURE.value,
            ERROR_TYPE_KEY: self.error_type.value,
        }
        if self.error_class is not None:
            wire["error_class"] = self.error_class
        if self.error_message is not None:
            wire["error_message"] = self.error_message
        if self.public_error_message is not None:
            wire["public_error_message"] = self.public_error_message
        return wire

    def to_error(
        self, *, request_id: str | None = None, pipeline_id: str | None = None
    ) -> FramepipeError:
        """The exception a client raises for this failure (class per ``error_type``, refined
        to a known subclass such as :class:`CapacityError` when ``error_class`` names one)."""
        cls = error_class_for(self.error_type, self.error_class)
        message = self.error_message or self.public_error_message or self.error_type.value
        return cls(
            message,
            public_message=self.public_error_message,
            pipeline_id=pipeline_id,
            error_class=self.error_class,
            request_id=request_id,
        )


ResponseBody = SuccessBody | FailureBody


def response_to_wire(
    request_id: str, pipeline_id: str | None, body: ResponseBody
) -> dict[str, Any]:
    """The envelope dict, keys in the reference's order."""
    return {
        REQUEST_ID_KEY: request_id,
        RESPONSE_KEY: body.to_wire(),
        PIPELINE_ID_KEY: pipeline_id,
    }


def encode_response_payload(request_id: str, pipeline_id: str | None, body: ResponseBody) -> bytes:
    """The response's JSON bytes (no header), exactly as the reference writes them."""
    return _json.dumps(response_to_wire(request_id, pipeline_id, body))


def encode_response(request_id: str, pipeline_id: str | None, body: ResponseBody) -> bytes:
    """Header + JSON: the bytes the server sends."""
    return encode_frame(encode_response_payload(request_id, pipeline_id, body))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A response as a client sees it."""

    request_id: str | None
    pipeline_id: str | None
    response: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.response.get(STATUS_KEY) == OperationStatus.SUCCESS.value

    def failure(self) -> FailureBody:
        """The failure body (for an unsuccessful response)."""
        raw_type = self.response.get(ERROR_TYPE_KEY)
        known = isinstance(raw_type, str) and raw_type in _KNOWN_ERROR_TYPES
        error_type = ErrorType(str(raw_type)) if known else ErrorType.INTERNAL_ERROR
        return FailureBody(
            error_type=error_type,
            error_class=_optional_str(self.response.get("error_class")),
            error_message=_optional_str(self.response.get("error_message"))
            if known
            else f"Unknown error_type {raw_type!r}: {self.response.get('error_message')}",
            public_error_message=_optional_str(self.response.get("public_error_message")),
        )

    def raise_for_failure(self) -> None:
        if not self.succeeded:
            raise self.failure().to_error(request_id=self.request_id, pipeline_id=self.pipeline_id)


_KNOWN_ERROR_TYPES = {t.value for t in ErrorType}


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_response(document: Any) -> Envelope:
    """A decoded response document as an Envelope. Raises MalformedPayloadError when it is
    not an envelope."""
    if not isinstance(document, dict) or not isinstance(document.get(RESPONSE_KEY), dict):
        raise MalformedPayloadError(
            "Response is not a stream manager envelope (no 'response' object)"
        )
    request_id = document.get(REQUEST_ID_KEY)
    pipeline_id = document.get(PIPELINE_ID_KEY)
    return Envelope(
        request_id=_optional_str(request_id),
        pipeline_id=_optional_str(pipeline_id),
        response=document[RESPONSE_KEY],
    )
