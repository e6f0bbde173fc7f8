"""A video frame goes to the decoder when its last packet arrives, not one frame later.

aiortc's jitter buffer knows a frame is complete only when a packet of the *next* frame arrives,
so every received video frame waits one frame interval before it is decoded: 33 ms at 30 fps on
the way in, and one interval of the returned stream on the way out to an aiortc peer. The
sender marks the last packet of each frame (the RTP marker bit, RFC 3550 / RFC 7741 for VP8,
RFC 6184 for H.264); :class:`FrameEndJitterBuffer` hands the frame over as soon as that packet
has arrived and every packet before it since the frame's first is there. Anything else (a
missing packet, reordering) is left to aiortc's own logic.

:func:`use_frame_end_jitter_buffer` installs it for the receivers this process creates
afterwards (aiortc builds each receiver's buffer from the name in its module; there is no
option to pass one).
"""

from __future__ import annotations

from typing import Any

from aiortc import rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

__all__ = ["FrameEndJitterBuffer", "use_frame_end_jitter_buffer"]


class FrameEndJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, plus: a video frame is complete at its marked last packet."""

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if frame is None and self._is_video and packet.marker:
            frame = self._complete_at_marker()
        return pli_flag, frame

    def _complete_at_marker(self) -> JitterFrame | None:
        """The frame at the head of the buffer, if its packets are all there up to one that
        carries the marker bit; it is removed from the buffer."""
        if self._origin is None:
            return None
        packets: list[Any] = []  # RtpPackets, each with the payload aiortc depayloaded (_data)
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None:
                return None  # a gap: wait (aiortc's logic handles what follows)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                return None  # aiortc would have completed the frame before this one
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        return None


def use_frame_end_jitter_buffer() -> None:
    """Receivers created from now on in this process use :class:`FrameEndJitterBuffer`."""
    rtcrtpreceiver.JitterBuffer = FrameEndJitterBuffer  # type: ignore[attr-defined]
