"""The streams a bench run reads: generated H.264 files (cached), the user's file or stream,
and the same files served by GStreamer's RTSP server on 127.0.0.1.

A generated stream is a short clip of numbered frames (:mod:`framepipe.testing.media`, libx264)
encoded once, then remuxed end to end as often as the run needs (no re-encoding: a minute of
1080p30 takes a few seconds to make). N distinct streams of one file are N hard links to it:
framepipe shares a decoder between pipelines on the same path (a symlink resolves to it), so
each link is a camera of its own for framepipe and for the baseline alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepipe.bench.config import Resolution, SourceMode
from framepipe.testing.media import make_test_video
from framepipe.testing.rtsp import RtspServer, system_python_has_gst_rtsp

BASE_CLIP_S = 5.0


class MediaError(RuntimeError):
    """A stream could not be prepared (message says what to do)."""


@dataclass(frozen=True)
class StreamSet:
    """Where stream ``i`` of a run comes from, and what the streams are."""

    mode: SourceMode
    references: tuple[str, ...]  # one per stream (the same one repeated for a fan-out)
    width: int
    height: int
    fps: float
    label: str  # for people: what was read, and how
    is_file: bool
    # the user's single live URL opened as N cameras: framepipe must not share its decoder
    share_decoders: bool = True

    def reference(self, index: int) -> str:
        return self.references[index % len(self.references)]


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    fps: float
    frames: int | None


def probe(reference: str) -> VideoProbe:
    """Size and frame rate of a file or stream (opened once with OpenCV)."""
    import cv2

    capture = cv2.VideoCapture(reference)
    try:
        if not capture.isOpened():
            raise MediaError(f"cannot open {reference!r} (not a video file or reachable stream)")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    finally:
        capture.release()
    if not width or not height:
        raise MediaError(f"{reference!r}: no video stream found")
    if not 1.0 <= fps <= 240.0:
        fps = 30.0  # a stream that does not say: assume a common camera rate
    return VideoProbe(width, height, fps, frames)


def is_stream_url(reference: str) -> bool:
    return "://" in reference and not reference.startswith("file://")


class MediaLibrary:
    """Generated files in ``cache_dir`` (kept between runs), links per stream in ``work_dir``."""

    def __init__(self, cache_dir: Path, work_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.work_dir = work_dir

    def generated(self, resolution: Resolution, seconds: float) -> Path:
        """A numbered H.264 clip of ``resolution`` at least ``seconds`` long (cached)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        base_frames = round(BASE_CLIP_S * resolution.fps)
        repeats = max(1, math.ceil(seconds / BASE_CLIP_S))
        stem = f"{resolution.width}x{resolution.height}-{resolution.fps:g}fps"
        path = self.cache_dir / f"{stem}-{repeats * BASE_CLIP_S:g}s.mp4"
        cached = self._cached(stem, repeats * BASE_CLIP_S)
        if cached is not None:
            return cached
        base = self.cache_dir / f"{stem}-base.mp4"
        if not base.is_file() or base.stat().st_size == 0:
            scratch = base.with_suffix(".tmp.mp4")
            make_test_video(
                scratch,
                frames=base_frames,
                width=resolution.width,
                height=resolution.height,
                fps=resolution.fps,
                gop=round(resolution.fps),
            )
            scratch.replace(base)
        scratch = path.with_suffix(".tmp.mp4")
        _loop(base, scratch, repeats)
        scratch.replace(path)
        return path

    def _cached(self, stem: str, seconds: float) -> Path | None:
        """The shortest cached clip of this kind that lasts at least ``seconds``."""
        found = []
        for candidate in self.cache_dir.glob(f"{stem}-*s.mp4"):
            length = candidate.stem.removeprefix(f"{stem}-").removesuffix("s")
            try:
                if float(length) >= seconds and candidate.stat().st_size > 0:
                    found.append((float(length), candidate))
            except ValueError:
                continue
        return min(found)[1] if found else None

    def distinct_files(self, source: Path, count: int) -> tuple[str, ...]:
        """``count`` paths to the content of ``source`` that framepipe sees as distinct files
        (hard links; a copy where the file system refuses a link)."""
        folder = self.work_dir / "streams"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(count):
            link = folder / f"{source.stem}-cam{i:03d}{source.suffix}"
            if not link.exists():
                try:
                    os.link(source, link)
                except OSError:
                    shutil.copyfile(source, link)
            paths.append(str(link))
        return tuple(paths)


def _loop(base: Path, out: Path, repeats: int) -> None:
    """``base`` played ``repeats`` times in a row, remuxed (the packets are copied as they are;
    each repeat starts on a key frame, as the generated clips do)."""
    import av

    with av.open(str(out), mode="w") as dst:
        out_stream: Any = None
        step = 0
        for k in range(repeats):
            with av.open(str(base)) as src:
                stream = src.streams.video[0]
                if out_stream is None:
                    out_stream = dst.add_stream_from_template(stream)
                    rate = stream.average_rate or stream.guessed_rate
                    if not stream.frames or not rate or stream.time_base is None:
                        raise MediaError(f"{base}: cannot tell its length to loop it")
                    step = round(stream.frames / rate / stream.time_base)
                for packet in src.demux(stream):
                    if packet.dts is None:
                        continue
                    packet.pts = None if packet.pts is None else packet.pts + k * step
                    packet.dts += k * step
                    packet.stream = out_stream
                    dst.mux(packet)


def rtsp_available() -> bool:
    return system_python_has_gst_rtsp()


@contextlib.contextmanager
def rtsp_cameras(file: Path, count: int, fps: float) -> Iterator[RtspServer]:
    """GStreamer's RTSP server on 127.0.0.1 serving ``file`` on ``count`` mounts (each client
    gets its own playback from the start of the file, at the file's frame rate)."""
    if not rtsp_available():
        raise MediaError(
            "the RTSP source needs Debian's GStreamer RTSP server "
            "(gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-*: `make system-deps`)"
        )
    server = RtspServer(file=file, fps=round(fps), mounts=count, shared=False)
    server.start()
    try:
        yield server
    finally:
        server.kill()
