"""The decode process: one per video source, writing decoded frames straight into ring slots.

Runs :func:`run_decoder` in a child process (started from the forkserver of
:mod:`framepipe.core.sources.launcher`). It opens the source and tells its owner the stream's
size (the owner creates the :class:`~framepipe.core.ring.FrameRing` and sends its name back),
then loops: grab the next frame, decide which consumers get it (their mode, ``max_fps``,
adaptive pace), acquire a free slot, retrieve the frame straight into the slot (in the
ring's pixel format: native 4:2:0 for PyAV, BGR for OpenCV), publish
its descriptor to those consumers under each one's filling strategy. A frame that goes only
to consumers that read no pixels (passthrough pipelines: metadata and size) is decoded, its
size checked against the ring's cap, and published, but nothing is copied into its slot.

Everything about the source lives in its :class:`~framepipe.core.sources.status.SourceStatus`
block: the decoder writes its state, events and statistics there, and reads there how each
consumer wants its frames (a consumer sets its own mode). The control pipe carries only the
ring hand-over, ``Terminate``, and its EOF (the owner is gone). Pixels never go through it.

Live sources reconnect with backoff (RESTARTING → RUNNING); a file ends (ENDED); a source that
cannot be opened is ERROR with the reason. ``max_fps`` keeps a live source's freshest frames at
that rate and, on a file, picks frames by the video's own timeline (the file is read as fast as
its consumers take frames, unless it is replayed in real time). Every open and read has a
timeout, so the process never hangs.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

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
    StreamState,
)
from framepipe.core.sources.gate import ConsumerGate, frame_targets
from framepipe.core.sources.messages import AttachRing, Command, Opened, Terminate
from framepipe.core.sources.reference import ParsedReference
from framepipe.core.sources.status import ConsumerMode, EventKind, SourceStatus
from framepipe.protocol.errors import NotFoundError

if TYPE_CHECKING:
    from framepipe.core.ring import FrameProducer, FrameRing

#: pts travels in descriptors as integer microseconds; this means "no pts".
PTS_NONE = -1
_ADAPTIVE_TOLERANCE = 0.1  # a consumer may be 10% slower than the stream before adaptive drops
_ADAPTIVE_MIN_FPS = 0.5
_ADAPTIVE = (BufferFillingStrategy.ADAPTIVE_DROP_OLDEST, BufferFillingStrategy.ADAPTIVE_DROP_LATEST)
_CUT_SHORT_FRACTION = 0.9  # a file that ends before 90% of its announced frames is cut short


@dataclass(frozen=True)
class DecoderConfig:
    decoder_id: int
    reference: ParsedReference
    backend: DecoderBackendName
    status_name: str
    options: BackendOptions = field(default_factory=BackendOptions)
    realtime: bool = False  # a file is decoded at its own frame rate, like a camera
    reconnect_initial_backoff_s: float = 0.1
    reconnect_max_backoff_s: float = 1.0
    stats_interval_s: float = 0.25
    retry_open: bool = False  # a replacement decoder: keep retrying the stream, never ERROR
    wait_slice_s: float = 0.05  # longest a wait blocks before commands are looked at again
    max_ring_bytes: int | None = None  # a frame size whose ring would be bigger is refused


class FrameSizeRefused(Exception):
    """The stream changed size mid-stream to a size its owner would not admit."""


class _Stop(Exception):
    """Leave the decode loop (terminate command, or the owner is gone)."""


class _Decoder:
    def __init__(self, config: DecoderConfig, control: Connection, status: SourceStatus) -> None:
        self.config = config
        self.control = control
        self.status = status
        self._poller = select.poll()
        self._poller.register(control.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        self.consumers: dict[int, ConsumerGate] = {}
        self._generations: Any = None
        self.backend: DecodeBackend | None = None
        self.ring: FrameRing | None = None  # once attached
        self.producer: FrameProducer | None = None  # once attached
        self.frame_id = status.frames_decoded  # a replacement decoder continues the count
        self.fps: float | None = None
        self.total_frames: int | None = None  # a file's frame count, as its container gives it
        self.last_pts: float | None = None  # the last frame's presentation time (s)
        self._cpu_base = status.cpu_s
        self._next_stats = 0.0
        self._last_stats_decoded = self.frame_id
        self._last_stats_at = time.monotonic()
        self._measured_fps = 0.0
        self._decode_latency_ms = 0.0
        self._replay_origin: tuple[float, float] | None = None  # (monotonic, pts) of 1st frame

    # -- commands -----------------------------------------------------------------------------

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

    def send(self, event: Opened) -> None:
        try:
            self.control.send(event)
        except (BrokenPipeError, EOFError, OSError):
            raise _Stop from None

    def on_wait(self) -> None:
        """Between the slices of a wait for a slot or a consumer's room: still alive."""
        self.status.heartbeat()
        self.poll_commands()
        self.refresh_consumers()
        self.send_stats()
        if self.ring is not None:
            self.ring.trim_if_due()  # slots released meanwhile may have gone idle

    # -- consumers ----------------------------------------------------------------------------

    def refresh_consumers(self) -> None:
        """Pick up consumers that came, left or changed (their entries' generations moved)."""
        generations = self.status.generations()
        if self._generations is not None and (generations == self._generations).all():
            return
        self._generations = generations
        for index in range(self.status.max_consumers):
            settings = self.status.consumer(index)
            known = self.consumers.get(index)
            if not settings.active:
                if known is not None:
                    del self.consumers[index]
                    if self.producer is not None:
                        self.producer.set_consumer_strategy(index, None)
                        self.producer.reap()
                continue
            if known is not None and known.generation == settings.generation:
                continue
            self.consumers[index] = ConsumerGate(
                index,
                settings.generation,
                settings.strategy,
                settings.max_fps,
                pixels=settings.pixels,
            )
            if self.producer is not None:
                self.producer.set_consumer_strategy(index, settings.strategy)

    def mode_state(self) -> StreamState:
        """RUNNING, or PAUSED/MUTED when every consumer is (one running consumer is enough)."""
        modes = {
            ConsumerMode(int(m)) for i, m in enumerate(self.status.modes()) if i in self.consumers
        }
        if modes and modes == {ConsumerMode.PAUSED}:
            return StreamState.PAUSED
        if modes and ConsumerMode.RUNNING not in modes:
            return StreamState.MUTED
        return StreamState.RUNNING

    def update_mode_state(self) -> None:
        if self.status.state in (StreamState.RUNNING, StreamState.PAUSED, StreamState.MUTED):
            self.status.set_state(self.mode_state())

    def attach(self, ring_name: str) -> None:
        from framepipe.core.ring import FrameProducer, FrameRing

        ring = FrameRing.attach(ring_name)
        self.ring = ring
        # A decoder that replaces a crashed one: a slot it died writing (odd seq) is given back.
        for slot in range(ring.slots):
            ring.abandon(slot)
        self.producer = FrameProducer(ring, BufferFillingStrategy.DROP_OLDEST)
        for consumer in self.consumers.values():
            self.producer.set_consumer_strategy(consumer.index, consumer.strategy)
        self.match_ring()

    def match_ring(self) -> None:
        """Frames go into slots of the ring's layout, whatever this opening of the stream
        yields (a replacement decoder, a reconnect to a stream that changed)."""
        if self.ring is not None and self.ring.layout is not None and self.backend is not None:
            self.backend.use_layout(self.ring.layout)

    # -- statistics ---------------------------------------------------------------------------

    def send_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_stats:
            return
        self._next_stats = now + self.config.stats_interval_s
        elapsed = now - self._last_stats_at
        if elapsed > 0:
            self._measured_fps = (self.frame_id - self._last_stats_decoded) / elapsed
        self._last_stats_at = now
        self._last_stats_decoded = self.frame_id
        ring = self.ring
        if ring is not None:
            self.update_adaptive(elapsed)
        self.status.update_statistics(
            measured_fps=self._measured_fps,
            decode_latency_ms=self._decode_latency_ms,
            cpu_s=self._cpu_base + time.process_time(),
            ring_slots=ring.slots if ring is not None else 0,
            ring_occupancy=ring.slots - ring.free_slots() if ring is not None else 0,
            copies=int(getattr(self.backend, "copies", 0)),
        )

    def update_adaptive(self, elapsed: float) -> None:
        """ADAPTIVE_*: a consumer slower than the stream gets frames at its own pace."""
        assert self.ring is not None
        stream_fps = self._measured_fps
        for consumer in self.consumers.values():
            if consumer.strategy not in _ADAPTIVE:
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

    # -- the source ---------------------------------------------------------------------------

    def open(self, reconnect: bool) -> None:
        config = self.config
        options = replace(config.options, input_options=config.reference.ffmpeg_options())
        backend = make_backend(
            config.backend, config.reference.target, config.reference.kind, options
        )
        try:
            info = backend.open()
        except BaseException:
            backend.close()
            raise
        backend.size_check = self.check_new_size
        self.backend = backend
        self.fps = info.fps
        self.total_frames = info.total_frames
        self._replay_origin = None
        started_ns = time.time_ns()
        self.status.set_info(info, config.backend, started_ns)
        self.send(Opened(info, config.backend, started_ns, reconnect))

    def check_new_size(self, width: int, height: int) -> None:
        """A frame of another size than the ring's (the stream changed size mid-stream): the
        same per-ring cap as when the ring was made, for a ring of that size. A size within it
        is scaled to the ring's slots (the ring, and what the budget charged, stay the same)."""
        from framepipe.core.ring import FrameRing
        from framepipe.core.sources.sizing import check_ring_cap
        from framepipe.protocol.errors import CapacityError

        ring = self.ring
        if ring is None:
            return
        size = FrameRing.segment_size(
            ring.slots, (height, width, 3), ring.dtype, ring.max_consumers, ring.queue_depth
        )
        try:
            check_ring_cap(width, height, size, self.config.max_ring_bytes)
        except CapacityError as exc:
            layout = ring.layout  # a 4:2:0 slot is flat: its frame size is in the layout
            old_w, old_h = (
                (layout.width, layout.height)
                if layout is not None
                else (ring.shape[1], ring.shape[0])
            )
            raise FrameSizeRefused(
                f"CapacityError: the stream changed size mid-stream from {old_w}x{old_h} to "
                f"{width}x{height}; {exc}"
            ) from None

    def close_backend(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()

    def reconnect(self) -> None:
        """RESTARTING: retry with backoff until the stream is back, or we are stopped."""
        self.close_backend()
        self.status.set_state(StreamState.RESTARTING)
        backoff = self.config.reconnect_initial_backoff_s
        while True:
            self.send_stats()
            self.status.heartbeat()
            self.poll_commands(backoff)
            try:
                self.open(reconnect=True)
            except SourceOpenError as exc:
                self.status.set_error(f"reconnect failed: {exc}")
                backoff = min(backoff * 2, self.config.reconnect_max_backoff_s)
                continue
            self.match_ring()
            self.status.count_reconnect()
            self.status.set_state(StreamState.RUNNING)
            self.update_mode_state()
            return

    # -- the loop -----------------------------------------------------------------------------

    def timeline_ns(self, capture_ns: int, pts: float | None) -> int:
        """Where a frame sits on the timeline ``max_fps`` counts on: the capture clock for a
        live source, the video's own presentation time for a file."""
        if self.config.reference.is_live:
            return capture_ns
        if pts is not None:
            return int(pts * 1e9)
        fps = self.fps or 30.0
        return int((self.frame_id - 1) * 1e9 / fps)

    def targets(self, at_ns: int) -> list[int]:
        return frame_targets(self.status, self.consumers.values(), at_ns)

    def replay_wait(self, pts: float | None) -> None:
        """Real-time replay of a file: hold each frame until its presentation time."""
        if pts is None:
            fps = self.fps or 30.0
            pts = (self.frame_id - 1) / fps
        now = time.monotonic()
        if self._replay_origin is None:
            self._replay_origin = (now, pts)
            return
        origin, first_pts = self._replay_origin
        due = origin + (pts - first_pts)
        while (left := due - time.monotonic()) > 0:
            self.status.heartbeat()
            self.poll_commands(min(left, self.config.wait_slice_s))

    def cut_short(self) -> str | None:
        """Why a file that just ended is truncated or damaged: it ended well before the frame
        count its container announced (below 90%), by its frames and by its timeline alike (a
        count estimated from the duration and a nominal rate overshoots on variable-rate
        video; the last frame's time does not). None: it ended where it should."""
        total = self.total_frames
        reached = float(self.frame_id)
        if self.last_pts is not None and self.fps:
            reached = max(reached, self.last_pts * self.fps + 1)
        if not total or reached >= _CUT_SHORT_FRACTION * total:
            return None
        return (
            f"video_reference {self.config.reference.masked!r} ended at frame {self.frame_id} "
            f"of the {total} its container announces: the file is truncated or damaged"
        )

    def run(self) -> None:
        reference = self.config.reference
        try:
            self.open(reconnect=False)
        except SourceOpenError as exc:
            if not self.config.retry_open:
                self.status.set_state(
                    StreamState.ERROR, f"could not open video_reference {reference.masked!r}: {exc}"
                )
                return
            self.reconnect()
        # The owner creates the ring from the stream's size and sends its name.
        while self.producer is None:
            self.status.heartbeat()
            self.poll_commands(0.1)
        self.refresh_consumers()
        if self.status.state is StreamState.INITIALISING:
            self.status.add_event(EventKind.VIDEO_CONSUMPTION_STARTED)
        self.status.set_state(StreamState.RUNNING)
        self.update_mode_state()
        while True:
            self.poll_commands()
            self.refresh_consumers()
            self.send_stats()
            self.update_mode_state()
            backend = self.backend
            assert backend is not None and self.producer is not None
            self.status.heartbeat()
            if self.status.state is StreamState.PAUSED and reference.is_file:
                self.poll_commands(0.1)
                if self.ring is not None:
                    self.ring.trim_if_due()  # a paused file gives its idle slots back
                continue
            started = time.perf_counter_ns()
            if not backend.grab():
                if reference.is_live:
                    self.reconnect()
                    continue
                self.send_stats(force=True)  # final figures arrive before ENDED does
                self.producer.close()
                cut_short = self.cut_short()
                if cut_short is not None:  # a truncated file is a failure, not an end
                    self.status.set_state(StreamState.ERROR, cut_short)
                    return
                self.status.set_state(StreamState.ENDED)
                self.status.add_event(EventKind.VIDEO_CONSUMPTION_FINISHED)
                return
            capture_ns = time.time_ns()
            grab_ns = time.perf_counter_ns() - started
            self.frame_id += 1
            self.status.frame_decoded(time.monotonic_ns())
            pts = backend.pts_s()
            self.last_pts = pts
            if reference.is_file and self.config.realtime:
                self.replay_wait(pts)
                capture_ns = time.time_ns()
            targets = self.targets(self.timeline_ns(capture_ns, pts))
            if not targets:
                if not self.consumers:
                    self.status.count_no_consumer()
                continue
            slot = self.acquire(targets)
            if slot is None:
                continue
            started = time.perf_counter_ns()
            try:
                if any(self.consumers[i].pixels for i in targets):
                    backend.retrieve(self.producer.writable(slot))
                else:  # its size still meets the ring's cap, though nothing is written
                    backend.check()
            except Exception:
                self.producer.abandon(slot)
                raise
            decode_ms = (grab_ns + time.perf_counter_ns() - started) / 1e6
            self._decode_latency_ms = (
                decode_ms
                if not self._decode_latency_ms
                else 0.9 * self._decode_latency_ms + 0.1 * decode_ms
            )
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
                on_wait=self.on_wait,
            )
            self.status.frame_published()

    def acquire(self, targets: list[int]) -> int | None:
        """A free slot; under WAIT keep waiting (beating and answering commands meanwhile)."""
        assert self.producer is not None
        waiting = any(self.consumers[i].strategy.waits for i in targets)
        while True:
            slot = self.producer.acquire(
                self.config.wait_slice_s if waiting else 0, on_wait=self.on_wait
            )
            if slot is not None or not waiting:
                return slot
            self.on_wait()
            if not any(i in self.consumers for i in targets):
                return None

    def shutdown(self, terminated: bool) -> None:
        self.close_backend()
        with contextlib.suppress(Exception):
            self.send_stats(force=True)
        if self.producer is not None:
            self.producer.close()
        if terminated and not self.status.state.is_final:
            self.status.set_state(StreamState.TERMINATING)
            self.status.set_state(StreamState.ENDED)
            self.status.add_event(EventKind.VIDEO_CONSUMPTION_FINISHED)
        if self.ring is not None:
            self.ring.close()


def run_decoder(config: DecoderConfig, control: Connection) -> None:
    """Entry point of a decode process."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's business
    try:
        status = SourceStatus.attach(config.status_name)
    except NotFoundError:
        return  # the owner closed the source before this process ran: nothing to decode for
    status.set_decoder_pid(os.getpid())
    status.heartbeat()  # alive from here on: an open that hangs past every timeout is seen
    decoder = _Decoder(config, control, status)
    terminated = False
    try:
        decoder.run()
    except _Stop:
        terminated = True
    except FrameSizeRefused as exc:
        with contextlib.suppress(Exception):
            decoder.send_stats(force=True)
        status.set_state(StreamState.ERROR, str(exc))
    except Exception as exc:  # report, never die silently
        with contextlib.suppress(Exception):
            decoder.send_stats(force=True)
        status.set_state(StreamState.ERROR, f"decoder failed: {type(exc).__name__}: {exc}")
    finally:
        decoder.shutdown(terminated)
        status.close()
        with contextlib.suppress(OSError):
            control.close()
