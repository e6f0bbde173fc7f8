"""What the bytes of a frame slot are: pixel format, colour range, matrix; and a 4:2:0 frame.

A source's frames are stored in its ring in the decoder's native format: YUV 4:2:0 (I420,
or NV12 where a decoder yields that) for PyAV, packed BGR for OpenCV (webcams) and for
WebRTC tracks. :class:`FrameLayout` says which, with the colour range (limited or full:
``yuvj420p`` cameras are full) and the matrix (BT.601 or BT.709); the ring's header holds
it, so whoever reads a slot converts it right.

A 4:2:0 slot is one flat byte array: the Y plane (``height x width``), then the chroma:
I420's U and V planes (``ceil(h/2) x ceil(w/2)`` each) or NV12's interleaved UV plane
(``ceil(h/2)`` rows of ``2 x ceil(w/2)`` bytes). Odd sizes round the chroma up, as FFmpeg
does. :class:`YuvFrame` wraps such a slot view: it reads like a ``(height, width, 3)`` image
where only the size is asked (``shape``), goes straight to the fused preprocess for a model,
and becomes BGR only where someone asks (:func:`as_bgr`), at most once per frame object.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ColourMatrix",
    "ColourRange",
    "FrameImage",
    "FrameLayout",
    "PixelFormat",
    "YuvFrame",
    "as_bgr",
    "frame_size",
    "wrap_slot",
]


class PixelFormat(IntEnum):
    """How a slot's pixels are laid out (stored in the ring header as this number)."""

    BGR24 = 0  # HxWx3 packed B, G, R
    I420 = 1  # Y plane, U plane, V plane (FFmpeg yuv420p / yuvj420p)
    NV12 = 2  # Y plane, interleaved UV plane


class ColourRange(IntEnum):
    LIMITED = 0  # Y in 16..235, chroma in 16..240 ("tv", MPEG)
    FULL = 1  # 0..255 ("pc", JPEG: yuvj420p)


class ColourMatrix(IntEnum):
    BT601 = 0
    BT709 = 1


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """The format of every frame of one ring."""

    pixel_format: PixelFormat
    width: int
    height: int
    colour_range: ColourRange = ColourRange.LIMITED
    matrix: ColourMatrix = ColourMatrix.BT601

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"a frame needs a positive size, got {self.width}x{self.height}")

    @classmethod
    def bgr(cls, width: int, height: int) -> FrameLayout:
        return cls(PixelFormat.BGR24, width, height)

    @property
    def is_yuv(self) -> bool:
        return self.pixel_format is not PixelFormat.BGR24

    @property
    def chroma_width(self) -> int:
        return (self.width + 1) // 2

    @property
    def chroma_height(self) -> int:
        return (self.height + 1) // 2

    @property
    def nbytes(self) -> int:
        """Bytes of one frame: 3 a pixel for BGR, about 1.5 for 4:2:0."""
        if not self.is_yuv:
            return self.width * self.height * 3
        return self.width * self.height + 2 * self.chroma_width * self.chroma_height

    @property
    def slot_shape(self) -> tuple[int, ...]:
        """The shape of a slot's array: (h, w, 3) for BGR, a flat byte array for 4:2:0."""
        if not self.is_yuv:
            return (self.height, self.width, 3)
        return (self.nbytes,)

    def planes(self, data: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
        """2-D views of the planes of a 4:2:0 slot: [Y, U, V] (I420) or [Y, UV] (NV12)."""
        if not self.is_yuv:
            raise ValueError(f"a {self.pixel_format.name} frame has no separate planes")
        w, h, cw, ch = self.width, self.height, self.chroma_width, self.chroma_height
        y_end = w * h
        planes = [data[:y_end].reshape(h, w)]
        if self.pixel_format is PixelFormat.I420:
            planes.append(data[y_end : y_end + cw * ch].reshape(ch, cw))
            planes.append(data[y_end + cw * ch : y_end + 2 * cw * ch].reshape(ch, cw))
        else:
            planes.append(data[y_end : y_end + 2 * cw * ch].reshape(ch, 2 * cw))
        return planes


class YuvFrame:
    """A 4:2:0 frame read in place (a slot view) with its layout; BGR made on demand.

    ``shape`` is ``(height, width, 3)``, the shape of the image it stands for, so code that
    only asks for the size reads it like a BGR array. :meth:`to_bgr` converts once and keeps
    the result for this object (one consumer's frame), so several outputs of one frame share
    one conversion. Valid while the slot is leased, like the view it wraps.
    """

    __slots__ = ("_bgr", "data", "layout")

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, data: npt.NDArray[np.uint8], layout: FrameLayout) -> None:
        if not layout.is_yuv:
            raise ValueError("YuvFrame holds a 4:2:0 frame; a BGR frame is a plain array")
        if data.ndim != 1 or data.dtype != np.uint8 or data.shape[0] != layout.nbytes:
            raise ValueError(
                f"a {layout.width}x{layout.height} {layout.pixel_format.name} frame is "
                f"{layout.nbytes} uint8 bytes, got {data.dtype} {data.shape}"
            )
        if not data.flags.c_contiguous:
            raise ValueError("a 4:2:0 frame must be one contiguous byte array")
        self.data = data
        self.layout = layout
        self._bgr: npt.NDArray[np.uint8] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.layout.height, self.layout.width, 3)

    def to_bgr(self, out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """The frame as HxWx3 BGR (the layout's range and matrix honoured); converted once,
        then the same array is returned (unless ``out`` is given: written there)."""
        if out is None and self._bgr is not None:
            return self._bgr
        from framepipe.ext._preprocess import yuv420_to_bgr

        layout = self.layout
        target = np.empty(self.shape, np.uint8) if out is None else out
        yuv420_to_bgr(
            self.data,
            layout.width,
            layout.height,
            target,
            nv12=layout.pixel_format is PixelFormat.NV12,
            full_range=layout.colour_range is ColourRange.FULL,
            bt709=layout.matrix is ColourMatrix.BT709,
        )
        if out is None:
            self._bgr = target
        return target

    def copy(self) -> YuvFrame:
        """A frame that owns its bytes (outlives the slot's lease)."""
        return YuvFrame(self.data.copy(), self.layout)

    def __repr__(self) -> str:
        layout = self.layout
        return (
            f"<YuvFrame {layout.width}x{layout.height} {layout.pixel_format.name} "
            f"{layout.colour_range.name} {layout.matrix.name}>"
        )


#: What a pipeline hands around as a frame: a BGR array, or a 4:2:0 frame in its slot.
FrameImage = npt.NDArray[np.uint8] | YuvFrame


def as_bgr(frame: FrameImage) -> npt.NDArray[np.uint8]:
    """The frame as a BGR HxWx3 array: itself when it is one, else converted (once)."""
    if isinstance(frame, YuvFrame):
        return frame.to_bgr()
    return frame


def frame_size(frame: FrameImage) -> tuple[int, int]:
    """(height, width) of a frame of either kind."""
    return int(frame.shape[0]), int(frame.shape[1])


def wrap_slot(array: npt.NDArray[Any], layout: FrameLayout | None) -> FrameImage:
    """What a slot view is to its reader: a :class:`YuvFrame` for a 4:2:0 ring, the array
    itself otherwise."""
    if layout is not None and layout.is_yuv:
        return YuvFrame(array, layout)
    return array
