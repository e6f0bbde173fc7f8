"""Context-manager behaviour shared by the data plane's resources.

``with`` closes what it opened; a named shared resource (segment, ring, queue) is also unlinked
on the way out by its owner, and only by its owner (every resource has exactly one).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``close()`` on leaving a ``with`` block (``close`` is idempotent in every subclass)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class OwnedResource(Closing):
    """A named shared resource: closed on leaving a ``with`` block, and unlinked if this
    handle is its owner (an attached handle leaves the name to the owner)."""

    owner: bool

    def unlink(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if self.owner:
            self.unlink()
