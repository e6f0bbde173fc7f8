"""The owner's side of one decode process: start, restart, stop, consumers, ring, status block.

A :class:`DecoderHandle` lives in the process that owns a source (the stream manager, or a
local :class:`~framepipe.core.sources.hub.SourceHub`). It creates the source's
:class:`~framepipe.core.sources.status.SourceStatus` block first, hands out consumer entries in
it, starts the decode process, creates the frame ring once the stream has opened (its size is
known then) and registers every consumer in the ring at the index it was given. A listener
thread waits for the ``Opened`` message and for the process to exit: a live source whose decode
process died is given a new one (RESTARTING), anything else that dies is ERROR with the cause
(killed by which signal, or which exit code) — never "ended". :meth:`stop` ends the process and
unlinks the ring and the status block; the owner is the only one that unlinks them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import numpy as np

from framepipe.core.pixels import FrameLayout
from framepipe.core.processes import describe_exit
from framepipe.core.ring import ConsumerState, FrameRing
from framepipe.core.sources.backends import BackendOptions
from framepipe.core.sources.decoder import DecoderConfig, run_decoder
from framepipe.core.sources.entities import BufferFillingStrategy, DecoderBackendName, StreamState
from framepipe.core.sources.launcher import DecodeProcess, decode_context
from framepipe.core.sources.messages import AttachRing, Command, Opened, Terminate
from framepipe.core.sources.reference import ParsedReference
from framepipe.core.sources.sizing import (
    DEFAULT_MAX_RING_BYTES,
    DEFAULT_RING_BUDGET_BYTES,
    MB,
    check_ring_cap,
    resident_floor_slots,
    ring_floor_bytes,
    ring_geometry,
)
from framepipe.core.sources.status import ConsumerMode, SourceStatus
from framepipe.protocol.errors import FramepipeError

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 3.0
_RESTART_BACKOFF_S = 0.1
_RESTART_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class RingCharge:
    """A ring about to be created bigger than its source was admitted for: what the owner's
    RAM budget is asked to charge (it raises RamBudgetExceededError to refuse)."""

    reference: str  # masked
    width: int
    height: int
    ring_bytes: int
    admitted_width: int
    admitted_height: int
    admitted_ring_bytes: int

    def describe(self) -> str:
        return (
            f"video_reference {self.reference!r} is {self.width}x{self.height}: its frame ring "
            f"needs {self.ring_bytes / MB:,.1f} MB, but it was admitted as "
            f"{self.admitted_width}x{self.admitted_height} ({self.admitted_ring_bytes / MB:,.1f} MB)"
        )


#: Charges a ring bigger than its admission against the owner's RAM budget, or raises.
RingCharger = Callable[[RingCharge], None]


class DecoderHandle:
    """One decode process, its status block, its ring and its consumers (owner side)."""

    _ids = itertools.count()

    def __init__(
        self,
        reference: ParsedReference | None,
        *,
        backend: DecoderBackendName,
        options: BackendOptions,
        max_consumers: int,
        buffer_size: int,
        ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
        realtime: bool = False,
        raw_reference: str = "",
        error: str | None = None,
        max_ring_bytes: int | None = DEFAULT_MAX_RING_BYTES,
        admitted_size: tuple[int, int] | None = None,
        charge: RingCharger | None = None,
    ) -> None:
        self.decoder_id = next(self._ids)
        self.reference = reference
        self.masked_reference = reference.masked if reference is not None else raw_reference
        self.backend = backend
        self.options = options
        self.max_consumers = max_consumers
        self.buffer_size = buffer_size
        self.ring_budget_bytes = ring_budget_bytes
        self.realtime = realtime
        # Rings above this are refused outright; one bigger than ``admitted_size`` (the frame
        # size the owner's RAM admission assumed) is charged again through ``charge`` first.
        self.max_ring_bytes = max_ring_bytes
        self.admitted_size = admitted_size
        self.charge = charge
        self.status = SourceStatus.create(max_consumers)
        self.ring: FrameRing | None = None
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self._listener: threading.Thread | None = None
        self._closed = False
        self._started = False
        self._halt = threading.Event()
        self._restarts = 0
        self._error = error
        self._stall_cause: str | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The current decode process's pid (None before it starts)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def alive(self) -> bool:
        process = self._process
        return process is not None and process.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def shares_like_a_camera(self) -> bool:
        """A new consumer may join at any time and start at the freshest frame: a live source,
        or a file replayed in real time. A file read as fast as possible is shared only by
        consumers that join before its ring exists (none of them misses a frame)."""
        reference = self.reference
        return reference is not None and (reference.is_live or self.realtime)

    @property
    def accepting(self) -> bool:
        """Can take one more consumer (decode once, fan out)."""
        with self._lock:
            if self._closed or self.reference is None:
                return False
            state = self.status.state
            if state.is_final or state is StreamState.TERMINATING:
                return False
            if not self.shares_like_a_camera and self.ring is not None:
                return False
            return self.status.active_consumers() < self.max_consumers

    # -- consumers ------------------------------------------------------------------------------

    def add_consumer(
        self,
        pid: int,
        strategy: BufferFillingStrategy,
        max_fps: float | None,
        mode: ConsumerMode = ConsumerMode.RUNNING,
        *,
        pixels: bool = True,
    ) -> int:
        """Give ``pid`` a consumer entry (and a consumer of the ring, once there is one);
        ``pixels`` False: it reads only its frames' metadata."""
        with self._lock:
            ring = self.ring
            usable: Callable[[int], bool] | None = None
            if ring is not None:
                usable = self._ring_entry_free
            index = self.status.claim_consumer(
                pid, strategy, max_fps, mode=mode, usable=usable, pixels=pixels
            )
            if ring is not None:
                try:
                    ring.register_consumer(pid, index=index)
                except BaseException:
                    self.status.free_consumer(index)
                    raise
            return index

    def _ring_entry_free(self, index: int) -> bool:
        ring = self.ring
        if ring is None or index >= ring.max_consumers:
            return ring is None
        state = ring.consumer_state(index)
        if state is ConsumerState.LEAVING and not self.alive:
            ring.reclaim_consumer(index)  # nobody else will: the producer is gone
            return True
        return state is ConsumerState.FREE

    def remove_consumer(self, index: int, pid: int) -> bool:
        """Free consumer ``index`` (held by ``pid``); True when no consumer is left."""
        with self._lock:
            if self._closed:
                return True
            settings = self.status.consumer(index)
            if settings.active and settings.pid == pid:
                self.status.free_consumer(index)
            ring = self.ring
            if ring is not None and index < ring.max_consumers and ring.consumer_pid(index) == pid:
                if self.alive:
                    ring.unregister_consumer(index)  # the producer empties it and frees it
                else:
                    ring.reclaim_consumer(index)
            return self.status.active_consumers() == 0

    # -- the decode process ---------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self.status.set_state(StreamState.INITIALISING)
            if self.reference is None:  # rejected (not found): it fails as a dead camera does
                self.status.set_state(StreamState.ERROR, self._error or "no such video source")
                return
            self._spawn(restart=False)

    def _spawn(self, restart: bool) -> None:
        """Start a decode process (under the lock). A replacement attaches to the existing
        ring straight away and keeps retrying the stream until it opens."""
        assert self.reference is not None
        context = decode_context()
        parent_conn, child_conn = context.Pipe(duplex=True)
        config = DecoderConfig(
            decoder_id=self.decoder_id,
            reference=self.reference,
            backend=self.backend,
            status_name=self.status.name,
            options=self.options,
            realtime=self.realtime,
            retry_open=restart,
            max_ring_bytes=self.max_ring_bytes,
        )
        process = DecodeProcess(
            target=run_decoder,
            args=(config, child_conn),
            name=f"framepipe-decode-{self.decoder_id}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self._conn = parent_conn
        self._process = process
        if restart and self.ring is not None:
            self.send(AttachRing(self.ring.name))
        self._listener = threading.Thread(
            target=self._listen,
            args=(parent_conn, process),
            name=f"framepipe-decode-{self.decoder_id}-events",
            daemon=True,
        )
        self._listener.start()

    def send(self, command: Command) -> None:
        conn = self._conn
        if conn is None:
            return
        with self._send_lock, contextlib.suppress(OSError, BrokenPipeError, EOFError):
            conn.send(command)

    def stalled_for(self, now_mono_ns: int) -> float:
        """Seconds since the running decode process last showed a sign of life (0 when none
        runs, or it has not reported yet)."""
        if not self.alive or self._closed:
            return 0.0
        beat = self.status.statistics().heartbeat_mono_ns
        return max(0.0, (now_mono_ns - beat) / 1e9) if beat else 0.0

    def kill_stalled(self, stalled_s: float) -> None:
        """The decode process is alive but stuck: kill it. A live source is then given a new
        one (RESTARTING); any other fails (ERROR), with this cause."""
        with self._lock:
            if self._closed:
                return
            self._stall_cause = f"gave no sign of life for {stalled_s:.1f} s and was killed"
        self.kill()

    def kill(self) -> None:
        """SIGKILL the decode process (a stuck one: the listener then treats it as crashed)."""
        process = self._process
        if process is not None and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)

    def _listen(self, conn: Connection, process: BaseProcess) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(event, Opened):
                try:
                    self._on_opened(event)
                except Exception:
                    logger.exception("decode process %s: creating its ring failed", self.decoder_id)
        process.join(_STOP_TIMEOUT_S)
        restart = False
        with self._lock:
            if self._closed or self.status.state.is_final:
                return
            how = self._stall_cause or describe_exit(process.exitcode)
            self._stall_cause = None
            cause = f"the decode process (pid {process.pid}) {how}"
            live = self.reference is not None and self.reference.is_live
            if live and self.ring is not None:
                restart = (
                    True  # a crashed decoder of a live source is replaced, like a dropped stream
                )
                self._restarts += 1
                self.status.count_decoder_restart()
                self.status.set_error(cause)
                self.status.set_state(StreamState.RESTARTING, f"{cause}; starting a new one")
            else:
                self.status.set_state(StreamState.ERROR, cause)
        if not restart:
            return
        backoff = min(_RESTART_BACKOFF_S * 2 ** min(self._restarts - 1, 6), _RESTART_BACKOFF_MAX_S)
        if self._halt.wait(backoff):
            return
        with self._lock:
            if self._closed:
                return
            conn.close()
            with contextlib.suppress(ValueError):
                process.close()
            self._spawn(restart=True)

    def _on_opened(self, event: Opened) -> None:
        with self._lock:
            if self.ring is not None or self._closed:
                return
            info = event.info
            consumers = self.max_consumers
            if not self.shares_like_a_camera:
                # Nobody joins a file once its ring exists: room for those here now.
                active = [c.index for c in self.status.consumers() if c.active]
                consumers = max(active, default=0) + 1
            depth, slots = ring_geometry(
                info.width, info.height, self.buffer_size, consumers, self.ring_budget_bytes
            )
            active_now = sum(1 for c in self.status.consumers() if c.active)
            layout = info.layout or FrameLayout.bgr(info.width, info.height)
            try:
                self._charge_ring(info.width, info.height, consumers, active_now)
            except FramepipeError as exc:
                self.send(Terminate())
                self.status.set_state(StreamState.ERROR, f"{type(exc).__name__}: {exc}")
                return
            try:
                ring = FrameRing.create(
                    slots,
                    layout.slot_shape,
                    np.uint8,
                    consumers,
                    queue_depth=depth,
                    tag="src",
                    # the frames in flight of the consumers here now; the rest as granted
                    resident_slots=resident_floor_slots(active_now),
                    layout=layout,
                )
            except Exception as exc:
                self.send(Terminate())
                self.status.set_state(StreamState.ERROR, f"could not create the frame ring: {exc}")
                return
            # Consumers first, then the ring's name: the decoder starts with every consumer
            # known, so none misses the first frames.
            for settings in self.status.consumers():
                if settings.active and settings.index < consumers:
                    ring.register_consumer(settings.pid, index=settings.index)
            self.ring = ring
            self.status.set_ring_name(ring.name)
            self.send(AttachRing(ring.name))

    def _ring_size(self, width: int, height: int, consumers: int) -> int:
        depth, slots = ring_geometry(
            width, height, self.buffer_size, consumers, self.ring_budget_bytes
        )
        return FrameRing.segment_size(slots, (height, width, 3), np.uint8, consumers, depth)

    def _resident_size(self, width: int, height: int, consumers: int, active: int) -> int:
        return ring_floor_bytes(
            width, height, self.buffer_size, consumers, self.ring_budget_bytes, active
        )

    def _charge_ring(self, width: int, height: int, consumers: int, active: int) -> None:
        """Before the ring exists, at the stream's real size: refuse one whose capacity is above
        the per-ring cap (CapacityError), and charge again one whose resident start (what
        admission charged: its metadata and frames in flight) is bigger than its admission's
        (the owner raises RamBudgetExceededError when its budget has no room for it). Growth
        beyond that start is granted by the budget at run time, as for every ring."""
        check_ring_cap(
            width, height, self._ring_size(width, height, consumers), self.max_ring_bytes
        )
        if self.admitted_size is None or self.charge is None:
            return
        size = self._resident_size(width, height, consumers, active)
        admitted_w, admitted_h = self.admitted_size
        admitted = self._resident_size(admitted_w, admitted_h, consumers, active)
        if size > admitted:
            self.charge(
                RingCharge(
                    self.masked_reference, width, height, size, admitted_w, admitted_h, admitted
                )
            )

    def stop(self) -> None:
        """Stop the decode process and unlink the ring and the status block (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here on no new decode process is spawned
            process, listener = self._process, self._listener
        self._halt.set()
        if process is not None:
            if process.is_alive():
                self.send(Terminate())
                process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(_STOP_TIMEOUT_S)
        if listener is not None and listener is not threading.current_thread():
            listener.join(_STOP_TIMEOUT_S)
        if self._conn is not None:
            self._conn.close()
        if process is not None:
            with contextlib.suppress(ValueError):
                process.close()
        with self._lock:
            if not self.status.state.is_final:
                self.status.set_state(StreamState.ENDED)
            ring, self.ring = self.ring, None
        if ring is not None:
            ring.close()
            ring.unlink()
        self.status.close()
        self.status.unlink()

    def __repr__(self) -> str:
        return (
            f"<DecoderHandle {self.decoder_id} {self.masked_reference!r} {self.status.state.value}>"
        )
