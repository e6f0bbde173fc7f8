"""Frames between aiortc and the data plane: the peer's frames into ring slots, annotated frames
onto the return track.

:func:`write_into_slot` converts a received ``av.VideoFrame`` straight into a ring slot: the
planes of a YUV 4:2:0 frame (what the VP8 and H.264 decoders give) are read as one small array
and ``cv2.cvtColor`` writes the BGR pixels into the slot (one conversion, no intermediate BGR
image); a frame of another size than the ring's is scaled by libswscale first.

:class:`ReturnTrack` is the video track sent back to the peer. It holds one frame: the freshest
annotated one. aiortc's sender takes it when it is ready to encode; an annotated frame that
arrives before the previous one was taken replaces it (counted), so the returned video never
builds a backlog — it shows the newest result the pipeline has, or waits for one.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from framepipe.server.webrtc.outputs import VIDEO_CLOCK_RATE

__all__ = ["ReturnTrack", "to_video_frame", "write_into_slot"]

Frame = npt.NDArray[np.uint8]
_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)


def write_into_slot(frame: VideoFrame, slot: Frame) -> bool:
    """Convert ``frame`` into ``slot`` (BGR, the ring's size). Returns True when it took an
    extra pass (scaling, or a pixel format without a direct conversion)."""
    height, width = slot.shape[:2]
    extra = False
    if frame.width != width or frame.height != height:
        frame = frame.reformat(width=width, height=height, format="yuv420p")
        extra = True
    if frame.format.name in ("yuv420p", "yuvj420p") and width % 2 == 0 and height % 2 == 0:
        # One small copy of the planes (1.5 bytes per pixel), then BGR straight into the slot.
        cv2.cvtColor(frame.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2BGR_I420, dst=slot)
        return extra
    np.copyto(slot, frame.to_ndarray(format="bgr24"))
    return True


def to_video_frame(image: Frame, pts: int) -> VideoFrame:
    """A BGR image as a YUV 4:2:0 frame at ``pts`` (90 kHz), ready for the encoder (converted
    here, on the caller's thread, rather than by the encoder)."""
    height, width = image.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        yuv = cast(Frame, cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420))
        frame = VideoFrame.from_ndarray(yuv, format="yuv420p")
    else:
        frame = VideoFrame.from_ndarray(image, format="bgr24")
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


class ReturnTrack(MediaStreamTrack):
    """The video track sent back to the peer: a one-frame mailbox, freshest frame wins.

    :meth:`offer` and :meth:`recv` run on the connection's event loop.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._latest: VideoFrame | None = None
        self._ready = asyncio.Event()
        self._last_pts = -1
        self.offered = 0
        self.sent = 0
        self.replaced = 0  # annotated frames a newer one replaced before the encoder took them

    def offer(self, frame: VideoFrame) -> None:
        if self.readyState != "live":
            return
        if frame.pts is not None and frame.pts <= self._last_pts:
            frame.pts = self._last_pts + 1  # the encoder needs increasing timestamps
        self._last_pts = int(frame.pts) if frame.pts is not None else self._last_pts
        self.offered += 1
        if self._latest is not None:
            self.replaced += 1
        self._latest = frame
        self._ready.set()

    async def recv(self) -> Any:
        while self._latest is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, self._latest = self._latest, None
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # a waiting recv() sees the end
