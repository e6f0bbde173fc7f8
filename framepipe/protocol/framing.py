"""Message framing: a 4-byte big-endian payload length, then the UTF-8 JSON payload.

No I/O here. :func:`encode_message` turns a JSON-able object into the bytes to send;
:class:`FrameDecoder` takes bytes as they arrive (any split) and returns complete payloads,
checking the declared length against a maximum before a byte of the body is buffered.

Framing failures are :class:`FramingError` (an ``invalid_payload`` error): the reference answers
a short header or a bad length with ``internal_error``, which blames the server for the
client's bytes; framepipe does not. The class names and messages follow the reference's.
"""

from __future__ import annotations

from typing import Any

from framepipe.protocol import _json
from framepipe.protocol.errors import InvalidPayloadError

HEADER_SIZE = 4
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
"""The largest request a server reads by default. Real commands are far smaller: an ``init``
with a 40-step workflow on 4 cameras is 37 kB, a ``webrtc`` offer 41 kB with the same workflow
(tests/realistic_requests.py); 1 MiB leaves ~25x headroom and bounds what an anonymous client
can make the server buffer. Servers make it settable (``FRAMEPIPE_MAX_MESSAGE_BYTES``)."""
MAX_ENCODABLE_SIZE = 2**32 - 1


class FramingError(InvalidPayloadError):
    """The bytes on the connection are not a well-formed message."""


class MalformedHeaderError(FramingError):
    """Fewer than 4 header bytes, or a header declaring an empty payload."""


class MessageTooLargeError(FramingError):
    """The header declares a payload above the configured maximum."""


class TruncatedMessageError(FramingError):
    """The connection ended before the declared payload arrived."""


class MalformedPayloadError(FramingError):
    """The payload is not UTF-8 JSON, or not a JSON object."""


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    if len(payload) > MAX_ENCODABLE_SIZE:
        raise MessageTooLargeError(
            f"Payload of {len(payload)} bytes does not fit a {HEADER_SIZE}-byte header"
        )
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def encode_message(message: Any) -> bytes:
    """Header + JSON of ``message``, written byte for byte as the reference writes it."""
    return encode_frame(_json.dumps(message))


def decode_payload(payload: bytes, *, exact_integers: bool = True) -> Any:
    """The JSON document in ``payload`` (any JSON value); see :func:`_json.loads` for
    ``exact_integers``."""
    try:
        return _json.loads(payload, exact_integers=exact_integers)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedPayloadError("Received payload that is not in a JSON format") from error


def decode_object(payload: bytes) -> dict[str, Any]:
    """The JSON object in ``payload``; any other JSON value is a MalformedPayloadError."""
    document = decode_payload(payload)
    if not isinstance(document, dict):
        raise MalformedPayloadError(
            f"Received payload that is not a JSON object (got {_json_kind(document)})"
        )
    return document


def payload_size(header: bytes, max_message_size: int) -> int:
    """The payload size a complete 4-byte header declares; a FramingError when it is zero or
    above ``max_message_size`` (the body need not be read to refuse it)."""
    size = int.from_bytes(header, "big")
    if size <= 0:
        raise MalformedHeaderError(f"Header is indicating non positive payload size: {size}")
    if size > max_message_size:
        raise MessageTooLargeError(
            f"Header declares a payload of {size} bytes, above the limit of "
            f"{max_message_size} bytes"
        )
    return size


def short_header_error(received: bytes) -> MalformedHeaderError:
    """The error for a connection that ended within the header."""
    return MalformedHeaderError(f"Expected header size: {HEADER_SIZE}, received: {received!r}")


def truncated_error(received: int, expected: int) -> TruncatedMessageError:
    """The error for a connection that ended within the payload."""
    return TruncatedMessageError(
        "Socket was closed to read before payload was decoded "
        f"(received {received} of {expected} bytes)."
    )


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the payloads completed by those bytes.

    After a FramingError the decoder is unusable (the stream has lost its framing).
    Call :meth:`eof` when the peer closed its side: it raises if a message was cut short.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._expected: int | None = None  # payload size once the header is complete
        self._failed = False
        self._pending_error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete message."""
        return len(self._buffer)

    @property
    def expected_size(self) -> int | None:
        """The payload size declared by the current header, once it is complete."""
        return self._expected

    def feed(self, data: bytes) -> list[bytes]:
        """The messages completed by ``data``, in order. A framing error after one or more
        complete messages is raised by the next call instead, so no message is lost."""
        self._raise_pending()
        if self._failed:
            raise FramingError("The decoder already failed; the stream has lost its framing")
        self._buffer += data
        messages: list[bytes] = []
        while True:
            if self._expected is None:
                if len(self._buffer) < HEADER_SIZE:
                    return messages
                try:
                    self._expected = self._read_header(bytes(self._buffer[:HEADER_SIZE]))
                except FramingError as error:
                    if not messages:
                        raise
                    self._pending_error = error
                    return messages
                del self._buffer[:HEADER_SIZE]
            if len(self._buffer) < self._expected:
                return messages
            messages.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    def eof(self) -> None:
        """The peer closed its sending side; raise if it left a message unfinished."""
        self._raise_pending()
        if self._failed:
            return
        if self._expected is None and self._buffer:
            self._failed = True
            raise short_header_error(bytes(self._buffer))
        if self._expected is not None:
            self._failed = True
            raise truncated_error(len(self._buffer), self._expected)

    def _raise_pending(self) -> None:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error

    def _read_header(self, header: bytes) -> int:
        try:
            return payload_size(header, self.max_message_size)
        except FramingError:
            self._buffer.clear()
            self._failed = True
            raise
