"""The manager's decoders: every decode process of the server is the manager's child.

The manager owns one :class:`~framepipe.core.sources.SourceHub`. For each source of a new
pipeline it admits the pipeline's worker as a consumer (``serve``: a consumer entry in the
decoder's status block and ring, registered for the worker's pid, with the pipeline's own
filling strategy and ``max_fps``) and hands the worker the :class:`SourceTicket`; the worker
reads frames in place and the source's state where the decoder writes it. When the pipeline
ends (or its worker dies), ``release`` gives the entries back; the last consumer of a decoder
stops it and unlinks its ring. With sharing on, pipelines on the same live reference share one
decode process (see :mod:`framepipe.core.sources.hub` for when files are shared).

Everything here blocks (process start, stopping a decoder): the manager calls it in a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepipe.errors import FramepipeError

if TYPE_CHECKING:
    from framepipe.core.sources import SourceHub, SourceTicket, SubscriptionRequest
    from framepipe.core.sources.handle import RingCharger

log = logging.getLogger("framepipe.manager")

# Frame size assumed for a source whose size is not known before it is opened (a camera, a stream).
DEFAULT_FRAME_SIZE = (1920, 1080)


class Decoders:
    """The manager's hub of decode processes (thread-safe, blocking)."""

    def __init__(
        self,
        *,
        share: bool,
        max_consumers: int = 4,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 3.0,
        max_ring_bytes: int | None = None,
        charge: RingCharger | None = None,
    ) -> None:
        self.share = share
        self.max_ring_bytes = max_ring_bytes
        self.charge = charge
        self.max_consumers = max_consumers
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self._hub: SourceHub | None = None
        self._lock = threading.Lock()

    def _get_hub(self) -> SourceHub:
        from framepipe.core.sources import BackendOptions, SourceHub

        with self._lock:
            if self._hub is None:
                options = BackendOptions(
                    open_timeout_s=self.open_timeout_s, read_timeout_s=self.read_timeout_s
                )
                self._hub = SourceHub(
                    share=self.share,
                    max_consumers=self.max_consumers,
                    backend_options=options,
                    max_ring_bytes=self.max_ring_bytes,
                    charge=self.charge,
                )
            return self._hub

    def serve(
        self, requests: Sequence[SubscriptionRequest], worker_pid: int
    ) -> tuple[SourceTicket, ...]:
        """Admit the worker ``worker_pid`` as a consumer of each source; its tickets."""
        hub = self._get_hub()
        tickets: list[SourceTicket] = []
        try:
            for request in requests:
                tickets.append(hub.serve(request, worker_pid))
        except BaseException:
            self.release(tickets, worker_pid)
            raise
        return tuple(tickets)

    def release(self, tickets: Sequence[SourceTicket], worker_pid: int) -> None:
        """The worker is done with these sources (ended, or dead)."""
        hub = self._hub
        if hub is None:
            return
        for ticket in tickets:
            try:
                hub.release(ticket, worker_pid)
            except FramepipeError:
                log.exception("releasing source %s failed", ticket.reference)

    def admit_requests(
        self, requests: Sequence[SubscriptionRequest]
    ) -> tuple[tuple[SubscriptionRequest, ...], int]:
        """The requests with the frame size their admission assumes (``admitted_size``: a
        ring that turns out bigger is charged again before it is created), and the shared
        memory resident in their new rings when they start: their metadata and frames in
        flight, not their capacity (a ring grows beyond that only as the RAM budget's growth
        account grants; a source joining a running decoder adds none). A ring whose capacity
        is above the per-ring cap is refused here (CapacityError naming the size)."""
        from framepipe.core.sources.sizing import check_ring_cap, ring_bytes, ring_floor_bytes

        hub = self._hub
        total = 0
        sized: list[SubscriptionRequest] = []
        for request in requests:
            reference = request.reference
            if reference is None:
                sized.append(request)
                continue
            width, height = frame_size(reference.target, request.video_source_properties)
            sized.append(dataclasses.replace(request, admitted_size=(width, height)))
            if self.share and hub is not None and hub.is_decoding(reference.original):
                continue
            consumers = (
                self.max_consumers if self.share and (reference.is_live or request.realtime) else 1
            )
            size = ring_bytes(width, height, request.buffer_size, consumers)
            check_ring_cap(width, height, size, self.max_ring_bytes)
            total += ring_floor_bytes(width, height, request.buffer_size, consumers)
        return tuple(sized), total

    def pids(self) -> set[int]:
        hub = self._hub
        if hub is None:
            return set()
        return {pid for handle in hub.decoders() if (pid := handle.pid) is not None}

    def close(self) -> None:
        with self._lock:
            hub, self._hub = self._hub, None
        if hub is not None:
            hub.close()


def frame_size(target: object, properties: dict[str, Any]) -> tuple[int, int]:
    """The frame size of a source: a quick probe of a local file (or its properties, when they
    say more: a client may ask for a bigger ring, never a smaller one than the file's), its
    properties, or 1080p."""
    width, height = properties.get("frame_width"), properties.get("frame_height")
    declared = (
        (int(width), int(height))
        if isinstance(width, int | float)
        and isinstance(height, int | float)
        and width > 0
        and height > 0
        else None
    )
    probed = _probe_file(target)
    if probed is not None:
        if declared is not None and declared[0] * declared[1] > probed[0] * probed[1]:
            return declared
        return probed
    return declared or DEFAULT_FRAME_SIZE


def _probe_file(target: object) -> tuple[int, int] | None:
    """The frame size of a local file, read from its header (None: not a file, or unknown)."""
    try:
        is_file = isinstance(target, str) and Path(target).is_file()
    except OSError:  # a name the filesystem refuses (too long, ...)
        is_file = False
    if is_file:
        try:
            import av  # only admission of a file source needs it

            from framepipe.core.sources.reference import FILE_DEMUXERS

            # Only the file itself: a playlist would open what it names.
            options = {"protocol_whitelist": "file", "format_whitelist": FILE_DEMUXERS}
            with av.open(str(target), options=options, timeout=2.0) as container:
                stream = container.streams.video[0]
                if stream.width and stream.height:
                    return int(stream.width), int(stream.height)
        except Exception:
            log.debug("could not probe %s for its frame size", target, exc_info=True)
    return None
