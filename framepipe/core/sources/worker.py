"""The decode process: one per video source, writing decoded frames straight into ring slots.

Runs :func:`run_decoder` in a child process (started from the forkserver of
:mod:`framepipe.core.sources.launcher`). It opens the source, tells its owner the stream's
size (the owner creates the FrameRing and sends its name), then loops: grab the next frame,
decide which consumers get it (their mode, max_fps, adaptive pace), acquire a free slot,
retrieve the frame as BGR straight into the slot, publish its descriptor to those consumers
under each one's strategy. Commands (pause/mute/resume per consumer, add/remove consumer,
terminate) come over a small control pipe, polled between frames; state changes and
statistics go back over the same pipe. Pixels never go through the pipe.

Live sources reconnect with backoff (RESTARTING → RUNNING); a file ends (ENDED); a source
that cannot be opened at all is ERROR with the reason. Every open and read has a timeout,
so the process never hangs; EOF on the control pipe (owner gone) stops it.
"""

from __future__ import annotations

import contextlib
import math
import select
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from framepipe.core.processes import die_with_parent
from framepipe.core.sources.backends import (
    BackendOptions,
    DecodeBackend,
    SourceOpenError,
    make_backend,
)
from framepipe.core.sources.entities import (
    BufferFillingStrategy,
    DecoderBackendName,
    DecoderStats,
    DropReason,
    StreamState,
)
from framepipe.core.sources.messages import (
    AddConsumer,
    AttachRing,
    Command,
    ConsumerMode,
    Event,
    Opened,
    RemoveConsumer,
    SetConsumerMode,
    StateChanged,
    StatsUpdate,
    Terminate,
)
from framepipe.core.sources.reference import ParsedReference

if TYPE_CHECKING:
    from framepipe.core.ring import FrameProducer, FrameRing

#: pts travels in descriptors as integer microseconds; this means "no pts".
PTS_NONE = -1
_ADAPTIVE_TOLERANCE = 0.1  # consumer may be 10% slower than the stream before adaptive drops
_ADAPTIVE_MIN_FPS = 0.5


@dataclass(frozen=True)
class DecoderConfig:
    decoder_id: int
    reference: ParsedReference
    backend: DecoderBackendName
    options: BackendOptions = field(default_factory=BackendOptions)
    reconnect_initial_backoff_s: float = 0.1
    reconnect_max_backoff_s: float = 1.0
    stats_interval_s: float = 0.25
    retry_open: bool = False  # a replacement decoder: keep retrying the stream, never ERROR
    first_frame_id: int = 1
    wait_slice_s: float = 0.05  # longest a WAIT blocks before commands are looked at again


class _Stop(Exception):
    """Leave the decode loop (terminate command, or the owner is gone)."""


