"""Decode once, fan out across pipeline workers: the manager's shared decoders.

With ``FRAMEPIPE_SHARE_DECODERS`` on (the default), the manager owns one
:class:`~framepipe.core.sources.hub.SourceHub`: pipelines on the same video reference (same
decoder properties) share one decode process and one ring, a child of the manager. For each
source of a new pipeline the manager subscribes on behalf of the pipeline's worker (a consumer
of the ring registered for the worker's pid, with the pipeline's own filling strategy, max_fps
and mode) and hands the worker the ring's name and consumer index; the worker reads frames in
place (:class:`~framepipe.core.sources.remote.RemoteHub`). The manager keeps the decoder's
control pipe: mute/resume reach the decode process from here, and the decoder's state goes to
the worker as :class:`~framepipe.core.sources.remote.SourceSnapshot` s.

A worker that dies leaves no lease behind (the decode process's producer reclaims consumers
whose pid is dead); its subscriptions are closed when the manager removes its pipeline, and
the last one stops the decode process and unlinks the ring.

Everything here blocks (process start, waiting for a stream to open, stopping a decoder):
the manager calls it in a thread executor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from framepipe.errors import FramepipeError

if TYPE_CHECKING:
    from framepipe.core.sources.hub import ServedSubscription, SourceHub
    from framepipe.core.sources.remote import SharedSource, SourceSnapshot

log = logging.getLogger("framepipe.manager")


@dataclass(frozen=True)
class SharedLease:
    """One source of one pipeline, read from a shared decoder."""

    subscription: ServedSubscription
    source_id: int


class SharedDecoders:
    """The manager's hub of decoders shared by pipeline workers (thread-safe, blocking)."""

    def __init__(self, *, open_timeout_s: float, max_consumers: int = 4) -> None:
        self.open_timeout_s = open_timeout_s
        self.max_consumers = max_consumers
        self._hub: SourceHub | None = None
        self._lock = threading.Lock()

    def _get_hub(self) -> SourceHub:
        from framepipe.core.sources.hub import SourceHub

        with self._lock:
            if self._hub is None:
                self._hub = SourceHub(share=True, max_consumers=self.max_consumers)
            return self._hub

    def subscribe(
        self, payload: dict[str, Any], worker_pid: int
    ) -> tuple[list[SharedLease], list[SharedSource]]:
        """Subscribe worker ``worker_pid`` to the decoders of the pipeline ``payload`` asks for.

        A source whose decoder has no ring within ``open_timeout_s`` (it failed to open, or is
        slow to) is not shared: the worker decodes it itself and reports what happens to it.
        A payload the worker would reject shares nothing (the worker reports the error).
        """
        from framepipe.core.sources.hub import ServedSubscription
        from framepipe.core.sources.remote import shared_source
        from framepipe.server.worker import build_pipeline, parse_init_payload

        hub = self._get_hub()
        try:
            requests = build_pipeline(
                parse_init_payload(payload), on_prediction=_ignore, processor=None, hub=hub
            ).requests
        except FramepipeError:
            return [], []
        leases: list[SharedLease] = []
        sources: list[SharedSource] = []
        try:
            for request in requests:
                if request.reference is None:
                    continue
                served = hub.subscribe(request, consumer_pid=worker_pid)
                assert isinstance(served, ServedSubscription)
                served.handle.ring_ready.wait(self.open_timeout_s)
                source = shared_source(served, request.source_id)
                if source is None:
                    served.close()
                    continue
                leases.append(SharedLease(served, request.source_id))
                sources.append(source)
        except BaseException:
            self.release(leases)
            raise
        return leases, sources

    def is_decoding(self, reference: object) -> bool:
        """A shared decoder that would take one more pipeline on ``reference`` runs now."""
        hub = self._hub
        if hub is None:
            return False
        for handle in hub.decoders():
            parsed = handle.reference
            if (
                parsed is not None
                and handle.accepting
                and reference
                in (
                    parsed.original,
                    parsed.target,
                )
            ):
                return True
        return False

    @staticmethod
    def snapshots(leases: list[SharedLease]) -> tuple[SourceSnapshot, ...]:
        from framepipe.core.sources.remote import snapshot_of

        return tuple(snapshot_of(lease.subscription, lease.source_id) for lease in leases)

    @staticmethod
    def release(leases: list[SharedLease]) -> None:
        """Close the subscriptions (the last one of a decoder stops it)."""
        for lease in leases:
            try:
                lease.subscription.close()
            except Exception:
                log.exception("closing a shared source subscription failed")

    def close(self) -> None:
        with self._lock:
            hub, self._hub = self._hub, None
        if hub is not None:
            with contextlib.suppress(Exception):
                hub.close()


def _ignore(outputs: Sequence[Any], frames: Sequence[Any]) -> None:
    """The on_prediction of a pipeline that is only built to read its requests."""
