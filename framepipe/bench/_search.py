"""The stream-count search: grow 1, 2, 4, 8, … until a count fails, then bisect between the
last count that passed and the first that failed. No I/O: the driver asks :meth:`next_count`,
runs it and :meth:`record`\\ s the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum


class SearchEnd(StrEnum):
    RUNNING = "running"
    FOUND = "found"  # bracketed: the sustainable count passed and the next one failed
    CAPPED = "capped"  # the largest count allowed passed; the machine may carry more
    LISTED = "listed"  # a fixed list of counts was measured
    STOPPED = "stopped"  # the time budget ran out first


class StreamCountSearch:
    def __init__(self, max_count: int, fixed: Sequence[int] | None = None) -> None:
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {max_count}")
        self.max_count = max_count
        self._fixed = sorted(set(fixed)) if fixed else None
        if self._fixed is not None and self._fixed[0] < 1:
            raise ValueError(f"stream counts must be at least 1, got {self._fixed}")
        self.verdicts: dict[int, bool] = {}
        self._passed = 0  # the largest count that passed, in the grow/bisect order
        self._failed: int | None = None  # the smallest count that failed
        self._stopped = False

    # -- the driver's side ------------------------------------------------------------------

    def next_count(self) -> int | None:
        """The next stream count to measure; None when the search is over."""
        if self._stopped:
            return None
        if self._fixed is not None:
            pending = [n for n in self._fixed if n not in self.verdicts]
            return pending[0] if pending else None
        if self._failed is None:
            if self._passed >= self.max_count:
                return None
            return min(max(1, 2 * self._passed), self.max_count)
        if self._failed - self._passed <= 1:
            return None
        return (self._passed + self._failed) // 2

    def record(self, count: int, passed: bool) -> None:
        self.verdicts[count] = passed
        if self._fixed is not None:
            return
        if passed:
            self._passed = max(self._passed, count)
            if self._failed is not None and self._failed <= self._passed:
                # noise: a larger count passed after a smaller one failed; trust the pass
                self._failed = None
        elif self._failed is None or count < self._failed:
            self._failed = count

    def stop(self) -> None:
        """The budget is spent: no more counts."""
        if self.next_count() is not None:
            self._stopped = True

    # -- what it found ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.next_count() is None

    @property
    def sustainable(self) -> int:
        """The largest stream count that passed (0: not even one stream)."""
        if self._fixed is not None:
            return max((n for n, ok in self.verdicts.items() if ok), default=0)
        return self._passed

    @property
    def end(self) -> SearchEnd:
        if self._stopped:
            return SearchEnd.STOPPED
        if not self.done:
            return SearchEnd.RUNNING
        if self._fixed is not None:
            return SearchEnd.LISTED
        if self._failed is None:
            return SearchEnd.CAPPED
        return SearchEnd.FOUND

    def remaining_upper_bound(self) -> int:
        """At most this many more counts will be measured (for a progress bar)."""
        if self.done:
            return 0
        if self._fixed is not None:
            return len([n for n in self._fixed if n not in self.verdicts])
        if self._failed is not None:
            return _bisections(self._passed, self._failed)
        # still growing: the worst case is a failure at some future count, then bisection
        worst = 0
        low, steps = self._passed, 0
        while low < self.max_count:
            high = min(max(1, 2 * low), self.max_count)
            steps += 1
            worst = max(worst, steps + _bisections(low, high))
            low = high
        return max(worst, steps)


def _bisections(passed: int, failed: int) -> int:
    """Bisection steps, at most, between a passing and a failing count."""
    return max(failed - passed - 1, 0).bit_length()
