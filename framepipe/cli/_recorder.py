"""An annotated H.264 recording of the frames as they pass through a pipeline.

:meth:`AnnotatedRecorder.offer` is a pipeline's ``on_frame``: it is shown each frame in place,
with its output, right after the output was composed. It draws the output on a copy
(:func:`~framepipe.core.processing.annotate`) — the frame itself goes back to its ring — and
queues the copy for a writer thread that encodes it (PyAV, libx264) into an MP4. The queue is
bounded: when the writer falls behind, ``offer`` waits for room at most ``max_wait_s`` and then
drops the frame and counts it, so the pipeline is slowed (a file: every frame recorded when the
encoder keeps up) but never held forever. Frames are stamped with their place on the video's
timeline (a file's presentation time, a live source's capture time), so a recording of a
subsampled or irregular stream plays at the right pace.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.core.processing import annotate

log = logging.getLogger(__name__)

__all__ = ["AnnotatedRecorder", "RecordingStatistics"]

_DEFAULT_FPS = 30.0
_JOIN_S = 30.0


@dataclass(frozen=True)
class RecordingStatistics:
    path: str
    frames_written: int
    frames_dropped: int  # the writer was behind for longer than max_wait_s, or had failed
    error: str | None  # why the writer stopped early (None: it did not)


@dataclass(frozen=True)
class _Item:
    image: npt.NDArray[np.uint8]
    seconds: float  # place on the timeline
    fps: float | None


class AnnotatedRecorder:
    """Writes the frames it is offered, with their outputs drawn, to ``path`` (H.264 MP4).

    The file is created with the first frame (which gives the video its size): a run that
    records nothing leaves no file. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self, path: str | Path, *, queue_size: int = 32, max_wait_s: float = 1.0, crf: int = 23
    ) -> None:
        self.path = str(path)
        self._max_wait_s = max_wait_s
        self._crf = crf
        self._container: Any = None
        self._stream: Any = None
        self._rate = Fraction(30)
        self._lock = threading.Lock()  # the counts: offer() and the writer both drop
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._written = 0
        self._dropped = 0
        self._error: str | None = None
        self._origin: float | None = None
        self._last_pts = -1
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="framepipe-recorder", daemon=True)
        self._thread.start()

    # -- the pipeline's side ------------------------------------------------------------------

    def offer(self, frame: npt.NDArray[np.uint8], output: Any, metadata: Any) -> None:
        """A pipeline's ``on_frame``: draw ``output`` on a copy of ``frame`` and queue it."""
        if self._error is not None or self._closed:
            self._drop()
            return
        image = annotate(frame, output)
        from_file = bool(getattr(metadata, "comes_from_video_file", False))
        pts = getattr(metadata, "pts", None)
        capture_ns = getattr(metadata, "capture_ns", 0)
        seconds = float(pts) if from_file and pts is not None else capture_ns / 1e9
        try:
            self._queue.put(
                _Item(image, seconds, getattr(metadata, "fps", None)), timeout=self._max_wait_s
            )
        except queue.Full:
            self._drop()

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1

    # -- the writer thread --------------------------------------------------------------------

    def _write(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                self._encode(item)
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        except Exception as exc:  # reported by close(); offer() drops from now on
            log.debug("recording to %s failed", self.path, exc_info=True)
            self._error = f"{type(exc).__name__}: {exc}"
            self._drain()
        finally:
            try:
                if self._container is not None:
                    self._container.close()
            except Exception as exc:
                self._error = self._error or f"{type(exc).__name__}: {exc}"

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._drop()

    def _encode(self, item: _Item) -> None:
        import av

        image = item.image
        height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2  # yuv420p: even
        if self._stream is None:
            self._container = av.open(self.path, mode="w")
            fps = item.fps if item.fps and item.fps > 0 else _DEFAULT_FPS
            rate = Fraction(fps).limit_denominator(1001)
            stream = self._container.add_stream("libx264", rate=rate)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": "veryfast", "crf": str(self._crf)}
            self._stream = stream
            self._rate = rate
            self._origin = item.seconds
        assert self._origin is not None
        pts = round((item.seconds - self._origin) * self._rate)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the clock did
        self._last_pts = pts
        if image.shape[0] != height or image.shape[1] != width:
            image = np.ascontiguousarray(image[:height, :width])
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = pts
        frame.time_base = 1 / self._rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._written += 1

    # -- the end ------------------------------------------------------------------------------

    def close(self) -> RecordingStatistics:
        """Encode what is queued, finish the file (idempotent); the recording's figures."""
        if not self._closed:
            self._closed = True
            deadline = time.monotonic() + _JOIN_S
            while self._thread.is_alive() and time.monotonic() < deadline:
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                self._error = self._error or f"the encoder did not finish within {_JOIN_S:g} s"
        return self.statistics()

    def statistics(self) -> RecordingStatistics:
        with self._lock:
            dropped = self._dropped
        return RecordingStatistics(self.path, self._written, dropped, self._error)

    def __enter__(self) -> AnnotatedRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
