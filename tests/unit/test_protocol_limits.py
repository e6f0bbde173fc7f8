"""JSON limits checked on the raw bytes: exact depth, conservative item count, bounded work."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.protocol._json import dumps
from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.framing import MalformedPayloadError, decode_object, decode_payload
from framepipe.protocol.limits import (
    JsonLimitError,
    JsonLimits,
    check_json_limits,
    count_items,
    nesting_depth,
)
from tests.realistic_requests import large_workflow_init, sdp_offer, webrtc_request

# Strings full of the characters the scan cares about: quotes, backslashes, brackets, commas.
tricky_text = st.text(alphabet=st.sampled_from('ab"\\[]{},: \n\u00e9'), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def items_of(value: Any) -> int:
    """Containers + commas + strings (keys too), as the server counts them without strings'
    contents."""
    if isinstance(value, list):
        return 1 + max(len(value) - 1, 0) + sum(items_of(v) for v in value)
    if isinstance(value, dict):
        return 1 + max(len(value) - 1, 0) + len(value) + sum(items_of(v) for v in value.values())
    return 1 if isinstance(value, str) else 0


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_depth_is_exact_and_items_never_undercount(value: Any) -> None:
    for body in (dumps(value), json.dumps(value, ensure_ascii=False).encode()):
        assert nesting_depth(body) == depth_of(value)
        assert count_items(body) >= items_of(value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_documents_within_the_limits_pass(value: Any) -> None:
    body = dumps(value)
    check_json_limits(body, JsonLimits(max_depth=max(2, depth_of(value)), max_items=10**6))


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_too_deep_is_refused_naming_the_depth_and_the_limit(depth: int) -> None:
    body = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(JsonLimitError, match=f"nested {depth + 1} levels deep.*limit of 64"):
        check_json_limits(body, JsonLimits(max_items=10**6))


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    body = dumps({"regex": "[[[[[[[[" * 20, "escaped": '\\"]]]]' + "{" * 100})
    check_json_limits(body, JsonLimits(max_depth=2))
    assert nesting_depth(body) == 1


def test_closing_brackets_hidden_in_strings_do_not_hide_depth() -> None:
    deep: Any = "x"
    for _ in range(70):
        deep = ["]]]]]]]]", deep]
    with pytest.raises(JsonLimitError, match="nested 70 levels"):
        check_json_limits(dumps(deep), JsonLimits(max_items=10**6))


def test_the_amplification_body_is_refused_by_its_item_count() -> None:
    body = b"[" + b",".join([b"[]"] * 500_000) + b"]"
    with pytest.raises(JsonLimitError, match=r"holds \d+ JSON items.*limit of 50000"):
        check_json_limits(body, JsonLimits())


def test_limit_errors_are_invalid_payload() -> None:
    assert issubclass(JsonLimitError, InvalidPayloadError)


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"[" + b",".join([b"[]"] * 349_000) + b"]", True),
        (b"[" + b",".join([b'""'] * 349_000) + b"]", True),
        (b'["' + b'\\"' * 524_000 + b'"]', True),
        (b'["' + b'\\"' * 524_000, True),  # unterminated: still linear
        (b"[" * 524_000 + b"]" * 524_000, True),
        (b"[" * 40 + b"]" * 1_000_000, True),
        (b'{"a": "' + b"QUJD" * 262_000 + b'"}', False),
        (b'{"a":' + b"[" * 65 + b",".join([b'"x\\"y"'] * 5000) + b"]" * 65 + b"}", True),
        (b'{"a":' + b"[" * 60 + b",".join([b'"x\\"y"'] * 5000) + b"]" * 60 + b"}", False),
    ],
    ids=[
        "empty-arrays",
        "empty-strings",
        "escaped-quotes",
        "unterminated-escapes",
        "deep",
        "closers",
        "one-long-string",
        "too-deep-with-escaped-strings",
        "deep-with-escaped-strings",
    ],
)
def test_the_check_of_any_1_mib_body_is_cheap(body: bytes, refused: bool) -> None:
    """No shape of body makes the check slow (linear passes only; a quadratic scan would take
    minutes on some of these)."""
    started = time.process_time()
    if refused:
        with pytest.raises(JsonLimitError):
            check_json_limits(body, JsonLimits())
    else:
        check_json_limits(body, JsonLimits())
    assert time.process_time() - started < 0.5


def test_real_large_commands_pass_with_headroom() -> None:
    limits = JsonLimits()
    for request in (large_workflow_init(), webrtc_request(sdp_offer())):
        body = dumps(request)
        check_json_limits(body, limits)
        assert count_items(body) * 5 < limits.max_items
        assert nesting_depth(body) * 5 < limits.max_depth


def test_limits_refuse_nonsense_values() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        JsonLimits(max_depth=1)
    with pytest.raises(ValueError, match="max_items"):
        JsonLimits(max_items=0)


@pytest.mark.parametrize("depth", [1025, 5000, 100_000])
def test_decoding_deep_json_is_malformed_payload_never_recursion_error(depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    with pytest.raises(MalformedPayloadError):
        decode_payload(body)
    # a long integer forces the json.loads path, which recurses
    with pytest.raises(MalformedPayloadError):
        decode_object(b'{"n": 123456789012345678901234567890, "a": ' + body + b"}")
