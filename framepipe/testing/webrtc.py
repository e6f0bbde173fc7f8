"""A WebRTC peer for tests and benchmarks (needs the ``webrtc`` extra): sends generated frames, collects what comes back.

:class:`TestPeer` is what a browser is to a WebRTC pipeline, in Python (aiortc): it offers a
video track whose frames a function draws (frame number → BGR image), opens the ``inference``
data channel, and records every frame the server sends back (with its arrival time) and every
data channel message. ``offer()`` → send it in a ``webrtc`` request → ``accept(answer)``.

:func:`stamp_counter` / :func:`read_counter` write and read a frame number in a band at the
bottom of an image (big blocks, so it survives VP8/H.264 both ways): a returned frame says which
sent frame it is, for glass-to-glass latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from framepipe.server.webrtc.jitter import use_frame_end_jitter_buffer

__all__ = ["COUNTER_BAND", "ReturnedFrame", "TestPeer", "read_counter", "stamp_counter"]

Frame = npt.NDArray[np.uint8]
#: Height of the counter band at the bottom of a frame.
COUNTER_BAND = 40
_BITS = 16


def stamp_counter(image: Frame, number: int) -> None:
    """Write ``number`` (0..65535) as 16 black/white blocks in the bottom band, in place."""
    height, width = image.shape[:2]
    edges = np.linspace(0, width, _BITS + 1).astype(int)
    for bit in range(_BITS):
        value = 255 if (number >> (_BITS - 1 - bit)) & 1 else 0
        image[height - COUNTER_BAND :, edges[bit] : edges[bit + 1]] = value


def read_counter(image: Frame) -> int:
    """The number :func:`stamp_counter` wrote (read from the blocks' centres)."""
    height, width = image.shape[:2]
    edges = np.linspace(0, width, _BITS + 1).astype(int)
    band = image[height - COUNTER_BAND + 8 : height - 8]
    number = 0
    for bit in range(_BITS):
        x0, x1 = int(edges[bit]), int(edges[bit + 1])
        margin = (x1 - x0) // 4
        level = float(band[:, x0 + margin : x1 - margin].mean())
        number = (number << 1) | (1 if level > 127.0 else 0)
    return number


@dataclass
class ReturnedFrame:
    image: Frame  # BGR
    arrived_ns: int  # time.monotonic_ns() when it was received


@dataclass
class TestPeer:
    """A peer sending ``draw(n)`` as frame ``n`` at ``fps`` (see the module docstring).

    ``keep_frames``: how many returned images to keep (the newest); ``on_frame`` sees each one
    as it arrives (``ReturnedFrame``). ``sent_ns[n]``: when frame ``n`` was handed to the encoder.
    """

    __test__ = False  # not a pytest class

    draw: Callable[[int], Frame]
    fps: float = 30.0
    keep_frames: int = 8
    on_frame: Callable[[ReturnedFrame], None] | None = None
    channel_label: str = "inference"
    # Decode a returned frame when its last packet arrives (as a browser does), not when the
    # next frame's first one does (aiortc's own jitter buffer).
    frame_end_jitter_buffer: bool = True
    # While True, no frame is sent (the connection stays up): a peer gone silent.
    paused: bool = False
    sent_ns: dict[int, int] = field(default_factory=dict)
    returned: list[ReturnedFrame] = field(default_factory=list)
    returned_count: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    connection_states: list[str] = field(default_factory=list)
    _pc: Any = None
    _channel: Any = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def offer(self) -> dict[str, str]:
        """Create the connection and its offer (``{"type", "sdp"}``, candidates included)."""
        if self.frame_end_jitter_buffer:
            use_frame_end_jitter_buffer()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._pc = pc
        pc.addTrack(_GeneratedTrack(self))
        channel = pc.createDataChannel(self.channel_label)
        self._channel = channel
        channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", lambda: self.connection_states.append(pc.connectionState))
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        return {"type": local.type, "sdp": local.sdp}

    async def accept(self, answer: dict[str, Any]) -> None:
        await self._pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState) if self._pc is not None else "new"

    def send(self, message: dict[str, Any]) -> None:
        """Send a data channel message (e.g. ``{"data_output": "predictions"}``)."""
        self._channel.send(orjson.dumps(message).decode())

    def _on_message(self, message: str | bytes) -> None:
        self.messages.append(orjson.loads(message))

    def _on_track(self, track: Any) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                returned = ReturnedFrame(frame.to_ndarray(format="bgr24"), time.monotonic_ns())
                self.returned_count += 1
                self.returned.append(returned)
                del self.returned[: -self.keep_frames]
                if self.on_frame is not None:
                    self.on_frame(returned)

    async def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _GeneratedTrack(VideoStreamTrack):
    """Frames ``peer.draw(n)``, paced at ``peer.fps``."""

    def __init__(self, peer: TestPeer) -> None:
        super().__init__()
        self._peer = peer
        self._number = 0
        self._due: float | None = None

    async def recv(self) -> VideoFrame:
        peer = self._peer
        while peer.paused:
            await asyncio.sleep(0.02)
            self._due = None  # pace from the next frame on
        now = time.monotonic()
        if self._due is None or self._due <= now:
            self._due = now  # late (or the first): send now, never in a burst
        else:
            await asyncio.sleep(self._due - now)
        self._due += 1 / peer.fps
        number = self._number
        self._number += 1
        frame = VideoFrame.from_ndarray(peer.draw(number), format="bgr24")
        frame.pts = round(number * 90_000 / peer.fps)
        frame.time_base = Fraction(1, 90_000)
        peer.sent_ns[number] = time.monotonic_ns()
        return frame
