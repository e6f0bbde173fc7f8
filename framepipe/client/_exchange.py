"""What the async and sync clients share: request bytes and response interpretation."""

from __future__ import annotations

import ssl
from typing import Any, Self

from pydantic import ValidationError

from framepipe.client.errors import ProtocolViolationError
from framepipe.client.responses import (
    CommandContext,
    CommandResponse,
    ConsumedEntry,
    ConsumePipelineResponse,
    InferencePipelineStatusResponse,
    InitializeWebRTCPipelineResponse,
    ListPipelinesResponse,
)
from framepipe.protocol.commands import AUTH_TOKEN_KEY, Command
from framepipe.protocol.envelope import Envelope, parse_response
from framepipe.protocol.errors import FramepipeError
from framepipe.protocol.framing import decode_payload, encode_message
from framepipe.protocol.metrics import METRICS_KEY, MetricsSnapshot

DEFAULT_CLIENT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024


class ClientSettings:
    """Where a client connects and its limits; shared by the async and the sync client."""

    @classmethod
    def init(
        cls,
        host: str,
        port: int,
        operations_timeout: float | None = None,
        *,
        connect_timeout: float | None = None,
        auth_token: str | None = None,
        max_message_size: int = DEFAULT_CLIENT_MAX_MESSAGE_SIZE,
        tls: ssl.SSLContext | bool | None = None,
        tls_server_hostname: str | None = None,
    ) -> Self:
        """``operations_timeout`` bounds each whole call (connect, send, receive);
        ``connect_timeout`` (default: ``operations_timeout``) bounds the connect alone.
        ``tls``: connect with TLS (``True``: the system's CAs; or an :class:`ssl.SSLContext`,
        e.g. ``ssl.create_default_context(cafile="server.pem")`` for a self-signed
        certificate); the certificate must name ``tls_server_hostname`` (default: ``host``)."""
        return cls(
            host=host,
            port=port,
            operations_timeout=operations_timeout,
            connect_timeout=connect_timeout,
            auth_token=auth_token,
            max_message_size=max_message_size,
            tls=tls,
            tls_server_hostname=tls_server_hostname,
        )

    def __init__(
        self,
        host: str,
        port: int,
        operations_timeout: float | None = None,
        connect_timeout: float | None = None,
        auth_token: str | None = None,
        max_message_size: int = DEFAULT_CLIENT_MAX_MESSAGE_SIZE,
        tls: ssl.SSLContext | bool | None = None,
        tls_server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.operations_timeout = operations_timeout
        self.connect_timeout = (
            connect_timeout if connect_timeout is not None else operations_timeout
        )
        self.auth_token = auth_token
        self.max_message_size = max_message_size
        self.ssl_context: ssl.SSLContext | None = (
            ssl.create_default_context() if tls is True else tls if tls else None
        )
        self.tls_server_hostname = tls_server_hostname or host


"""Responses carry images; the client accepts larger frames than the server does."""
READ_CHUNK = 256 * 1024


def request_bytes(command: Command, auth_token: str | None) -> bytes:
    """The frame for ``command``: the reference client's bytes (plus the token, when set)."""
    wire = command.to_wire()
    if auth_token is not None:
        wire[AUTH_TOKEN_KEY] = auth_token
    return encode_message(wire)


def envelope_from_payload(payload: bytes) -> Envelope:
    """The response in ``payload``; raises the failure's exception for a failure response."""
    try:
        # Integers beyond 64 bits in results are out of scope; skip the scan on large images.
        envelope = parse_response(decode_payload(payload, exact_integers=False))
    except FramepipeError as error:
        raise ProtocolViolationError(
            f"Malformed response from the stream manager: {error}"
        ) from error
    envelope.raise_for_failure()
    return envelope


def _context(envelope: Envelope) -> CommandContext:
    return CommandContext(request_id=envelope.request_id, pipeline_id=envelope.pipeline_id)


def _field(envelope: Envelope, name: str) -> Any:
    try:
        return envelope.response[name]
    except KeyError:
        raise ProtocolViolationError(f"Response has no field '{name}'") from None


def _validated(model: type[Any], **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as error:
        raise ProtocolViolationError(f"Unexpected response shape: {error}") from error


def command_response(envelope: Envelope) -> CommandResponse:
    return CommandResponse(status=str(_field(envelope, "status")), context=_context(envelope))


def list_pipelines_response(envelope: Envelope) -> ListPipelinesResponse:
    result: ListPipelinesResponse = _validated(
        ListPipelinesResponse,
        status=_field(envelope, "status"),
        context=_context(envelope),
        pipelines=_field(envelope, "pipelines"),
    )
    return result


def status_response(envelope: Envelope) -> InferencePipelineStatusResponse:
    result: InferencePipelineStatusResponse = _validated(
        InferencePipelineStatusResponse,
        status=_field(envelope, "status"),
        context=_context(envelope),
        report=_field(envelope, "report"),
    )
    return result


def consume_response(envelope: Envelope) -> ConsumePipelineResponse:
    outputs = _field(envelope, "outputs")
    frames_metadata = _field(envelope, "frames_metadata")
    raw_entries: list[Any] = []
    if outputs or frames_metadata:
        raw_entries.append({"outputs": outputs, "frames_metadata": frames_metadata})
    extra = envelope.response.get("extra_entries")
    if isinstance(extra, list):
        raw_entries.extend(extra)
    result: ConsumePipelineResponse = _validated(
        ConsumePipelineResponse,
        status=_field(envelope, "status"),
        context=_context(envelope),
        outputs=outputs,
        frames_metadata=frames_metadata,
        entries=[_entry(entry) for entry in raw_entries],
        entries_waiting=envelope.response.get("entries_waiting"),
    )
    return result


def _entry(raw: Any) -> ConsumedEntry:
    if not isinstance(raw, dict):
        raise ProtocolViolationError(f"Unexpected result entry: {type(raw).__name__}")
    entry: ConsumedEntry = _validated(ConsumedEntry, **raw)
    return entry


def metrics_response(envelope: Envelope) -> MetricsSnapshot:
    raw = _field(envelope, METRICS_KEY)
    try:
        return MetricsSnapshot.model_validate(raw)
    except ValidationError as error:
        raise ProtocolViolationError(f"Unexpected metrics shape: {error}") from error


def webrtc_response(envelope: Envelope) -> InitializeWebRTCPipelineResponse:
    result: InitializeWebRTCPipelineResponse = _validated(
        InitializeWebRTCPipelineResponse,
        status=_field(envelope, "status"),
        context=_context(envelope),
        sdp=_field(envelope, "sdp"),
        type=_field(envelope, "type"),
    )
    return result
