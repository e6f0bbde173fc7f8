"""Decode backends behind one small interface: OpenCV (``cv2.VideoCapture``) and PyAV.

A backend opens a source, ``grab()``s the next frame (this is where decoding happens) and
``retrieve(out)``s it straight into ``out`` — a numpy view on a ring slot — so a frame is
written once, by the decoder, where its consumers will read it. Frames that are never
delivered (max_fps, muted) are grabbed but not retrieved, which skips the copy.

What a slot holds is the backend's :attr:`layout` (known once it is open): PyAV stores the
decoder's native YUV 4:2:0 (I420 / NV12: the planes copied once into the slot, 1.5 bytes a
pixel, no BGR made), with the stream's colour range and matrix; a stream decoded to another
format (4:2:2, 4:4:4, 10-bit, grey) is converted to 4:2:0 once, here, and an RGB one is
stored as BGR. OpenCV (webcams) stores BGR.

Every open and every read has a timeout (a frozen RTSP server would otherwise block a
reader forever); RTSP goes over TCP.

Runs inside a decode process; heavy modules (cv2, av) are imported when a backend is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from framepipe.core.pixels import ColourMatrix, ColourRange, FrameLayout, PixelFormat
from framepipe.core.sources.entities import DecoderBackendName, SourceKind, StreamInfo

Image = npt.NDArray[np.uint8]


class SourceOpenError(Exception):
    """The source could not be opened (message says why, credentials masked)."""


#: Called with (width, height) when a grabbed frame is not the size of the ring's slots (the
#: stream changed size mid-stream), before it is converted; raises to refuse that size.
SizeCheck = Callable[[int, int], None]


@dataclass(frozen=True)
class BackendOptions:
    """How to open a source: timeouts and the user's ``video_source_properties``."""

    open_timeout_s: float = 5.0
    read_timeout_s: float = 3.0
    analyze_duration_us: int = 300_000
    # Decoder threads, 0 = let the codec choose (one per core + 1, each holding frames of its
    # own). One: a decode process decodes one stream, and one thread keeps up with 720p30 many
    # times over at about the same CPU per frame, with ~4-7 MB less each (perf/RESULTS.md).
    threads: int = 1
    properties: dict[str, Any] = field(default_factory=dict)
    # FFmpeg input options that confine what opening the source may touch (its protocols and,
    # for a file, its demuxers): ParsedReference.ffmpeg_options().
    input_options: dict[str, str] = field(default_factory=dict)


class DecodeBackend(Protocol):
    name: DecoderBackendName
    size_check: SizeCheck | None

    def open(self) -> StreamInfo:
        """Open the source; the returned info's ``layout`` says what ``retrieve`` writes."""
        ...

    def grab(self) -> bool:
        """Decode the next frame; False at the end of the stream or on a read failure."""
        ...

    def retrieve(self, out: Image) -> None:
        """Write the last grabbed frame into ``out``: a slot of the layout ``open`` gave."""
        ...

    def check(self) -> None:
        """The last grabbed frame, for a frame nobody reads the pixels of: raise what
        ``retrieve`` would raise for it (a size the ring's cap refuses), writing nothing."""
        ...

    def pts_s(self) -> float | None:
        """Presentation time (seconds) of the last grabbed frame."""
        ...

    def use_layout(self, layout: FrameLayout) -> None:
        """Write into slots of ``layout`` from now on: the ring was made for an earlier
        opening of the stream (a reconnect, a replacement decoder) whose frames may have had
        another size or format."""
        ...

    def close(self) -> None: ...


# video_source_properties keys (the reference's names) → OpenCV capture properties.
_CV_PROPERTIES = {
    "frame_width": "CAP_PROP_FRAME_WIDTH",
    "frame_height": "CAP_PROP_FRAME_HEIGHT",
    "fps": "CAP_PROP_FPS",
    "buffer_size": "CAP_PROP_BUFFERSIZE",
    "fourcc": "CAP_PROP_FOURCC",
    "auto_exposure": "CAP_PROP_AUTO_EXPOSURE",
    "exposure": "CAP_PROP_EXPOSURE",
    "brightness": "CAP_PROP_BRIGHTNESS",
    "contrast": "CAP_PROP_CONTRAST",
    "saturation": "CAP_PROP_SATURATION",
    "gain": "CAP_PROP_GAIN",
    "autofocus": "CAP_PROP_AUTOFOCUS",
    "focus": "CAP_PROP_FOCUS",
}


