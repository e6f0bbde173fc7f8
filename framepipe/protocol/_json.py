"""JSON as the reference writes it, at orjson speed where it is safe.

The reference serialises every message with ``json.dumps(obj, default=...)``: separators
``", "`` and ``": "``, ``ensure_ascii=True``, floats as ``repr``. Clients may compare bytes, and
the golden examples do, so framepipe writes exactly those bytes. ``json.dumps`` costs ~1.5 ms
on a 780 kB consume_result with a base64 image (it escapes every character), so large messages
take a fast path: orjson writes compact JSON, and a fix-up pass outside string literals inserts
the spaces and rewrites floats to ``repr`` form (~130 us in all, perf/bench_tcp_front.py). The
fast path is taken only when its output is provably identical (pure ASCII output, no DEL, no
non-string keys, no integer beyond 64 bits); otherwise ``json.dumps`` writes the message.
Property tests check that the two paths agree.

Non-finite floats (NaN, +-Infinity) are not JSON; the reference writes ``NaN`` that strict
parsers reject. framepipe writes ``null`` for them (a deliberate difference).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime
from enum import Enum
from typing import Any

import orjson

FAST_PATH_MIN_BYTES = 4096
"""Below this size ``json.dumps`` is as fast as the fix-up pass (~10 us), so it is used."""

_BACKSLASH = ord("\\")
_FLOAT = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)|-?\d+\.\d+")
_LONG_DIGIT_RUN = re.compile(rb"\d{20}")
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class RawJson:
    """A value that is JSON already (compact, as orjson writes it): written into a message as
    it is where the fast path runs, parsed and written again where ``json.dumps`` does (a
    message under ``FAST_PATH_MIN_BYTES``, or one the fast path cannot write exactly). A
    result stored encoded in a shared result buffer travels this way."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"RawJson({self.data[:60]!r}{'...' if len(self.data) > 60 else ''})"


def _reference_default(obj: Any) -> Any:
    """What the reference's ``default=`` hook does: dates in ISO-8601, enums by value (and
    a :class:`RawJson` as the value it holds)."""
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, RawJson):
        return orjson.loads(obj.data)
    raise TypeError(f"Type {type(obj)} not serializable")


def _orjson_hook(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def default(obj: Any) -> Any:
        return orjson.Fragment(obj.data) if isinstance(obj, RawJson) else hook(obj)

    return default


def _float_repr(match: re.Match[bytes]) -> bytes:
    return repr(float(match.group())).encode()


def _spaced(outside: bytes) -> bytes:
    """Rewrite JSON text that lies outside string literals into ``json.dumps`` form."""
    outside = outside.replace(b",", b", ").replace(b":", b": ")
    if b"." in outside or b"e" in outside or b"E" in outside:
        outside = _FLOAT.sub(_float_repr, outside)
    return outside


def _fast_compat(compact: bytes) -> bytes | None:
    """orjson's compact output in ``json.dumps`` form, or None where that is not provably exact."""
    if not compact.isascii() or b"\x7f" in compact:
        return None  # json.dumps would escape these characters as \\uXXXX
    # Walk the string literals with bytes.find (memchr): a quote inside a literal closes it
    # unless an odd number of backslashes precedes it. (bytes.split on one byte scans byte by
    # byte in CPython and costs ~8x more on a large image.)
    out: list[bytes] = []
    find = compact.find
    pos = 0
    while True:
        start = find(b'"', pos)
        if start < 0:
            out.append(_spaced(compact[pos:]))
            return b"".join(out)
        out.append(_spaced(compact[pos:start]))
        end = find(b'"', start + 1)
        while end > 0 and compact[end - 1] == _BACKSLASH:
            run = 1
            while compact[end - 1 - run] == _BACKSLASH:
                run += 1
            if run % 2 == 0:
                break
            end = find(b'"', end + 1)
        if end < 0:
            return None  # not JSON orjson would write; let json.dumps decide
        out.append(compact[start : end + 1])
        pos = end + 1


def _finite(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Serialise ``obj`` exactly as the reference's ``json.dumps(obj, default=...)`` would.

    Raises TypeError for a value neither encoder can serialise.
    """
    hook = default if default is not None else _reference_default
    try:
        # Dates and dataclasses go to the same hook json.dumps would call; NaN becomes null in
        # both paths.
        compact = orjson.dumps(obj, default=_orjson_hook(hook), option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        compact = None  # e.g. a non-string key or an integer beyond 64 bits
    if compact is not None and len(compact) >= FAST_PATH_MIN_BYTES:
        fast = _fast_compat(compact)
        if fast is not None:
            return fast
    try:
        return json.dumps(obj, default=hook, allow_nan=False).encode("ascii")
    except ValueError:
        return json.dumps(_finite(obj), default=hook, allow_nan=False).encode("ascii")


def dumps_slow(obj: Any) -> bytes:
    """The reference encoder itself (used by tests to check :func:`dumps`)."""
    return json.dumps(_finite(obj), default=_reference_default, allow_nan=False).encode("ascii")


def loads(body: bytes, *, exact_integers: bool = True) -> Any:
    """Parse a JSON document as the reference (``json.loads``) does, orjson first for speed.

    orjson differs from ``json.loads`` on integers beyond 64 bits (it makes them floats) and
    rejects ``NaN``/``Infinity``; a document orjson refuses goes through ``json.loads``, and so
    does one with a run of 20 digits when ``exact_integers`` (that scan costs ~10 us per kB,
    negligible for requests; clients reading large responses turn it off). Raises ValueError
    (UnicodeDecodeError, JSONDecodeError) for anything that is not a JSON document in UTF-8,
    including one nested too deeply to be read (never RecursionError).
    """
    if not exact_integers or _LONG_DIGIT_RUN.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body.decode("utf-8"))
    except RecursionError:  # nesting deeper than the interpreter's stack (orjson stops at 1024)
        raise ValueError("JSON nested too deeply to be read") from None
