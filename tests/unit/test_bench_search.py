"""The stream-count search of `framepipe bench`: grow 1, 2, 4, … then bisect."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framepipe.bench._search import SearchEnd, StreamCountSearch


def drive(search: StreamCountSearch, capacity: int) -> list[int]:
    """Run the search against a machine that carries ``capacity`` streams."""
    asked = []
    while (n := search.next_count()) is not None:
        asked.append(n)
        search.record(n, n <= capacity)
        assert len(asked) < 50, asked
    return asked


def test_grows_by_doubling_then_bisects_to_the_largest_passing_count() -> None:
    search = StreamCountSearch(max_count=64)
    asked = drive(search, capacity=11)
    assert asked == [1, 2, 4, 8, 16, 12, 10, 11]
    assert search.sustainable == 11
    assert search.end is SearchEnd.FOUND


def test_one_stream_failing_means_none_is_sustainable() -> None:
    search = StreamCountSearch(max_count=64)
    assert drive(search, capacity=0) == [1]
    assert search.sustainable == 0
    assert search.end is SearchEnd.FOUND


def test_stops_at_the_largest_count_allowed() -> None:
    search = StreamCountSearch(max_count=6)
    assert drive(search, capacity=100) == [1, 2, 4, 6]
    assert search.sustainable == 6
    assert search.end is SearchEnd.CAPPED


def test_a_fixed_list_is_measured_in_order_and_nothing_else() -> None:
    search = StreamCountSearch(max_count=64, fixed=[4, 1, 2, 2])
    assert drive(search, capacity=2) == [1, 2, 4]
    assert search.sustainable == 2
    assert search.end is SearchEnd.LISTED


def test_stopping_for_the_budget_keeps_what_was_found() -> None:
    search = StreamCountSearch(max_count=64)
    for n in (1, 2, 4):
        assert search.next_count() == n
        search.record(n, True)
    search.stop()
    assert search.next_count() is None
    assert search.sustainable == 4
    assert search.end is SearchEnd.STOPPED


def test_a_larger_count_passing_after_a_smaller_one_failed_is_trusted() -> None:
    search = StreamCountSearch(max_count=64)
    for n, ok in ((1, True), (2, True), (4, True), (8, False), (6, False), (5, True)):
        assert search.next_count() == n
        search.record(n, ok)
    assert search.next_count() is None
    assert search.sustainable == 5


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        StreamCountSearch(max_count=0)
    with pytest.raises(ValueError):
        StreamCountSearch(max_count=8, fixed=[0, 2])


@given(capacity=st.integers(0, 80), max_count=st.integers(1, 70))
def test_finds_the_capacity_and_says_how_many_runs_remain(capacity: int, max_count: int) -> None:
    search = StreamCountSearch(max_count=max_count)
    asked: list[int] = []
    bounds: list[int] = []
    while (n := search.next_count()) is not None:
        bounds.append(search.remaining_upper_bound())
        asked.append(n)
        search.record(n, n <= capacity)
    assert search.remaining_upper_bound() == 0
    # the progress bar's estimate is never below what was still to come
    for step, bound in enumerate(bounds):
        assert bound >= len(asked) - step, (asked, bounds)
    assert search.sustainable == min(capacity, max_count)
    assert len(asked) == len(set(asked)), asked
    assert len(asked) <= 2 * max_count.bit_length() + 2
