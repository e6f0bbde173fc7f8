"""Models by name: the bundled ``centerface`` and every ``*.onnx`` in a models directory.

A request names a model; it never passes a file path. The registry is built once at start
from :class:`ProcessingSettings` (``FRAMEPIPE_MODELS_DIR`` and friends, read by
:meth:`ProcessingSettings.from_env` when called, never at import).

A model ``<dir>/<name>.onnx`` may have a sidecar ``<dir>/<name>.json``::

    {"task": "object-detection" | "classification" | "face-detection",
     "labels": ["person", ...]  or  "labels_file": "<name>.txt"  (a file in the same dir),
     "input_size": 640 | [height, width],
     "normalisation": {"scale": 0.00392156862745098, "mean": [0, 0, 0], "std": [1, 1, 1], "rgb": true},
     "letterbox": true, "pad_value": 114,
     "output_format": "yolov8" | "yolov5" | "end2end",
     "confidence": 0.4, "iou_threshold": 0.45,
     "stride": 32}   (dynamic input sizes are rounded up to a multiple of it)

Without a sidecar: labels from ``<name>.txt`` (one per line) or the model's ``names``
metadata (Ultralytics exports), task from the ``task`` metadata or the output shapes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from framepipe.protocol.errors import InvalidPayloadError

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BUNDLED_CENTERFACE = "centerface"
PASSTHROUGH = "passthrough"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``framepipe models fetch`` puts the bundled model: ``FRAMEPIPE_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/framepipe/models``, else ``~/.cache/framepipe/models`` (per user, so an
    installed package never looks inside site-packages)."""
    env = os.environ if environ is None else environ
    if env.get("FRAMEPIPE_MODEL_CACHE"):
        return Path(env["FRAMEPIPE_MODEL_CACHE"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "framepipe" / "models"


class ModelTask(StrEnum):
    OBJECT_DETECTION = "object-detection"
    CLASSIFICATION = "classification"
    FACE_DETECTION = "face-detection"

    @classmethod
    def parse(cls, value: str, where: str) -> ModelTask:
        aliases = {
            "detect": cls.OBJECT_DETECTION,
            "object_detection": cls.OBJECT_DETECTION,
            "classify": cls.CLASSIFICATION,
            "face_detection": cls.FACE_DETECTION,
        }
        try:
            return aliases.get(value) or cls(value)
        except ValueError:
            allowed = ", ".join(t.value for t in cls)
            raise InvalidPayloadError(
                f"{where}: unknown task {value!r} (one of: {allowed})"
            ) from None


@dataclass(frozen=True, slots=True)
class InputNormalisation:
    """``(pixel * scale - mean) / std`` per channel (in the model's channel order)."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = True


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """What framepipe knows about a registered model before loading it."""

    name: str
    path: Path
    task: ModelTask | None = None  # None: decided from metadata / outputs at load
    labels: tuple[str, ...] = ()
    input_size: int | tuple[int, int] | None = None  # longest side, or (height, width)
    normalisation: InputNormalisation = field(default_factory=InputNormalisation)
    letterbox: bool = True
    pad_value: float = 114.0
    output_format: str | None = None
    default_confidence: float = 0.4
    default_iou: float = 0.45
    stride: int = 32  # dynamic input sizes are rounded up to a multiple of this


@dataclass(frozen=True, slots=True)
class ProcessingSettings:
    """Settings of the processing stage, built once at start."""

    models_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    intra_op_threads: int = 1  # per session: N pipelines share the machine's cores
    inter_op_threads: int = 1
    providers: tuple[str, ...] | None = None  # None: CUDA then CPU, whatever is available

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProcessingSettings:
        env = os.environ if environ is None else environ

        def positive_int(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise InvalidPayloadError(f"{name}={raw!r} is not an integer") from None
            if value < 1:
                raise InvalidPayloadError(f"{name}={raw!r} must be at least 1")
            return value

        models_dir = env.get("FRAMEPIPE_MODELS_DIR")
        providers = env.get("FRAMEPIPE_PROVIDERS")
        return cls(
            models_dir=Path(models_dir) if models_dir else None,
            cache_dir=default_cache_dir(env),
            intra_op_threads=positive_int("FRAMEPIPE_INTRA_OP_THREADS", 1),
            inter_op_threads=positive_int("FRAMEPIPE_INTER_OP_THREADS", 1),
            providers=tuple(p.strip() for p in providers.split(",") if p.strip())
            if providers
            else None,
        )


def centerface_entry(cache_dir: Path) -> ModelEntry:
    """The bundled face detector: RGB 0-255 input, any H/W that is a multiple of 32."""
    return ModelEntry(
        name=BUNDLED_CENTERFACE,
        path=cache_dir / "centerface.onnx",
        task=ModelTask.FACE_DETECTION,
        labels=("face",),
        input_size=640,
        normalisation=InputNormalisation(scale=1.0),
        letterbox=True,
        pad_value=0.0,
        default_confidence=0.5,
        default_iou=0.3,
    )


def _sidecar_error(path: Path, message: str) -> InvalidPayloadError:
    return InvalidPayloadError(f"model sidecar {path.name}: {message}")


def _entry_from_sidecar(name: str, onnx_path: Path, sidecar: Path | None) -> ModelEntry:
    data: dict[str, Any] = {}
    if sidecar is not None:
        try:
            loaded = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise _sidecar_error(sidecar, f"not readable JSON ({exc})") from exc
        if not isinstance(loaded, dict):
            raise _sidecar_error(sidecar, "must be a JSON object")
        data = loaded
    where = sidecar.name if sidecar is not None else onnx_path.name
    task = ModelTask.parse(str(data["task"]), where) if "task" in data else None
    labels: tuple[str, ...] = ()
    if "labels" in data:
        if not isinstance(data["labels"], list) or not all(
            isinstance(x, str) for x in data["labels"]
        ):
            raise _sidecar_error(sidecar or onnx_path, "labels must be a list of strings")
        labels = tuple(data["labels"])
    else:
        labels_name = data.get("labels_file", f"{name}.txt")
        labels_path = onnx_path.parent / str(labels_name)
        # a labels file lives beside the model: no path may lead elsewhere
        if Path(str(labels_name)).name != str(labels_name):
            raise _sidecar_error(
                sidecar or onnx_path, f"labels_file {labels_name!r} must be a plain file name"
            )
        if labels_path.is_file():
            labels = tuple(
                line.strip() for line in labels_path.read_text().splitlines() if line.strip()
            )
        elif "labels_file" in data:
            raise _sidecar_error(sidecar or onnx_path, f"labels_file {labels_name!r} not found")
    input_size: int | tuple[int, int] | None = None
    if "input_size" in data:
        raw = data["input_size"]
        if isinstance(raw, int) and raw > 0:
            input_size = raw
        elif (
            isinstance(raw, list)
            and len(raw) == 2
            and all(isinstance(v, int) and v > 0 for v in raw)
        ):
            input_size = (raw[0], raw[1])
        else:
            raise _sidecar_error(
                sidecar or onnx_path, f"input_size must be an int or [height, width], got {raw!r}"
            )
    norm = InputNormalisation()
    if "normalisation" in data:
        n = data["normalisation"]
        if not isinstance(n, dict):
            raise _sidecar_error(sidecar or onnx_path, "normalisation must be an object")
        try:
            mean = tuple(float(v) for v in n.get("mean", (0.0, 0.0, 0.0)))
            std = tuple(float(v) for v in n.get("std", (1.0, 1.0, 1.0)))
            scale = float(n.get("scale", 1.0 / 255.0))
        except (TypeError, ValueError) as exc:
            raise _sidecar_error(sidecar or onnx_path, f"normalisation: {exc}") from exc
        if len(mean) != 3 or len(std) != 3 or 0.0 in std:
            raise _sidecar_error(
                sidecar or onnx_path, "normalisation needs 3 means and 3 non-zero stds"
            )
        norm = InputNormalisation(
            scale, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), bool(n.get("rgb", True))
        )
    output_format = data.get("output_format")
    if output_format is not None and output_format not in ("yolov8", "yolov5", "end2end"):
        raise _sidecar_error(
            sidecar or onnx_path, f"output_format {output_format!r} (yolov8, yolov5 or end2end)"
        )
    try:
        return ModelEntry(
            name=name,
            path=onnx_path,
            task=task,
            labels=labels,
            input_size=input_size,
            normalisation=norm,
            letterbox=bool(data.get("letterbox", task is not ModelTask.CLASSIFICATION)),
            pad_value=float(data.get("pad_value", 114.0)),
            output_format=output_format,
            default_confidence=float(data.get("confidence", 0.4)),
            default_iou=float(data.get("iou_threshold", 0.45)),
            stride=int(data.get("stride", 32)),
        )
    except (TypeError, ValueError) as exc:
        raise _sidecar_error(sidecar or onnx_path, str(exc)) from exc


class ModelRegistry:
    """Registered models by name (immutable once built)."""

    def __init__(
        self, entries: Iterable[ModelEntry], settings: ProcessingSettings | None = None
    ) -> None:
        self.settings = settings if settings is not None else ProcessingSettings()
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if not MODEL_NAME.match(entry.name) or entry.name == PASSTHROUGH:
                raise InvalidPayloadError(f"model name {entry.name!r} is not allowed")
            self._entries[entry.name] = entry

    @classmethod
    def from_settings(cls, settings: ProcessingSettings) -> ModelRegistry:
        """The bundled model plus every ``*.onnx`` in ``settings.models_dir``."""
        entries = [centerface_entry(settings.cache_dir)]
        if settings.models_dir is not None:
            if not settings.models_dir.is_dir():
                raise InvalidPayloadError(
                    f"models directory {str(settings.models_dir)!r} does not exist"
                )
            for onnx_path in sorted(settings.models_dir.glob("*.onnx")):
                name = onnx_path.stem
                if not MODEL_NAME.match(name) or name == PASSTHROUGH:
                    continue  # not addressable by a request; never guessed at
                sidecar = onnx_path.with_suffix(".json")
                entries.append(
                    _entry_from_sidecar(name, onnx_path, sidecar if sidecar.is_file() else None)
                )
        return cls(entries, settings)

    def entries(self) -> list[ModelEntry]:
        """Every registered model, present on disk or not, by name."""
        return [self._entries[name] for name in sorted(self._entries)]

    def names(self) -> list[str]:
        """Names of the models that are present on disk."""
        return sorted(name for name, entry in self._entries.items() if entry.path.is_file())

    def get(self, name: str) -> ModelEntry:
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise InvalidPayloadError(
                f"model {name!r} is not a model name (a registered name, never a path)"
            )
        entry = self._entries.get(name)
        if entry is None:
            raise InvalidPayloadError(
                f"model {name!r} is not registered (available: {', '.join(self.names()) or 'none'})"
            )
        if not entry.path.is_file():
            hint = f" — run `framepipe models fetch {name}`" if name == BUNDLED_CENTERFACE else ""
            raise InvalidPayloadError(
                f"model {name!r} is registered but {entry.path} is missing{hint}"
            )
        return entry
