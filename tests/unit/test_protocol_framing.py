"""Framing: round trips, arbitrary splits, garbage, oversize and truncated input."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    FramingError,
    MalformedHeaderError,
    MalformedPayloadError,
    MessageTooLargeError,
    TruncatedMessageError,
    decode_object,
    decode_payload,
    encode_frame,
    encode_message,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
payloads = st.binary(min_size=1, max_size=300)


def test_encode_message_is_length_prefixed_reference_json() -> None:
    frame = encode_message({"type": "status", "pipeline_id": "x"})
    body = b'{"type": "status", "pipeline_id": "x"}'
    assert frame == len(body).to_bytes(4, "big") + body


def test_messages_split_at_every_byte_boundary_decode_the_same() -> None:
    frames = [encode_message({"type": "list_pipelines"}), encode_message({"a": [1, 2.5, None]})]
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [json.loads(m) for m in got] == [{"type": "list_pipelines"}, {"a": [1, 2.5, None]}]
        assert decoder.buffered == 0
        decoder.eof()  # nothing pending: no error


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=6), st.data())
def test_any_chunking_yields_the_payloads_in_order(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    got: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[previous:cut])
        previous = cut
    assert got == messages


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_round_trip(value: object) -> None:
    decoder = FrameDecoder()
    (payload,) = decoder.feed(encode_message(value))
    assert decode_payload(payload) == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 64))
def test_garbage_only_ever_raises_framing_errors(garbage: bytes, limit: int) -> None:
    decoder = FrameDecoder(max_message_size=limit)
    try:
        for message in decoder.feed(garbage):
            assert 0 < len(message) <= limit
            with contextlib.suppress(MalformedPayloadError):
                decode_object(message)
        decoder.eof()
    except FramingError:
        pass


def test_oversize_length_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_message_size=1024)
    with pytest.raises(MessageTooLargeError, match="1025 bytes, above the limit of 1024"):
        decoder.feed((1025).to_bytes(4, "big"))  # not one body byte sent
    assert decoder.buffered == 0


def test_default_limit_is_1_mib() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"1")) == [b"1"]
    decoder.feed((1024 * 1024).to_bytes(4, "big"))  # exactly the limit: accepted
    with pytest.raises(MessageTooLargeError):
        FrameDecoder().feed((1024 * 1024 + 1).to_bytes(4, "big"))


def test_default_limit_leaves_headroom_over_real_large_commands() -> None:
    """The largest real commands (a 40-step workflow on 4 cameras; the same as a WebRTC offer)
    fit the default limit many times over."""
    from tests.realistic_requests import large_workflow_init, sdp_offer, webrtc_request

    for request in (large_workflow_init(), webrtc_request(sdp_offer())):
        frame = encode_message(request)
        assert len(frame) * 20 < DEFAULT_MAX_MESSAGE_SIZE
        assert len(FrameDecoder().feed(frame)) == 1


def test_zero_length_header_is_malformed() -> None:
    with pytest.raises(MalformedHeaderError, match="non positive payload size: 0"):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


def test_short_header_at_eof_is_malformed_and_shows_the_bytes() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x01") == []
    with pytest.raises(MalformedHeaderError) as caught:
        decoder.eof()
    assert caught.value.message == "Expected header size: 4, received: b'\\x00\\x01'"


def test_body_cut_short_at_eof_is_truncated() -> None:
    decoder = FrameDecoder()
    decoder.feed((100).to_bytes(4, "big") + b'{"type":"l')
    assert decoder.expected_size == 100
    with pytest.raises(TruncatedMessageError, match="received 10 of 100 bytes"):
        decoder.eof()


def test_messages_before_a_framing_error_are_not_lost() -> None:
    decoder = FrameDecoder(max_message_size=64)
    first = encode_frame(b'{"a": 1}')
    assert decoder.feed(first + b"junk and more") == [b'{"a": 1}']
    with pytest.raises(MessageTooLargeError):
        decoder.feed(b"")
    with pytest.raises(FramingError):
        decoder.feed(first)


def test_a_failed_decoder_refuses_more_input() -> None:
    decoder = FrameDecoder(max_message_size=8)
    with pytest.raises(MessageTooLargeError):
        decoder.feed(encode_frame(b"123456789"))
    with pytest.raises(FramingError):
        decoder.feed(encode_frame(b"1"))


def test_framing_errors_are_invalid_payload() -> None:
    for cls in (
        MalformedHeaderError,
        MessageTooLargeError,
        TruncatedMessageError,
        MalformedPayloadError,
    ):
        assert issubclass(cls, InvalidPayloadError)
        assert cls("x").error_type.value == "invalid_payload"


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"[1,2,3]", "an array"),
        (b'"s"', "a string"),
        (b"3", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
def test_json_that_is_not_an_object_is_malformed(payload: bytes, kind: str) -> None:
    with pytest.raises(MalformedPayloadError, match=f"not a JSON object \\(got {kind}\\)"):
        decode_object(payload)


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe{}", b'{"a": 1', b" "])
def test_invalid_json_or_utf8_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPayloadError, match="not in a JSON format"):
        decode_object(payload)


def test_documents_orjson_rejects_but_json_accepts_are_read_like_the_reference() -> None:
    assert decode_object(b'{"big": 123456789012345678901234567890}') == {
        "big": 123456789012345678901234567890
    }


def test_encode_frame_refuses_payloads_beyond_the_header() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(MessageTooLargeError):
        encode_frame(Huge(b"x"))
    assert HEADER_SIZE == 4
