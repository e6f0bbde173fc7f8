"""Decode backends behind one small interface: OpenCV (``cv2.VideoCapture``) and PyAV.

A backend opens a source, ``grab()``s the next frame (this is where decoding happens) and
``retrieve(out)``s it as BGR straight into ``out`` — a numpy view on a ring slot — so a
frame is written once, by the decoder, where its consumers will read it. Frames that are
never delivered (max_fps, muted) are grabbed but not retrieved, which skips the colour
conversion.

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
    threads: int = 0  # decoder threads, 0 = let the codec choose
    properties: dict[str, Any] = field(default_factory=dict)
    # FFmpeg input options that confine what opening the source may touch (its protocols and,
    # for a file, its demuxers): ParsedReference.ffmpeg_options().
    input_options: dict[str, str] = field(default_factory=dict)


class DecodeBackend(Protocol):
    name: DecoderBackendName
    size_check: SizeCheck | None

    def open(self) -> StreamInfo: ...

    def grab(self) -> bool:
        """Decode the next frame; False at the end of the stream or on a read failure."""
        ...

    def retrieve(self, out: Image) -> None:
        """Write the last grabbed frame into ``out`` (HxWx3 BGR uint8, the stream's size)."""
        ...

    def pts_s(self) -> float | None:
        """Presentation time (seconds) of the last grabbed frame."""
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

    def pts_s(self) -> float | None:
        import cv2

        msec = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        return msec / 1000.0 if msec >= 0 else None

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class PyAVBackend:
    """PyAV (FFmpeg) with threaded decoding; YUV → BGR by ``cv2.cvtColor(dst=slot)``."""

    name = DecoderBackendName.PYAV

    def __init__(self, target: str | int, kind: SourceKind, options: BackendOptions) -> None:
        self._target = target
        self._kind = kind
        self._options = options
        self._container: Any = None
        self._frames: Any = None
        self._frame: Any = None
        self._time_base: float | None = None
        self.copies = 0
        self.size_check: SizeCheck | None = None

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
        if not container.streams.video:
            container.close()
            raise SourceOpenError("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if opts.threads:
            stream.codec_context.thread_count = opts.threads
        self._container = container
        self._time_base = float(stream.time_base) if stream.time_base else None
        self._frames = container.decode(stream)
        rate = stream.average_rate or stream.guessed_rate
        total = int(stream.frames) if stream.frames else None
        return StreamInfo(
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            fps=float(rate) if rate else None,
            total_frames=total if self._kind is SourceKind.FILE else None,
            codec=str(stream.codec_context.name),
        )

    def grab(self) -> bool:
        import av

        try:
            self._frame = next(self._frames)
        except (StopIteration, av.error.FFmpegError, TimeoutError, OSError):
            self._frame = None
            return False
        return True

    def retrieve(self, out: Image) -> None:
        import cv2

        frame = self._frame
        if frame is None:
            raise SourceOpenError("no grabbed frame to retrieve")
        if frame.width != out.shape[1] or frame.height != out.shape[0]:
            if self.size_check is not None:
                self.size_check(frame.width, frame.height)
            self.copies += 1
            image = frame.to_ndarray(format="bgr24", width=out.shape[1], height=out.shape[0])
            np.copyto(out, image)
            return
        if frame.format.name == "yuv420p":
            # One small copy of the planes (1.5 bytes per pixel), then the conversion
            # writes BGR straight into the slot.
            yuv = frame.to_ndarray(format="yuv420p")
            cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420, dst=out)
        else:
            self.copies += 1
            np.copyto(out, frame.to_ndarray(format="bgr24"))

    def pts_s(self) -> float | None:
        frame = self._frame
        if frame is None or frame.pts is None or self._time_base is None:
            return None
        return float(frame.pts) * self._time_base

    def close(self) -> None:
        container, self._container = self._container, None
        self._frames = None
        self._frame = None
        if container is not None:
            container.close()


def make_backend(
    name: DecoderBackendName, target: str | int, kind: SourceKind, options: BackendOptions
) -> DecodeBackend:
    if name is DecoderBackendName.PYAV:
        return PyAVBackend(target, kind, options)
    return OpenCVBackend(target, kind, options)


#: Chosen by perf/bench_decode.py on the development machine (see perf/RESULTS.md).
DEFAULT_BACKEND = DecoderBackendName.OPENCV
