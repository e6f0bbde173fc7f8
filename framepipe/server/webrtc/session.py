"""One WebRTC pipeline in its worker: the peer connection, its frames, the results back.

A :class:`WebRTCSession` runs aiortc in an asyncio loop of its own, on a thread of the worker
(the worker's main thread keeps answering the manager). It owns:

* the peer connection (``iceServers`` is the request's TURN server or nothing: no STUN server
  is reachable from here, and none is needed on a LAN);
* a :class:`~framepipe.core.sources.push.PushSource`: each frame of the peer's video track is
  converted straight into one of its ring slots (freshest frame wins; frames the reader found
  already superseded are counted as drops), and the pipeline reads it like any source;
* the return path: the pipeline's processor is wrapped in a
  :class:`~framepipe.core.processing.processor.FrameTap`, so each frame is shown, in place,
  with its output — the tap draws the predictions and the fps on a copy, hands it to the
  :class:`~framepipe.server.webrtc.tracks.ReturnTrack` (one-frame mailbox) and sends the frame's
  metadata and selected outputs on the peer's data channel (skipped, and counted, while the
  channel's send buffer is backed up).

The peer leaving — its connection closing or failing, its track ending, or no frame for
``webrtc_peer_timeout`` seconds once frames flowed (``FRAMEPIPE_WEBRTC_CONNECT_TIMEOUT`` before
the first) — ends the source (ENDED): the pipeline processes what is queued and finishes, and
the results still buffered for ``consume_result`` are discarded and counted (they went out on
the data channel), so the pipeline ends cleanly. :meth:`close` (``terminate``) tears it all down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.exceptions import OperationError as AiortcOperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from framepipe.core.processing.processor import FrameTap, Processor, build_processor
from framepipe.core.sources import PushSource, SourceKind
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from framepipe.protocol.payloads import BufferConsumptionStrategy, BufferFillingStrategy
from framepipe.server.webrtc.config import WebRTCConfig
from framepipe.server.webrtc.ice import offer_host_addresses
from framepipe.server.webrtc.jitter import use_frame_end_jitter_buffer
from framepipe.server.webrtc.outputs import (
    VIDEO_CLOCK_RATE,
    FpsMeter,
    OutputSelection,
    data_message,
    render,
)
from framepipe.server.webrtc.tracks import ReturnTrack, to_video_frame, write_into_slot
from framepipe.server.worker.messages import StartWebRTCPipeline, WebRTCAnswer

if TYPE_CHECKING:
    from framepipe.core.inference import Inference
    from framepipe.core.pipeline import Pipeline

__all__ = ["WebRTCSession", "rtc_configuration", "start_webrtc_pipeline"]

log = logging.getLogger("framepipe.webrtc")

#: Bytes the data channel may have waiting to be sent before messages are skipped.
DATA_BUFFER_LIMIT = 256 * 1024
#: Batches in inference at once: one, so each frame taken is the freshest when inference starts
#: (a second one would wait behind it in a single-run engine and come back older).
MAX_IN_FLIGHT = 1
_NEGOTIATE_TIMEOUT_S = 20.0
_CLOSE_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 30.0


def rtc_configuration(config: WebRTCConfig) -> RTCConfiguration:
    """The peer connection's configuration: the request's TURN server as the only ICE server,
    or none (aiortc's default STUN server is not reachable from every network; host candidates
    need none)."""
    servers = []
    if config.turn is not None:
        turn = config.turn
        servers.append(
            RTCIceServer(urls=turn.urls, username=turn.username, credential=turn.credential)
        )
    return RTCConfiguration(iceServers=servers)


class WebRTCSession:
    """A peer connection feeding a push source, and the return path (module docstring)."""

    def __init__(self, config: WebRTCConfig, *, name: str = "", buffer_size: int = 1) -> None:
        self.config = config
        self.name = name or uuid.uuid4().hex[:8]
        self.source = PushSource(
            f"webrtc:{self.name}",
            kind=SourceKind.WEBCAM,
            max_consumers=1,
            buffer_size=buffer_size,
            declared_fps=config.webcam_fps,
        )
        self.selection = OutputSelection(config.stream_output, config.data_output)
        self.ended_reason: str | None = None
        self._pipeline: Pipeline | None = None
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._return: ReturnTrack | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._video_seen = False
        self._fps = FpsMeter()
        self._pts_origin_ns: int | None = None
        self._data_sent = 0
        self._data_skipped = 0
        self._results_discarded = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="framepipe-webrtc", daemon=True
        )
        self._thread.start()

    # -- set-up ---------------------------------------------------------------------------------

    def tap(self, processor: Processor) -> FrameTap:
        """``processor``, with each frame and its output shown to the return path."""
        return FrameTap(processor, self._on_frame)

    def attach(self, pipeline: Pipeline) -> None:
        """The pipeline that reads :attr:`source` (its results are discarded when the peer
        has left and it has finished)."""
        self._pipeline = pipeline

    def negotiate(self, timeout: float = _NEGOTIATE_TIMEOUT_S) -> WebRTCAnswer:
        """Answer the peer's offer (the connection then comes up on its own)."""
        future = asyncio.run_coroutine_threadsafe(self._negotiate(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OperationError(
                f"the WebRTC offer could not be answered within {timeout:g} s"
            ) from None

    async def _negotiate(self) -> WebRTCAnswer:
        config = self.config
        offer_host_addresses(config.ice_addresses)
        use_frame_end_jitter_buffer()
        pc = RTCPeerConnection(rtc_configuration(config))
        self._pc = pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", functools.partial(self._on_connection_state, pc))
        self.source.start()
        try:
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=config.offer_sdp, type=config.offer_type)
            )
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            # aiortc's own: no codec in common, a description it cannot take in this state
            AiortcOperationError,
            InvalidAccessError,
            InvalidStateError,
        ) as exc:
            message = f"webrtc_offer could not be answered: {type(exc).__name__}: {exc}"
            raise InvalidPayloadError(message, public_message=message) from exc
        local = pc.localDescription
        if not self._video_seen:
            raise InvalidPayloadError("webrtc_offer sends no video track")
        return WebRTCAnswer(sdp=local.sdp, type=local.type)

    def _spawn(self, coro: Any, name: str) -> None:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        pc = self._pc
        if track.kind == "video" and not self._video_seen and pc is not None:
            self._video_seen = True
            self._return = ReturnTrack()
            pc.addTrack(self._return)
            self._spawn(self._read_video(track), "webrtc-video")
        else:  # audio, or a second video: read and dropped, so nothing piles up
            self._spawn(self._discard_track(track), f"webrtc-{track.kind}")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self._channel is None:
            self._channel = channel
        channel.on("message", self._on_message)

    def _on_message(self, message: str | bytes) -> None:
        self.selection = self.selection.updated(message)

    async def _on_connection_state(self, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        log.info("webrtc %s: connection %s", self.name, state)
        if state in ("failed", "closed"):
            self._peer_gone(f"the peer connection {state}")

    # -- the peer's frames ----------------------------------------------------------------------

    async def _read_video(self, track: MediaStreamTrack) -> None:
        config = self.config
        reason = "the peer's video track ended"
        first = True
        try:
            while True:
                timeout = config.connect_timeout_s if first else config.peer_timeout_s
                try:
                    frame = await asyncio.wait_for(track.recv(), timeout)
                except TimeoutError:
                    if first:
                        reason = f"the peer sent no frame within {timeout:g} s of the answer"
                    else:
                        reason = f"the peer sent no frame for {timeout:g} s (webrtc_peer_timeout)"
                    break
                first = False
                if not isinstance(frame, VideoFrame):
                    continue
                if config.realtime:
                    frame = await self._freshest(track, frame)
                self._push(frame)
        except MediaStreamError:
            pass
        except Exception as exc:  # a frame that cannot be converted: report, never hang
            log.exception("webrtc %s: reading the peer's video failed", self.name)
            reason = f"reading the peer's video failed: {type(exc).__name__}: {exc}"
            self.source.fail(reason)
        self._peer_gone(reason)

    async def _freshest(self, track: MediaStreamTrack, frame: VideoFrame) -> VideoFrame:
        """Frames already decoded behind ``frame`` (the loop was busy): keep the newest, count
        the others as dropped (aiortc's track queue is unbounded)."""
        queue = getattr(track, "_queue", None)
        skipped = 0
        while queue is not None and queue.qsize() > 0:
            newer = await track.recv()
            if isinstance(newer, VideoFrame):
                frame = newer
                skipped += 1
        self.source.skip(skipped)
        return frame

    def _push(self, frame: VideoFrame) -> None:
        source = self.source
        pts_us = None
        if frame.pts is not None and frame.time_base is not None:
            pts_us = round(float(frame.pts * frame.time_base) * 1e6)

        def write(slot: Any) -> None:
            if write_into_slot(frame, slot):
                source.count_copy()

        source.push(frame.width, frame.height, write, pts_us=pts_us)

    async def _discard_track(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    # -- the return path (on the pipeline's threads) --------------------------------------------

    def _on_frame(self, frame: Any, output: Mapping[str, Any] | None, metadata: Any) -> None:
        if self.ended_reason is not None or self._closed:
            return
        selection = self.selection
        fps = self._fps.tick()
        canvas, errors = render(frame, output, selection, fps=fps)
        capture_ns = int(getattr(metadata, "capture_ns", 0) or time.time_ns())
        if self._pts_origin_ns is None:
            self._pts_origin_ns = capture_ns
        pts = (capture_ns - self._pts_origin_ns) * VIDEO_CLOCK_RATE // 1_000_000_000
        video = to_video_frame(canvas, pts)
        message = data_message(output, metadata, selection, pts=pts, fps=fps, errors=errors)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the session is over
            self._loop.call_soon_threadsafe(self._deliver, video, message)

    def _deliver(self, video: VideoFrame, message: bytes) -> None:
        track = self._return
        if track is not None:
            track.offer(video)
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > DATA_BUFFER_LIMIT:
            self._data_skipped += 1
            return
        channel.send(message.decode())
        self._data_sent += 1

    # -- the end --------------------------------------------------------------------------------

    def _peer_gone(self, reason: str) -> None:
        """On the loop: the peer left (or stopped sending). Idempotent."""
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        log.info("webrtc %s: %s; the pipeline ends", self.name, reason)
        self.source.end(reason)
        if self._return is not None:
            self._return.stop()
        pc = self._pc
        if pc is not None:
            self._spawn(pc.close(), "webrtc-close")
        pipeline = self._pipeline
        if pipeline is not None:
            threading.Thread(
                target=self._discard_when_finished,
                args=(pipeline,),
                name="framepipe-webrtc-end",
                daemon=True,
            ).start()

    def _discard_when_finished(self, pipeline: Pipeline) -> None:
        """Once the pipeline has processed what was queued, nobody will read the results left
        in its buffer (they went out on the data channel): discard them, counted."""
        if pipeline.join(_DRAIN_TIMEOUT_S):
            self._results_discarded += pipeline.sink.discard()

    def statistics(self) -> dict[str, Any]:
        """The peer's side, for the status report (``framepipe.webrtc``)."""
        pc, track, channel = self._pc, self._return, self._channel
        selection = self.selection
        return {
            "connection_state": pc.connectionState if pc is not None else "new",
            "ended_reason": self.ended_reason,
            "frames_received": self.source.frames_received,
            "frames_returned": track.sent if track is not None else 0,
            "return_fps": round(self._fps.rate(), 2),
            "data_channel": channel.label if channel is not None else None,
            "data_messages_sent": self._data_sent,
            "stream_output": selection.stream,
            "data_output": list(selection.data),
            "dropped": {
                # annotated frames a newer one replaced before the encoder took them
                "return_replaced": track.replaced if track is not None else 0,
                # data channel messages skipped while its send buffer was backed up
                "data_backlog": self._data_skipped,
                # results left for consume_result when the peer left (sent on the data channel)
                "results_discarded": self._results_discarded,
            },
        }

    def close(self) -> None:
        """Close the peer connection, stop the loop, end the source and unlink its ring and
        status block (idempotent). Call after the pipeline has terminated."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                future.result(_CLOSE_TIMEOUT_S)
            except Exception:
                log.warning("webrtc %s: the peer connection did not close cleanly", self.name)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()
        self.source.close()

    async def _shutdown(self) -> None:
        if self.ended_reason is None:
            self.ended_reason = "terminated"
        if self._return is not None:
            self._return.stop()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        pc = self._pc
        if pc is not None:
            await pc.close()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_webrtc_pipeline(
    command: StartWebRTCPipeline, inference: Inference | None
) -> tuple[Pipeline, WebRTCSession, WebRTCAnswer]:
    """Build and start a WebRTC pipeline (in a worker): the session, the pipeline reading its
    source with the processor tapped for the return path, and the SDP answer."""
    from framepipe.core.pipeline import Pipeline

    config, webrtc = command.config, command.webrtc
    if webrtc.realtime:
        # The freshest frame wins: a slow model drops input frames, never falls behind.
        filling, consumption = BufferFillingStrategy.DROP_OLDEST, BufferConsumptionStrategy.EAGER
        buffer_size = 1
    else:
        # Frames queue (up to decoding_buffer_size) and are taken in order; when the queue is
        # full the newest is dropped. WAIT cannot apply to a live peer.
        filling, consumption = BufferFillingStrategy.DROP_LATEST, BufferConsumptionStrategy.LAZY
        buffer_size = config.decoding_buffer_size
    session = WebRTCSession(webrtc, buffer_size=buffer_size)
    pipeline: Pipeline | None = None
    try:
        pipeline = Pipeline(
            session.source.reference,
            processing=session.tap(build_processor(config.processing)),
            max_fps=config.max_fps,
            source_buffer_filling_strategy=filling,
            source_buffer_consumption_strategy=consumption,
            results_buffer_size=config.results_buffer_size,
            hub=session.source,
            inference=inference,
            hold_results=False,
            max_in_flight=MAX_IN_FLIGHT,
            name=session.source.reference,
        )
        session.attach(pipeline)
        pipeline.start(begun_at=command.begun_at)
        answer = session.negotiate()
    except BaseException:
        if pipeline is not None:
            pipeline.terminate()
        session.close()
        raise
    return pipeline, session, answer
