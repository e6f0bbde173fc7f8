"""What this installation holds: the optional extras, and one build each of ONNX Runtime and
OpenCV.

A feature whose extra is missing is refused where it is asked for (``--http-port`` at start, a
WebRTC request at the request), naming the extra; an ``ImportError`` deep inside a worker is
what this avoids. Two builds of ONNX Runtime (``onnxruntime`` and ``onnxruntime-gpu``), or of
OpenCV, install into one module folder: the module then works or not depending on which was
installed last, and uninstalling one breaks the other. That is found at start, from the
installed distributions, before anything imports the module.
"""

from __future__ import annotations

import importlib.util
import platform
import re
from collections.abc import Iterable
from importlib import metadata

from framepipe._explain import CommandLineError

#: extra -> (what it enables, the modules it installs)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "webrtc": ("WebRTC pipelines", ("aiortc",)),
    "http": ("the HTTP gateway and /metrics", ("fastapi", "uvicorn", "prometheus_client")),
    "bench": ("framepipe bench's plots", ("matplotlib",)),
}

#: distributions that each install the same top-level module
_ORT = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
_OPENCV = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def extra_for_module(module: str) -> str | None:
    """The extra that installs ``module`` (a dotted name: its top level counts)."""
    top = module.split(".")[0]
    return next((extra for extra, (_, mods) in EXTRAS.items() if top in mods), None)


def missing_extra(extra: str) -> str | None:
    """A one-line message when a module of ``extra`` cannot be imported, else None."""
    feature, modules = EXTRAS[extra]
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (
        f"{feature} need {', '.join(absent)}, which this installation lacks: "
        f"pip install 'framepipe[{extra}]'"
    )


def require_extra(extra: str) -> None:
    """CommandLineError (one line, naming the extra) when ``extra`` is not installed."""
    message = missing_extra(extra)
    if message is not None:
        raise CommandLineError(message)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def expected_ort() -> str:
    """The ONNX Runtime build framepipe depends on here (its pyproject's markers)."""
    linux_x86 = platform.system() == "Linux" and platform.machine() == "x86_64"
    return "onnxruntime-gpu" if linux_x86 else "onnxruntime"


def conflicting_builds(installed: Iterable[str]) -> str | None:
    """A one-line message when ``installed`` (distribution names) holds two builds of ONNX
    Runtime or of OpenCV, naming the fix; None when there is at most one of each."""
    names = {_normalised(name) for name in installed}
    problems = []
    for module, builds, keep in (
        ("onnxruntime", _ORT, expected_ort()),
        ("cv2", _OPENCV, "opencv-python-headless"),
    ):
        found = [build for build in builds if build in names]
        if len(found) > 1:
            problems.append(
                f"{' and '.join(found)} are both installed and share the module {module!r} "
                f"(fix: pip uninstall -y {' '.join(found)} && pip install {keep})"
            )
    return "; ".join(problems) or None


def check_single_builds(path: list[str] | None = None) -> None:
    """CommandLineError when this environment (or ``path``) holds two builds of ONNX Runtime
    or of OpenCV."""
    dists = metadata.distributions() if path is None else metadata.distributions(path=path)
    message = conflicting_builds(d.metadata["Name"] or "" for d in dists)
    if message is not None:
        raise CommandLineError(message)
