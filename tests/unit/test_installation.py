"""One build of ONNX Runtime and of OpenCV, and extras named right when they are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from framepipe._installation import (
    check_single_builds,
    conflicting_builds,
    expected_ort,
    extra_for_module,
    missing_extra,
)
from framepipe.cli._explain import CommandLineError, explain


def installed(site: Path, *names: str) -> list[str]:
    """Real (minimal) installed distributions: a dist-info folder with its METADATA each."""
    for name in names:
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return [str(site)]


def test_two_onnxruntime_builds_are_one_line_naming_the_fix(tmp_path: Path) -> None:
    path = installed(tmp_path, "onnxruntime", "onnxruntime-gpu", "numpy")
    with pytest.raises(CommandLineError) as raised:
        check_single_builds(path)
    line = explain(raised.value)
    assert "\n" not in line
    assert line.startswith("onnxruntime and onnxruntime-gpu are both installed")
    assert f"pip uninstall -y onnxruntime onnxruntime-gpu && pip install {expected_ort()}" in line


def test_two_opencv_wheels_are_refused_too() -> None:
    message = conflicting_builds(["opencv_python", "OpenCV-Python-Headless", "numpy"])
    assert message is not None and "share the module 'cv2'" in message
    assert "pip install opencv-python-headless" in message


def test_one_of_each_is_fine(tmp_path: Path) -> None:
    check_single_builds(installed(tmp_path, "onnxruntime-gpu", "opencv-python-headless"))
    check_single_builds()  # this environment, as `make install` built it
    assert conflicting_builds(["onnxruntime", "opencv-contrib-python"]) is None


def test_extras_are_named_by_the_module_they_install() -> None:
    assert extra_for_module("aiortc.mediastreams") == "webrtc"
    assert extra_for_module("fastapi") == "http"
    assert extra_for_module("matplotlib.pyplot") == "bench"
    assert extra_for_module("numpy") is None
    assert missing_extra("http") is None  # installed here; tests/e2e/test_sdist covers absence
    hint = explain(ModuleNotFoundError("No module named 'aiortc'", name="aiortc"))
    assert hint.endswith("(hint: pip install 'framepipe[webrtc]')")
    ext = explain(
        ModuleNotFoundError("No module named 'framepipe.ext._spsc'", name="framepipe.ext._spsc")
    )
    assert "compiled extensions are missing" in ext and "[http]" not in ext


def test_bench_notes_are_printed_as_written(tmp_path: Path) -> None:
    """A note is plain text: rich would otherwise take `[bench]` in a hint for markup."""
    from rich.console import Console

    from framepipe.bench._app import _footer
    from framepipe.bench._runner import BenchReport
    from framepipe.bench.config import BenchConfig

    hint = "plots need matplotlib, which this installation lacks: pip install 'framepipe[bench]'"
    report = BenchReport(BenchConfig(out_dir=tmp_path, cache_dir=tmp_path), {}, "now")
    report.notes.append(hint)
    console = Console(record=True, width=200, color_system=None)
    for line in _footer(report, tmp_path / "results[1].json"):
        console.print(line)
    text = console.export_text()
    assert hint in text and "results[1].json" in text
