#!/usr/bin/env python3
"""Generate the bundled demo video ``framepipe/data/demo_faces.mp4`` and its ground truth.

The public-domain ``skimage.data.astronaut()`` portrait (NASA photo of Eileen Collins) moves
along a Lissajous path and scales over a plain gradient background, 1280x720 at 25 fps for
8 s, encoded with PyAV's libx264. Near the end it slides out to the right and the last
frames show no face at all. ``demo_faces.json`` records, per frame, where the face is
(the face box of the source image, (181, 58)-(270, 178), carried through the same
transform) and whether it is fully inside the frame.

Deterministic: the same package versions give the same frames. Run from the repo root:
``.venv/bin/python scripts/make_demo_video.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import skimage.data

OUT_DIR = Path(__file__).resolve().parent.parent / "framepipe" / "data"
WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 25, 8
FACE_IN_SOURCE = (181.0, 58.0, 270.0, 178.0)  # x1, y1, x2, y2 in astronaut() pixels
MOVING_FRAMES = 150  # then it slides out to the right


def background() -> npt.NDArray[np.uint8]:
    y = np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, WIDTH, dtype=np.float32)[None, :]
    b = 90 + 80 * y + 0 * x
    g = 60 + 50 * x + 0 * y
    r = 40 + 40 * (1 - y) + 0 * x
    bg = np.stack([b, g, r], axis=2).clip(0, 255).astype(np.uint8)
    for i in range(6):  # a few plain shapes so the scene is not empty
        x0 = 60 + i * 200
        cv2.rectangle(
            bg, (x0, 560 + (i % 2) * 40), (x0 + 120, 700), (70 + 20 * i, 120, 150 - 10 * i), -1
        )
    return bg


def transform(frame: int) -> tuple[float, float, float]:
    """Scale and centre of the portrait in frame ``frame``."""
    if frame < MOVING_FRAMES:
        t = frame / MOVING_FRAMES
        scale = 0.95 + 0.3 * math.sin(2 * math.pi * 1.5 * t)
        cx = WIDTH / 2 + 300 * math.sin(2 * math.pi * t)
        cy = HEIGHT / 2 + 60 * math.sin(4 * math.pi * t)
        return scale, cx, cy
    scale, cx, cy = transform(MOVING_FRAMES - 1)
    return scale, cx + 40.0 * (frame - MOVING_FRAMES + 1), cy


def main() -> int:
    portrait = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    ph, pw = portrait.shape[:2]
    bg = background()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    video_path = OUT_DIR / "demo_faces.mp4"
    frames_truth = []
    with av.open(str(video_path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "30", "preset": "medium", "g": str(2 * FPS)}
        for i in range(FPS * SECONDS):
            scale, cx, cy = transform(i)
            m = np.array(
                [[scale, 0, cx - scale * pw / 2], [0, scale, cy - scale * ph / 2]], np.float64
            )
            image = bg.copy()
            cv2.warpAffine(
                portrait, m, (WIDTH, HEIGHT), dst=image, borderMode=cv2.BORDER_TRANSPARENT
            )
            x1, y1, x2, y2 = FACE_IN_SOURCE
            face = [
                x1 * scale + m[0, 2],
                y1 * scale + m[1, 2],
                x2 * scale + m[0, 2],
                y2 * scale + m[1, 2],
            ]
            inside = face[0] >= 0 and face[1] >= 0 and face[2] <= WIDTH and face[3] <= HEIGHT
            outside = face[0] >= WIDTH
            frames_truth.append(
                {
                    "frame": i,
                    "face": [round(v, 1) for v in face],
                    "visible": "full" if inside else ("none" if outside else "partial"),
                }
            )
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    truth = {
        "video": video_path.name,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "frames": len(frames_truth),
        "source": "skimage.data.astronaut() (public domain, NASA), face box (181,58)-(270,178)",
        "per_frame": frames_truth,
    }
    (OUT_DIR / "demo_faces.json").write_text(json.dumps(truth, indent=1) + "\n")
    full = sum(f["visible"] == "full" for f in frames_truth)
    none = sum(f["visible"] == "none" for f in frames_truth)
    print(
        f"{video_path}: {video_path.stat().st_size} bytes, {len(frames_truth)} frames, face fully visible in {full}, absent in {none}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