@dataclass
class _Consumer:
    index: int
    strategy: BufferFillingStrategy
    max_fps: float | None
    mode: str
    next_due_ns: int = 0
    adaptive_fps: float | None = None
    last_received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: DropReason) -> None:
        self.dropped[reason.value] = self.dropped.get(reason.value, 0) + 1

    def due(self, capture_ns: int, fps: float | None) -> bool:
        """Rate gate: deliver at most ``fps`` frames per second, without drift."""
        if fps is None:
            return True
        if capture_ns < self.next_due_ns:
            return False
        interval = int(1e9 / fps)
        self.next_due_ns = max(self.next_due_ns + interval, capture_ns - interval // 2)
        return True


class _Decoder:
    def __init__(self, config: DecoderConfig, control: Connection) -> None:
        self.config = config
        self.control = control
        self._poller = select.poll()
        self._poller.register(control.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        self.state = StreamState.INITIALISING
        self.consumers: dict[int, _Consumer] = {}
        self.stats = DecoderStats()
        self.backend: DecodeBackend | None = None
        self.ring: FrameRing | None = None  # once attached
        self.producer: FrameProducer | None = None  # once attached
        self.frame_id = config.first_frame_id - 1
        self.fps: float | None = None
        self._next_stats = 0.0
        self._rate_window: list[float] = []
        self._last_stats_decoded = 0
        self._last_stats_at = time.monotonic()
        self._file_due = 0.0

    # -- messaging ----------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        try:
            self.control.send(event)
        except (BrokenPipeError, EOFError, OSError):
            raise _Stop from None

    def set_state(self, new: StreamState, message: str = "") -> None:
        if new is self.state:
            return
        previous, self.state = self.state, new
        self.send(StateChanged(previous, new, time.time_ns(), message))

    def poll_commands(self, timeout: float = 0.0) -> None:
        # One persistent poll object: Connection.poll() builds a selector per call (~0.2 ms),
        # which every frame would pay.
        poller = self._poller
        try:
            ready = poller.poll(math.ceil(timeout * 1000) if timeout > 0 else 0)
            while ready:
                self.handle(self.control.recv())
                ready = poller.poll(0)
        except (EOFError, OSError):
            raise _Stop from None

    def handle(self, command: Command) -> None:
        if isinstance(command, Terminate):
            raise _Stop
        if isinstance(command, AttachRing):
            self.attach(command.ring_name)
        elif isinstance(command, AddConsumer):
            self.consumers[command.index] = _Consumer(
                command.index, command.strategy, command.max_fps, command.mode
            )
            if self.producer is not None:
                self.producer.set_consumer_strategy(command.index, command.strategy.value)
        elif isinstance(command, RemoveConsumer):
            self.consumers.pop(command.index, None)
            if self.producer is not None:
                self.producer.set_consumer_strategy(command.index, None)
                self.producer.reap()
        elif isinstance(command, SetConsumerMode):
            consumer = self.consumers.get(command.index)
            if consumer is not None:
                consumer.mode = command.mode
        self.update_mode_state()

    def update_mode_state(self) -> None:
        if self.state not in (StreamState.RUNNING, StreamState.PAUSED, StreamState.MUTED):
            return
        modes = {c.mode for c in self.consumers.values()}
        if modes and modes == {ConsumerMode.PAUSED}:
            self.set_state(StreamState.PAUSED)
        elif modes and ConsumerMode.RUNNING not in modes:
            self.set_state(StreamState.MUTED)
        else:
            self.set_state(StreamState.RUNNING)

    def attach(self, ring_name: str) -> None:
        from framepipe.core.ring import FrameProducer, FrameRing

        ring = FrameRing.attach(ring_name)
        self.ring = ring
        # A decoder that replaces a crashed one: a slot it died writing (odd seq) is given back.
        for slot in range(ring.slots):
            ring.abandon(slot)
        self.producer = FrameProducer(ring, "DROP_OLDEST")
        self.stats.ring_slots = ring.slots
        for consumer in self.consumers.values():
            self.producer.set_consumer_strategy(consumer.index, consumer.strategy.value)

    def send_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_stats:
            return
        self._next_stats = now + self.config.stats_interval_s
        elapsed = now - self._last_stats_at
        if elapsed > 0:
            self.stats.measured_fps = (
                self.stats.frames_decoded - self._last_stats_decoded
            ) / elapsed
        self._last_stats_at = now
        self._last_stats_decoded = self.stats.frames_decoded
        if self.ring is not None:
            self.stats.ring_occupancy = self.ring.slots - self.ring.free_slots()
            self.update_adaptive(elapsed)
        if self.backend is not None:
            self.stats.copies = int(getattr(self.backend, "copies", 0))
        self.stats.cpu_s = time.process_time()
        published: dict[int, int] = {}
        if self.ring is not None:
            for index in self.consumers:
                published[index] = self.ring.consumer_info(index).delivered
        self.send(
            StatsUpdate(
                stats=DecoderStats(**{**self.stats.__dict__, "dropped": dict(self.stats.dropped)}),
                published=published,
                dropped={i: dict(c.dropped) for i, c in self.consumers.items()},
            )
        )

    def update_adaptive(self, elapsed: float) -> None:
        """ADAPTIVE_*: a consumer slower than the stream gets frames at its own pace."""
        assert self.ring is not None
        stream_fps = self.stats.measured_fps
        for consumer in self.consumers.values():
            if consumer.strategy not in (
                BufferFillingStrategy.ADAPTIVE_DROP_OLDEST,
                BufferFillingStrategy.ADAPTIVE_DROP_LATEST,
            ):
                continue
            info = self.ring.consumer_info(consumer.index)
            taken = info.received - consumer.last_received
            consumer.last_received = info.received
            reader_fps = taken / elapsed if elapsed > 0 else 0.0
            backlog = info.delivered - info.dropped - info.received
            if (
                backlog > 0
                and stream_fps > 0
                and reader_fps < stream_fps * (1 - _ADAPTIVE_TOLERANCE)
            ):
                consumer.adaptive_fps = max(reader_fps, _ADAPTIVE_MIN_FPS)
            else:
                consumer.adaptive_fps = None

    # -- source -------------------------------------------------------------------------------

    def open(self, reconnect: bool) -> None:
        config = self.config
        backend = make_backend(
            config.backend, config.reference.target, config.reference.kind, config.options
        )
        try:
            info = backend.open()
        except BaseException:
            backend.close()
            raise
        self.backend = backend
        self.fps = info.fps
        self._file_due = time.monotonic()
        self.send(Opened(info, config.backend, time.time_ns(), reconnect))

    def close_backend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()

    def reconnect(self) -> bool:
        """RESTARTING: retry with backoff until the stream is back (True) or we are stopped."""
        self.close_backend()
        self.set_state(StreamState.RESTARTING)
        backoff = self.config.reconnect_initial_backoff_s
        while True:
            self.send_stats()
            self.poll_commands(backoff)
            try:
                self.open(reconnect=True)
            except SourceOpenError as exc:
                self.stats.last_error = f"reconnect failed: {exc}"
                backoff = min(backoff * 2, self.config.reconnect_max_backoff_s)
                continue
            self.stats.reconnects += 1
            self.set_state(StreamState.RUNNING)
            self.update_mode_state()
            return True

    # -- the loop -----------------------------------------------------------------------------

    def targets(self, capture_ns: int) -> list[int]:
        live = self.config.reference.is_live
        chosen = []
        for consumer in self.consumers.values():
            if consumer.mode != ConsumerMode.RUNNING:
                consumer.drop(DropReason.MUTED)
                continue
            if live and not consumer.due(capture_ns, consumer.max_fps):
                consumer.drop(DropReason.MAX_FPS)
                continue
            if consumer.adaptive_fps is not None and not consumer.due(
                capture_ns, consumer.adaptive_fps
            ):
                consumer.drop(DropReason.ADAPTIVE)
                continue
            chosen.append(consumer.index)
        return chosen

    def pace_file(self) -> None:
        """Files with max_fps on every consumer: decode no faster than the fastest of them."""
        rates = [
            c.max_fps for c in self.consumers.values()
        ]  # muted ones too: a muted file keeps its pace
        if not rates or any(r is None for r in rates):
            return
        interval = 1.0 / max(r for r in rates if r is not None)
        now = time.monotonic()
        if self._file_due > now:
            self.poll_commands(self._file_due - now)
            while time.monotonic() < self._file_due:  # a command woke us early
                self.poll_commands(max(0.0, self._file_due - time.monotonic()))
        self._file_due = max(self._file_due + interval, time.monotonic() - interval)

    def run(self) -> None:
        reference = self.config.reference
        try:
            self.open(reconnect=False)
        except SourceOpenError as exc:
            if not self.config.retry_open:
                self.set_state(
                    StreamState.ERROR, f"could not open video_reference {reference.masked!r}: {exc}"
                )
                return
            self.reconnect()
        # The owner creates the ring from the stream's size and sends its name.
        while self.producer is None:
            self.poll_commands(0.1)
        self.set_state(StreamState.RUNNING)
        self.update_mode_state()
        decode_latency = 0.0
        while True:
            self.poll_commands()
            self.send_stats()
            backend = self.backend
            assert backend is not None and self.producer is not None
            if self.state is StreamState.PAUSED and reference.is_file:
                self.poll_commands(0.1)
                continue
            if reference.is_file:
                self.pace_file()
            started = time.perf_counter_ns()
            if not backend.grab():
                if reference.is_live:
                    self.reconnect()
                    continue
                self.send_stats(force=True)  # final figures arrive before ENDED does
                self.set_state(StreamState.ENDED)
                return
            capture_ns = time.time_ns()
            grab_ns = time.perf_counter_ns() - started
            self.frame_id += 1
            self.stats.frames_decoded += 1
            targets = self.targets(capture_ns)
            if not targets:
                if not self.consumers:
                    self.stats.count_drop(DropReason.NO_CONSUMER)
                continue
            slot = self.acquire(targets)
            if slot is None:
                continue
            started = time.perf_counter_ns()
            try:
                backend.retrieve(self.producer.writable(slot))
            except Exception:
                self.producer.abandon(slot)
                raise
            decode_ns = grab_ns + time.perf_counter_ns() - started
            decode_latency = (
                decode_ns / 1e6
                if not decode_latency
                else 0.9 * decode_latency + 0.1 * decode_ns / 1e6
            )
            self.stats.decode_latency_ms = decode_latency
            pts = backend.pts_s()
            self.producer.publish(
                slot,
                frame_id=self.frame_id,
                source_id=self.config.decoder_id,
                pts=PTS_NONE if pts is None else round(pts * 1e6),
                capture_ns=capture_ns,
                # WAIT: block until every WAIT consumer has room, however slow it is (a
                # consumer that leaves or dies unblocks it: the producer reclaims it).
                timeout=None,
                consumers=targets,
            )
            self.stats.frames_published += 1

    def _waiting(self, targets: list[int]) -> bool:
        return any(self.consumers[i].strategy is BufferFillingStrategy.WAIT for i in targets)

    def acquire(self, targets: list[int]) -> int | None:
        """A free slot; under WAIT keep waiting in short slices, answering commands between."""
        assert self.producer is not None
        waiting = self._waiting(targets)
        while True:
            slot = self.producer.acquire(self.config.wait_slice_s if waiting else 0)
            if slot is not None or not waiting:
                return slot
            self.poll_commands()
            self.send_stats()
            if not any(i in self.consumers for i in targets):
                return None

    def shutdown(self, terminated: bool) -> None:
        self.close_backend()
        with contextlib.suppress(_Stop):
            self.send_stats(force=True)
        if self.producer is not None:
            self.producer.close()
        if terminated and not self.state.is_final:
            with contextlib.suppress(_Stop):
                self.set_state(StreamState.TERMINATING)
                self.set_state(StreamState.ENDED)
        if self.ring is not None:
            self.ring.close()


def run_decoder(config: DecoderConfig, control: Connection) -> None:
    """Entry point of a decode process."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's business
    decoder = _Decoder(config, control)
    terminated = False
    try:
        decoder.run()
    except _Stop:
        terminated = True
    except Exception as exc:  # report, never die silently
        with contextlib.suppress(_Stop):
            decoder.send_stats(force=True)
            decoder.set_state(StreamState.ERROR, f"decoder failed: {type(exc).__name__}: {exc}")
    finally:
        decoder.shutdown(terminated)
        with contextlib.suppress(OSError):
            control.close()
