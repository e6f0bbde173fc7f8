"""Limits on the shape of a request's JSON, checked on the raw bytes before anything is parsed.

A request is authenticated only once its JSON has been read (the token travels inside it), so
whatever a request costs before that check is what an anonymous client can make the server
spend. Parsing is where the cost hides: 15 MB of ``[],[],...`` become 5 million Python lists
(~400 MB and more than a second of CPU, holding the GIL). :func:`check_json_limits` bounds that
cost from the bytes alone, with C-speed primitives (``bytes.count``, ``bytes.split``, one
regular expression and ``itertools.accumulate``), so that nothing large is ever built:

- **items**: arrays and objects (bracket pairs), commas and strings (pairs of ``"``), counted
  over the raw text, inside strings too. That over-counts a string full of commas or brackets,
  which a control command never carries; in exchange the count bounds the worst case exactly
  and costs a few ``memchr`` passes (~4 ms for 1 MiB). A 40-step workflow has ~5,000.
- **depth**: the deepest nesting of arrays and objects, outside strings. Computed only when the
  number of ``[`` and ``{`` exceeds the limit (else the depth cannot), on at most
  ``2 * max_items`` brackets.

Both bound the parser's work: with the defaults (50,000 items, depth 64) the largest request
that passes is parsed by orjson in ~10 ms and never recurses deeply.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from framepipe.protocol.framing import FramingError

# A 40-step workflow with 4 cameras (tests/realistic_requests.py) is 37 kB, 5,200 items and 7
# levels deep: ~10x headroom on both.
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_JSON_ITEMS = 50_000

# A JSON string: complete, or running to the end of the text (an unterminated one must be
# consumed in one go too, or the search would restart at every quote inside it: quadratic).
# Possessive quantifiers: the two alternatives start with different bytes, nothing to retry.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNED_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 / -1 as signed bytes


class JsonLimitError(FramingError):
    """The request's JSON is larger or deeper than the server accepts (nothing was parsed).
    ``limit`` says which: ``"items"`` or ``"depth"``."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """The most a request's JSON may hold; see the module docstring for what is counted."""

    max_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_items: int = DEFAULT_MAX_JSON_ITEMS

    def __post_init__(self) -> None:
        if self.max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {self.max_depth}")
        if self.max_items < 8:
            raise ValueError(f"max_items must be >= 8, got {self.max_items}")


def count_items(body: bytes) -> int:
    """Arrays and objects (the larger of the opening and closing bracket counts), commas and
    strings in ``body``, strings' contents included."""
    openers = body.count(b"[") + body.count(b"{")
    closers = body.count(b"]") + body.count(b"}")
    return max(openers, closers) + body.count(b",") + (body.count(b'"') + 1) // 2


def nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects outside strings (0 for a scalar).

    Meant for bodies :func:`count_items` has bounded: its work is linear in the size of
    ``body`` and in the number of strings and brackets.
    """
    # Without escapes, quotes alternate between opening and closing a string.
    outside = _STRING.sub(b"", body) if b"\\" in body else b"".join(body.split(b'"')[::2])
    steps = outside.translate(_SIGNED_STEPS, _BRACKETS_ONLY)
    if not steps:
        return 0
    return max(0, max(itertools.accumulate(memoryview(steps).cast("b"))))


def check_json_limits(body: bytes, limits: JsonLimits) -> None:
    """Raise :class:`JsonLimitError` if ``body`` holds more items or deeper nesting than
    ``limits`` allow. Says nothing about whether ``body`` is valid JSON (the parser does)."""
    # Every item takes at least one byte: a short body needs no counting. A long one is
    # counted on a prefix first (a prefix never holds more items than the whole): a body of
    # millions of items is refused after reading a few hundred kB of it.
    items = 0
    if len(body) > limits.max_items:
        items = count_items(body[: 4 * limits.max_items])
        if items <= limits.max_items:
            items = count_items(body)
    if items > limits.max_items:
        raise JsonLimitError(
            f"The request holds {items} JSON items (arrays, objects, commas and strings), "
            f"above the server's limit of {limits.max_items}; send a smaller request, or ask "
            "the operator to raise the limit",
            limit="items",
        )
    if body.count(b"[") + body.count(b"{") <= limits.max_depth:
        return  # fewer containers than the limit: the nesting cannot be deeper
    depth = nesting_depth(body)
    if depth > limits.max_depth:
        raise JsonLimitError(
            f"The request's JSON is nested {depth} levels deep, above the server's limit of "
            f"{limits.max_depth}; send a flatter request, or ask the operator to raise the limit",
            limit="depth",
        )
