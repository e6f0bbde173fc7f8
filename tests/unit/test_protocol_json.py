"""framepipe.protocol._json writes exactly what the reference's json.dumps writes."""

from __future__ import annotations

import base64
import datetime
import enum
import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framepipe.protocol import _json

# ASCII-heavy text with the characters that matter to a JSON writer.
tricky_text = st.text(
    alphabet=st.sampled_from(list('ab:,"\\/ {}[]\n\t\x00\x1f\x7fé€😀e.0-+')), max_size=24
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=24)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1e16, 1e-5, 1e-7, 2.5e-05, 123456789012345680.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | floats | tricky_text
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(tricky_text, inner, max_size=5),
    max_leaves=40,
)


def reference_dumps(obj: Any) -> bytes:
    """The reference: json.dumps with its default hook (non-finite floats as null: see _json)."""
    return _json.dumps_slow(obj)


@pytest.fixture
def always_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_json, "FAST_PATH_MIN_BYTES", 0)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_fast_path_equals_json_dumps(document: Any) -> None:
    compact = (
        _json.orjson.dumps(document, option=_json._ORJSON_OPTIONS)
        if _orjson_can(document)
        else None
    )
    fast = _json._fast_compat(compact) if compact is not None else None
    if fast is not None:
        assert fast == reference_dumps(document)
    assert _json.dumps(document) == reference_dumps(document)


def _orjson_can(document: Any) -> bool:
    try:
        _json.orjson.dumps(document, option=_json._ORJSON_OPTIONS)
    except TypeError:
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_default_path_equals_json_dumps(document: Any) -> None:
    assert _json.dumps(document) == reference_dumps(document)


def test_finite_documents_equal_plain_json_dumps(always_fast: None) -> None:
    document = {"a": [1, 2.5, 1e-05, "x, y: z", {"q": '"\\'}], "b": None, "c": True}
    assert _json.dumps(document) == json.dumps(document).encode()


def test_non_finite_floats_become_null() -> None:
    assert _json.dumps({"x": math.nan, "y": [math.inf]}) == b'{"x": null, "y": [null]}'


def test_dates_and_enums_as_the_reference_hook_writes_them(always_fast: None) -> None:
    class Colour(enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    value = {
        "at": datetime.datetime(2026, 11, 25, 11, 37, 36, 233016),
        "day": datetime.date(2026, 11, 25),
        "utc": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "colour": Colour.RED,
        "level": Level.HIGH,
    }
    expected = json.dumps(
        value, default=lambda o: o.isoformat() if isinstance(o, datetime.date) else o.value
    ).encode()
    assert _json.dumps(value) == expected


def test_unserialisable_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        _json.dumps({"x": object()})


def test_large_image_message_takes_the_fast_path_and_matches() -> None:
    image = base64.b64encode(os.urandom(300_000)).decode()
    document = {
        "request_id": "r",
        "response": {
            "status": "success",
            "outputs": [{"image": {"type": "base64", "value": image}}],
        },
        "pipeline_id": None,
    }
    assert _json.dumps(document) == json.dumps(document).encode()
    assert _json._fast_compat(_json.orjson.dumps(document)) == json.dumps(document).encode()


def test_non_ascii_output_falls_back_to_json_dumps(always_fast: None) -> None:
    document = {"name": "café " * 1000}
    assert _json._fast_compat(_json.orjson.dumps(document)) is None
    assert _json.dumps(document) == json.dumps(document).encode()


def test_loads_reads_what_json_loads_reads() -> None:
    assert _json.loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert math.isnan(_json.loads(b"NaN"))
    with pytest.raises(ValueError):
        _json.loads(b"{")
