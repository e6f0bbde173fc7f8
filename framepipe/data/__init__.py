"""Bundled data: the demo video with faces and its ground truth (scripts/make_demo_video.py)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def demo_video_path() -> Path:
    """1280x720, 25 fps, 8 s: the astronaut portrait moving and scaling over a background."""
    return DATA_DIR / "demo_faces.mp4"


def demo_truth_path() -> Path:
    """Per frame: the face box and whether it is fully visible ("full", "partial", "none")."""
    return DATA_DIR / "demo_faces.json"
