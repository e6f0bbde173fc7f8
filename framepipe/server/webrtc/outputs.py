"""What a WebRTC peer gets back for each frame: the frame with its predictions drawn, and a data
channel message with the frame's metadata and the output fields it asked for.

The reference's selections, as a peer sets them (in the request, or later with a data channel
message ``{"stream_output": ..., "data_output": ...}``, the reference's ``WebRTCData``):

* ``stream_output`` — whose predictions are drawn on the returned video: None (the default, or
  the reference UI's ``[None]``) draws every prediction of the output; a name draws those of that
  output field (a name that is not there draws every prediction, and says so on the frame);
  ``""`` sent on the data channel turns drawing off (the plain video comes back).
* ``data_output`` — what each data channel message carries besides the frame's metadata:
  nothing (the default), ``"*"`` every field of the output, or the named fields (``""`` on the
  data channel: back to metadata only).

A message is the reference's ``WebRTCOutput``: ``output_name``, ``serialized_output_data`` (JSON
text: the field's value for one name, a dict of fields for ``*`` or several names),
``video_metadata`` (``frame_id``, ``frame_timestamp``, ``pts``, ``time_base``, ``declared_fps``,
``measured_fps``) and ``errors``; framepipe adds ``framepipe``: ``{"latency_ms", "fps"}``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import orjson

from framepipe.core.processing.drawing import annotate
from framepipe.server.webrtc.config import ALL_OUTPUTS

__all__ = [
    "VIDEO_TIME_BASE",
    "FpsMeter",
    "OutputSelection",
    "data_message",
    "draw_hud",
    "predictions_for",
    "render",
]

Frame = npt.NDArray[np.uint8]
#: The returned video's clock (RTP video runs at 90 kHz).
VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = 1 / VIDEO_CLOCK_RATE
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class OutputSelection:
    """What is drawn (``stream``) and sent (``data``); replaced whole when a peer changes it,
    so a reader on another thread always sees a consistent pair."""

    stream: str | None = None
    data: tuple[str, ...] = ()

    def updated(self, message: str | bytes) -> OutputSelection:
        """The selection after a data channel message (the reference's ``WebRTCData``); a
        message that is not one leaves it as it is."""
        try:
            data = orjson.loads(message)
        except orjson.JSONDecodeError:
            return self
        if not isinstance(data, dict):
            return self
        changed = self
        stream = data.get("stream_output")
        if isinstance(stream, str):
            changed = replace(changed, stream=stream)
        wanted = data.get("data_output")
        if isinstance(wanted, str):
            changed = replace(changed, data=(wanted,) if wanted else ())
        elif isinstance(wanted, list) and all(isinstance(name, str) for name in wanted):
            changed = replace(changed, data=tuple(name for name in wanted if name))
        return changed


def _is_prediction(value: object) -> bool:
    return isinstance(value, Mapping) and "x" in value and "y" in value


def _predictions_in(value: object) -> list[Mapping[str, Any]]:
    """The predictions a field holds: ``{"predictions": [...]}`` or a list of them."""
    if isinstance(value, Mapping):
        value = value.get("predictions")
    if isinstance(value, list):
        return [p for p in value if _is_prediction(p)]
    return []


def predictions_for(
    output: Mapping[str, Any] | None, stream: str | None
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The predictions to draw for ``output`` under the ``stream`` selection, and the errors to
    show on the frame."""
    if output is None or stream == "":
        return [], []
    if stream is not None:
        if stream in output:
            return _predictions_in(output[stream]), []
        errors = [f"'{stream}' not found in outputs; drawing every prediction"]
    else:
        errors = []
    if isinstance(output.get("predictions"), list):
        return _predictions_in(output), errors
    found: list[Mapping[str, Any]] = []
    for value in output.values():
        found.extend(_predictions_in(value))
    return found, errors


def _is_image(value: object) -> bool:
    return isinstance(value, Mapping) and value.get("type") == "base64" and "value" in value


def _selected_data(
    output: Mapping[str, Any] | None, names: tuple[str, ...], errors: list[str]
) -> tuple[str | None, Any]:
    """(output_name, value) of the data selection; (None, None) for metadata only."""
    if not names or output is None:
        return None, None
    if names == (ALL_OUTPUTS,):
        return ALL_OUTPUTS, {k: v for k, v in output.items() if not _is_image(v)}
    found = {}
    for name in names:
        if name in output:
            found[name] = output[name]
        else:
            errors.append(f"Selected data output '{name}' not found in outputs")
    if len(names) == 1:
        return (names[0], found[names[0]]) if found else (None, None)
    return ",".join(names), found


def data_message(
    output: Mapping[str, Any] | None,
    metadata: Any,
    selection: OutputSelection,
    *,
    pts: int | None,
    fps: float,
    errors: list[str],
) -> bytes:
    """The data channel message for one frame (JSON bytes, sent as text)."""
    errors = list(errors)
    name, value = _selected_data(output, selection.data, errors)
    serialized = None
    if name is not None:
        serialized = orjson.dumps(value, default=str, option=_JSON_OPTIONS).decode()
    capture_ns = int(getattr(metadata, "capture_ns", 0) or 0)
    message = {
        "output_name": name,
        "serialized_output_data": serialized,
        "video_metadata": {
            "frame_id": int(metadata.frame_id),
            "frame_timestamp": metadata.frame_timestamp.isoformat(),
            "pts": pts,
            "time_base": VIDEO_TIME_BASE,
            "declared_fps": getattr(metadata, "fps", None),
            "measured_fps": getattr(metadata, "measured_fps", None),
        },
        "errors": errors,
        "framepipe": {
            "latency_ms": round((time.time_ns() - capture_ns) / 1e6, 2) if capture_ns else None,
            "fps": round(fps, 2),
        },
    }
    return orjson.dumps(message, default=str, option=_JSON_OPTIONS)


def draw_hud(canvas: Frame, lines: list[str]) -> None:
    """Write ``lines`` in the top-left corner of ``canvas`` (in place), on a dark band."""
    if not lines:
        return
    scale = max(0.4, canvas.shape[1] / 1280.0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(line, font, scale, 1) for line in lines]
    line_height = max(h + baseline for (_, h), baseline in sizes) + 4
    width = max(w for (w, _), _ in sizes) + 8
    height = line_height * len(lines) + 4
    region = canvas[:height, :width]
    region //= 3  # darken, so the text reads on any picture
    for row, line in enumerate(lines):
        y = 2 + line_height * (row + 1) - 4
        colour = (255, 255, 255) if row == 0 else (0, 200, 255)
        cv2.putText(canvas, line, (4, y), font, scale, colour, 1, cv2.LINE_AA)


def render(
    frame: Frame,
    output: Mapping[str, Any] | None,
    selection: OutputSelection,
    *,
    fps: float,
) -> tuple[Frame, list[str]]:
    """A copy of ``frame`` with its predictions (per ``selection``) and the HUD drawn; and
    the errors to report."""
    predictions, errors = predictions_for(output, selection.stream)
    canvas = annotate(frame, {"predictions": predictions}) if predictions else frame.copy()
    hud = [f"framepipe  {fps:4.1f} fps  detections: {len(predictions)}"]
    draw_hud(canvas, hud + errors)
    return canvas, errors


class FpsMeter:
    """Frames per second over the last second or so (thread-safe enough for one writer)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque(maxlen=256)

    def tick(self) -> float:
        now = time.monotonic_ns()
        times = self._times
        times.append(now)
        while times and now - times[0] > self._window_ns:
            times.popleft()
        return self.rate(now)

    def rate(self, now: int | None = None) -> float:
        times = list(self._times)
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        return (len(times) - 1) * 1e9 / span if span > 0 else 0.0