class OpenCVBackend:
    """``cv2.VideoCapture`` with the FFmpeg backend; ``retrieve(image=slot)`` decodes in place."""

    name = DecoderBackendName.OPENCV

    def __init__(self, target: str | int, kind: SourceKind, options: BackendOptions) -> None:
        self._target = target
        self._kind = kind
        self._options = options
        self._cap: Any = None
        self._shape: tuple[int, int, int] = (0, 0, 3)
        self.copies = 0
        self.size_check: SizeCheck | None = None

    def open(self) -> StreamInfo:
        import cv2

        opts = self._options
        # This process is the decode process alone: keep FFmpeg's and OpenCV's per-attempt
        # chatter ("connection refused" on every reconnect try) off stderr; the reason of a
        # failure is reported in the source's state instead.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        # Read by FFmpeg when the capture opens; this process is the decode process alone.
        capture_options = dict(opts.input_options)
        if isinstance(self._target, str) and self._target.lower().startswith("rtsp"):
            capture_options.update(
                rtsp_transport="tcp",
                timeout=str(int(opts.read_timeout_s * 1e6)),
                analyzeduration=str(opts.analyze_duration_us),
            )
        if capture_options:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(
                f"{key};{value}" for key, value in capture_options.items()
            )
        else:
            os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(opts.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(opts.read_timeout_s * 1000),
        ]
        if opts.threads:
            params += [cv2.CAP_PROP_N_THREADS, opts.threads]
        if self._kind is SourceKind.WEBCAM:
            cap = cv2.VideoCapture(self._target)
        else:
            cap = cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError("the decoder could not open it")
        for key, value in opts.properties.items():
            prop = _CV_PROPERTIES.get(str(key).lower())
            if prop is not None:
                if prop == "CAP_PROP_FOURCC" and isinstance(value, str):
                    value = cv2.VideoWriter.fourcc(*value[:4])
                cap.set(getattr(cv2, prop), float(value))
        self._cap = cap
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            raise SourceOpenError("the stream reports no frame size")
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or None
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._shape = (height, width, 3)
        codec = int(cap.get(cv2.CAP_PROP_FOURCC))
        fourcc = "".join(chr((codec >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ")
        return StreamInfo(
            width=width,
            height=height,
            fps=fps if fps and fps < 1000 else None,
            total_frames=total if total > 0 and self._kind is SourceKind.FILE else None,
            codec=fourcc,
            layout=FrameLayout.bgr(width, height),
        )

    def grab(self) -> bool:
        return bool(self._cap.grab())

    def retrieve(self, out: Image) -> None:
        ok, image = self._cap.retrieve(image=out)
        if not ok or image is None:
            raise SourceOpenError("the decoder returned no image for a grabbed frame")
        if image is not out and image.ctypes.data != out.ctypes.data:
            # OpenCV allocated its own array (size changed mid-stream): copy, and count it.
            self.copies += 1
            if image.shape != out.shape:
                import cv2

                if self.size_check is not None:
                    self.size_check(image.shape[1], image.shape[0])

                cv2.resize(image, (out.shape[1], out.shape[0]), dst=out)
            else:
                np.copyto(out, image)

    def check(self) -> None:
        # OpenCV gives a frame's size only by converting it: no cheaper than retrieve.
        ok, image = self._cap.retrieve()
        if not ok or image is None:
            raise SourceOpenError("the decoder returned no image for a grabbed frame")
        if self.size_check is not None and image.shape != self._shape:
            self.size_check(image.shape[1], image.shape[0])

    def pts_s(self) -> float | None:
        import cv2

        msec = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        return msec / 1000.0 if msec >= 0 else None

    def use_layout(self, layout: FrameLayout) -> None:
        if layout.is_yuv:
            raise SourceOpenError(
                f"the OpenCV decoder writes BGR frames; this ring holds {layout.pixel_format.name}"
            )
        # a BGR slot of another size: retrieve() scales into it
        self._shape = (layout.height, layout.width, 3)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


#: Decoder pixel formats stored as they come (FFmpeg's name → the slot's format).
_NATIVE_420 = {"yuv420p": PixelFormat.I420, "yuvj420p": PixelFormat.I420, "nv12": PixelFormat.NV12}
#: AVColorSpace values of BT.709; everything else (BT.601 tags, unspecified) converts as
#: BT.601, as FFmpeg's swscale does for an untagged frame.
_AVCOL_SPC_BT709 = 1
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True, slots=True)
class FrameConversion:
    """How a decoded frame of one pixel format becomes a slot: stored as it is
    (``convert_to`` None) or converted once to ``convert_to`` (an FFmpeg format name)."""

    layout: FrameLayout
    source_format: str
    convert_to: str | None


def plan_conversion(frame: Any) -> FrameConversion:
    """The slot layout of a decoded PyAV frame's stream, from its pixel format and colour
    tags; SourceOpenError naming the format when it cannot be stored or converted."""
    name = str(frame.format.name)
    width, height = int(frame.width), int(frame.height)
    full = name.startswith("yuvj") or int(frame.color_range) == _AVCOL_RANGE_JPEG
    colour_range = ColourRange.FULL if full else ColourRange.LIMITED
    matrix = ColourMatrix.BT709 if int(frame.colorspace) == _AVCOL_SPC_BT709 else ColourMatrix.BT601
    if height % 2 or width % 2:
        # FFmpeg interpolates the chroma of an odd-size 4:2:0 frame when it converts it
        # (rare: H.264 and HEVC 4:2:0 are even-sized); BGR made once here keeps every
        # reader's pixels equal to FFmpeg's.
        return FrameConversion(FrameLayout.bgr(width, height), name, "bgr24")
    native = _NATIVE_420.get(name)
    if native is not None:
        return FrameConversion(FrameLayout(native, width, height, colour_range, matrix), name, None)
    fmt = frame.format
    if getattr(fmt, "is_bit_stream", False) or getattr(fmt, "is_hwaccel", False):
        raise SourceOpenError(
            f"the decoder yields frames in pixel format {name!r}, which framepipe cannot "
            "store or convert (a hardware or bitstream format)"
        )
    if getattr(fmt, "is_rgb", False):
        # RGB-family sources (PNG, rawvideo rgb24, ...): BGR keeps every sample.
        return FrameConversion(FrameLayout.bgr(width, height), name, "bgr24")
    # 4:2:2, 4:4:4, 4:1:1, 10/12-bit, grey, ...: converted once to 4:2:0, range and matrix kept.
    return FrameConversion(
        FrameLayout(PixelFormat.I420, width, height, colour_range, matrix), name, "yuv420p"
    )


def copy_planes(frame: Any, layout: FrameLayout, out: Image) -> None:
    """Copy a decoded 4:2:0 frame's planes into a slot of ``layout`` (one copy per plane,
    each row without the decoder's line padding)."""
    for plane, dst in zip(frame.planes, layout.planes(out), strict=True):
        rows, cols = dst.shape
        stride = int(plane.line_size)
        src = np.frombuffer(plane, np.uint8, count=stride * (rows - 1) + cols)
        np.copyto(dst, np.lib.stride_tricks.as_strided(src, (rows, cols), (stride, 1)))


def _slot_format(layout: FrameLayout) -> str:
    """The FFmpeg pixel format of a slot of ``layout``."""
    if layout.pixel_format is PixelFormat.NV12:
        return "nv12"
    return "yuv420p" if layout.is_yuv else "bgr24"


class PyAVBackend:
    """PyAV (FFmpeg) with threaded decoding; frames stored in their native 4:2:0.

    ``open`` decodes the first frame to learn its pixel format, colour range and matrix
    (the layout of the ring); ``grab`` then returns that frame first. A later frame whose
    size or format differs from the layout (a stream that changed mid-way) is scaled or
    converted to it, and counted in ``copies``."""

    name = DecoderBackendName.PYAV

    def __init__(self, target: str | int, kind: SourceKind, options: BackendOptions) -> None:
        self._target = target
        self._kind = kind
        self._options = options
        self._container: Any = None
        self._frames: Any = None
        self._frame: Any = None
        self._first: Any = None
        self._time_base: float | None = None
        self._conversion: FrameConversion | None = None
        self.copies = 0
        self.size_check: SizeCheck | None = None

    @property
    def layout(self) -> FrameLayout | None:
        return None if self._conversion is None else self._conversion.layout

    def open(self) -> StreamInfo:
        import av

        opts = self._options
        av_options: dict[str, str] = {"analyzeduration": str(opts.analyze_duration_us)}
        fmt: str | None = None
        target: str
        if self._kind is SourceKind.WEBCAM:
            fmt = "v4l2"
            target = (
                f"/dev/video{self._target}" if isinstance(self._target, int) else str(self._target)
            )
            props = opts.properties
            if "frame_width" in props and "frame_height" in props:
                av_options["video_size"] = (
                    f"{int(props['frame_width'])}x{int(props['frame_height'])}"
                )
            if "fps" in props:
                av_options["framerate"] = str(props["fps"])
            if "fourcc" in props:
                av_options["input_format"] = str(props["fourcc"]).lower()
        else:
            target = str(self._target)
            av_options.update(opts.input_options)
            if target.lower().startswith("rtsp"):
                av_options["rtsp_transport"] = "tcp"
                av_options["timeout"] = str(int(opts.read_timeout_s * 1e6))
        try:
            container = av.open(
                target,
                format=fmt,
                options=av_options,
                timeout=(opts.open_timeout_s, opts.read_timeout_s),
            )
        except (av.error.FFmpegError, TimeoutError, OSError) as exc:
            raise SourceOpenError(
                f"the decoder could not open it ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            return self._start(container)
        except BaseException:
            self._container = self._frames = self._first = None
            container.close()
            raise

    def _start(self, container: Any) -> StreamInfo:
        import av

        if not container.streams.video:
            raise SourceOpenError("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self._options.threads:
            stream.codec_context.thread_count = self._options.threads
        self._container = container
        self._time_base = float(stream.time_base) if stream.time_base else None
        self._frames = container.decode(stream)
        try:
            self._first = next(self._frames)
        except (StopIteration, av.error.FFmpegError, TimeoutError, OSError) as exc:
            why = "it ended" if isinstance(exc, StopIteration) else f"{type(exc).__name__}: {exc}"
            raise SourceOpenError(f"no frame could be decoded ({why})") from None
        self._conversion = plan_conversion(self._first)
        layout = self._conversion.layout
        rate = stream.average_rate or stream.guessed_rate
        total = int(stream.frames) if stream.frames else None
        return StreamInfo(
            width=layout.width,
            height=layout.height,
            fps=float(rate) if rate else None,
            total_frames=total if self._kind is SourceKind.FILE else None,
            codec=str(stream.codec_context.name),
            layout=layout,
        )

    def grab(self) -> bool:
        import av

        if self._first is not None:
            self._frame, self._first = self._first, None
            return True
        try:
            self._frame = next(self._frames)
        except (StopIteration, av.error.FFmpegError, TimeoutError, OSError):
            self._frame = None
            return False
        return True

    def retrieve(self, out: Image) -> None:
        frame, conversion = self._checked()
        layout = conversion.layout
        if (
            frame.width != layout.width
            or frame.height != layout.height
            or frame.format.name != conversion.source_format
        ):
            # The stream changed mid-way: to the ring's size and format, through a temporary.
            self.copies += 1
            frame = frame.reformat(
                width=layout.width, height=layout.height, format=_slot_format(layout)
            )
        elif conversion.convert_to is not None and layout.is_yuv:
            frame = frame.reformat(format=conversion.convert_to)
        if layout.is_yuv:
            copy_planes(frame, layout, out)
        else:
            np.copyto(out, frame.to_ndarray(format="bgr24"))

    def check(self) -> None:
        self._checked()

    def _checked(self) -> tuple[Any, FrameConversion]:
        """The grabbed frame and the conversion to the ring's layout, once its size passed
        ``size_check`` (a frame of another size than the ring's is scaled to it, within the
        cap)."""
        frame = self._frame
        conversion = self._conversion
        if frame is None or conversion is None:
            raise SourceOpenError("no grabbed frame to retrieve")
        layout = conversion.layout
        if self.size_check is not None and (
            frame.width != layout.width or frame.height != layout.height
        ):
            self.size_check(frame.width, frame.height)
        return frame, conversion

    def use_layout(self, layout: FrameLayout) -> None:
        conversion = self._conversion
        if conversion is None or conversion.layout == layout:
            return
        # Every frame is scaled / converted to the ring's layout (source_format matches none).
        self._conversion = FrameConversion(layout, "", None)

    def pts_s(self) -> float | None:
        frame = self._frame
        if frame is None or frame.pts is None or self._time_base is None:
            return None
        return float(frame.pts) * self._time_base

    def close(self) -> None:
        container, self._container = self._container, None
        self._frames = None
        self._frame = None
        self._first = None
        if container is not None:
            container.close()


def make_backend(
    name: DecoderBackendName, target: str | int, kind: SourceKind, options: BackendOptions
) -> DecodeBackend:
    if name is DecoderBackendName.PYAV:
        return PyAVBackend(target, kind, options)
    return OpenCVBackend(target, kind, options)


def default_backend(kind: SourceKind) -> DecoderBackendName:
    """PyAV (frames stored in native 4:2:0, see perf/bench_decode.py) for files and streams;
    OpenCV for webcams, which it opens on every platform."""
    return DecoderBackendName.OPENCV if kind is SourceKind.WEBCAM else DecoderBackendName.PYAV
