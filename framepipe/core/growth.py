"""The RAM budget's headroom for resident growth, shared with the processes that grow.

A pipeline is admitted for the resident set it needs to run (its frames in flight); a ring
grows beyond that at run time only by what the budget grants. The manager owns one
:class:`GrowthAccount`, a small shared segment named after its pid (``/fp-<pid>-growth``), and
sets its headroom after each measurement: the budget's limit less what is in use (resident
segments included) and less the admissions in progress. A producer (the decode process) takes
from the headroom before it reserves pages for one more slot and gives back what it punches
out, with an atomic add: no round trip to the manager on the frame path. A refused take is
backpressure (a WAIT producer waits for a slot to be freed; a DROP producer drops the frame),
never a failure. Each measurement writes the headroom afresh from what is really resident, so
drift (a producer that died with pages reserved, one that re-reserved a backed slot) lasts
one health interval at most.

Where no account exists (a pipeline run in-process, no ``STREAM_MANAGER_MAX_RAM_MB``) growth
is bounded only by the ring's capacity and by /dev/shm (a failed reservation is backpressure).

Public API::

    GrowthAccount.create(owner_pid: int | None = None) -> GrowthAccount   # the manager's
    GrowthAccount.for_segment(segment_name: str) -> GrowthAccount | None # its owner's, if any
    account.headroom -> int; account.set_headroom(nbytes); account.take(nbytes) -> bool;
    account.give(nbytes); account.close() / account.unlink()
"""

from __future__ import annotations

import contextlib
import os

import posix_ipc

from framepipe.core._lifecycle import OwnedResource
from framepipe.core.shm import PREFIX, Segment
from framepipe.ext import _spsc
from framepipe.protocol.errors import NotFoundError

__all__ = ["GrowthAccount", "growth_account_name"]

_SIZE = 4096
_HEADROOM = 0  # int64, bytes the budget still grants
_MASK = (1 << 64) - 1


def growth_account_name(owner_pid: int) -> str:
    """The account of the process ``owner_pid`` (its segments carry that pid)."""
    return f"/{PREFIX}{owner_pid}-growth"


class GrowthAccount(OwnedResource):
    """Bytes of resident growth the RAM budget still grants, in shared memory."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        self.owner = segment.owner
        self._view = _spsc.SharedView(segment.buf)
        self._closed = False

    @classmethod
    def create(cls, owner_pid: int | None = None, headroom: int = 0) -> GrowthAccount:
        """The account of ``owner_pid`` (default: this process; one per process: a former
        one of the same name is stale - its pid was reused - and replaced)."""
        pid = os.getpid() if owner_pid is None else owner_pid
        name = growth_account_name(pid)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(name)
        account = cls(Segment.create(_SIZE, name=name))
        account.set_headroom(headroom)
        return account

    @classmethod
    def for_segment(cls, segment_name: str) -> GrowthAccount | None:
        """The account of the process whose pid ``segment_name`` (``/fp-<pid>-...``) carries,
        or None where that process keeps none."""
        pid = segment_name.removeprefix("/").removeprefix(PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            return None
        try:
            return cls(Segment.attach(growth_account_name(int(pid))))
        except NotFoundError:
            return None

    @property
    def headroom(self) -> int:
        return int(self._view.load_i64(_HEADROOM))

    def set_headroom(self, nbytes: int) -> None:
        """What the budget grants from now on (the manager, after each measurement)."""
        self._view.store_i64(_HEADROOM, max(0, int(nbytes)))

    def take(self, nbytes: int) -> bool:
        """Take ``nbytes`` of headroom if there is that much; False (nothing taken) if not."""
        before = self._view.fetch_add_u64(_HEADROOM, (-nbytes) & _MASK)
        if before >= 1 << 63:
            before -= 1 << 64
        if before >= nbytes:
            return True
        self._view.fetch_add_u64(_HEADROOM, nbytes)
        return False

    def give(self, nbytes: int) -> None:
        """Return ``nbytes`` (pages punched out)."""
        self._view.fetch_add_u64(_HEADROOM, nbytes)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._view.release()
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()

    def __repr__(self) -> str:
        return f"<GrowthAccount {self.name} headroom={self.headroom}>"
