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
import os
import platform
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framepipe.cli._explain import CommandLineError

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


def _error(message: str) -> CommandLineError:
    # imported when there is an error to show: _explain loads the client and gateway models
    from framepipe.cli._explain import CommandLineError

    return CommandLineError(message)


def require_extra(extra: str) -> None:
    """CommandLineError (one line, naming the extra) when ``extra`` is not installed."""
    message = missing_extra(extra)
    if message is not None:
        raise _error(message)


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


def installed_names(path: list[str]) -> Iterator[str]:
    """The distributions installed in the folders of ``path``, from their ``.dist-info`` /
    ``.egg-info`` folder names (a few milliseconds, where reading every METADATA takes ~100)."""
    for folder in path:
        try:
            entries = os.scandir(folder or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name.endswith((".dist-info", ".egg-info")):
                    yield entry.name.split("-")[0]


def check_single_builds(path: list[str] | None = None) -> None:
    """CommandLineError when this environment (``sys.path``, or ``path``) holds two builds of
    ONNX Runtime or of OpenCV."""
    message = conflicting_builds(installed_names(sys.path if path is None else path))
    if message is not None:
        raise _error(message)
