"""`pip install` as a user does it: the sdist, built here, installed into a fresh venv at the
declared minimum versions, then run from a folder outside the repository.

It covers what a clone's `make demo` cannot: that the sdist carries the Cython sources and
builds the extensions (no generated C, no debug info in what is installed), that every floor in
pyproject.toml really runs the demo (each dependency installed at exactly its floor through
``pip --constraint``), that the bundled model is fetched into the per-user cache by
``framepipe models fetch``, and that a missing extra is named, not met as an ImportError.

pip reaches PyPI (or its local cache and index settings) for the dependencies; the build uses
``--no-build-isolation`` with the build requirements installed once, at their floors too.
About two to three minutes on two busy cores, most of it installing the dependencies and
compiling the extensions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import framepipe

ROOT = Path(__file__).resolve().parents[2]


def minimums(pyproject: Path) -> list[str]:
    """``name==floor`` for every requirement that applies here (build and run time); a
    requirement without a ``>=`` floor is a failure, so that none goes untested."""
    data = tomllib.loads(pyproject.read_text())
    pins: dict[str, str] = {}
    for text in data["build-system"]["requires"] + data["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if requirement.name == "wheel" and not floors:
            continue  # setuptools' own helper; any version
        assert len(floors) == 1, f"{text!r} in pyproject.toml has no single >= floor"
        pins[requirement.name] = f"{requirement.name}=={floors[0]}"
    return list(pins.values())


# Run in the fresh venv: a manager, one WebRTC request, the error it answers, SIGTERM.
WEBRTC_REQUEST = r"""
import re, signal, subprocess
from framepipe.client import FramepipeError, SyncStreamManagerClient
from framepipe.protocol.payloads import (
    InitialiseWebRTCPipelinePayload, ModelConfiguration, VideoConfiguration, WebRTCOffer)
server = subprocess.Popen(["framepipe", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
try:
    port = int(re.search(r"listening on [\d.]+:(\d+)", server.stdout.readline()).group(1))
    client = SyncStreamManagerClient(host="127.0.0.1", port=port, operations_timeout=30.0)
    request = InitialiseWebRTCPipelinePayload(
        video_configuration=VideoConfiguration(video_reference="clip.mp4"),
        processing_configuration=ModelConfiguration(model="passthrough"),
        webrtc_offer=WebRTCOffer(type="offer", sdp="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"),
    )
    try:
        client.initialise_webrtc_pipeline(request)
        print("accepted")
    except FramepipeError as exc:
        print(f"{exc.error_type.value}: {exc.public_message}")
finally:
    server.send_signal(signal.SIGTERM)
    server.wait(30)
"""


def run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(1200)
def test_sdist_installs_at_the_floors_and_runs_the_demo_from_outside(tmp_path: Path) -> None:
    # a user's environment: nothing of this checkout or of the dev venv on the paths
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["FRAMEPIPE_MODEL_CACHE"] = str(tmp_path / "model-cache")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    # the sdist: Cython sources and headers, never the generated C or a compiled module
    dist = tmp_path / "dist"
    build = "from setuptools import build_meta as b; import sys; b.build_sdist(sys.argv[1])"
    run(sys.executable, "-c", build, dist, cwd=ROOT, env=env)
    (sdist,) = dist.glob("framepipe-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {Path(n).relative_to(Path(n).parts[0]).as_posix() for n in tar.getnames()[1:]}
    for name in ("_spsc.pyx", "_spsc.pxd", "fp_spsc.h", "_preprocess.pyx", "_preprocess.pyi"):
        assert f"framepipe/ext/{name}" in names
    assert "LICENSE" in names and "framepipe/gateway/static/webrtc.html" in names
    assert not [n for n in names if n.endswith((".c", ".so"))]

    constraints = tmp_path / "minimums.txt"
    constraints.write_text("\n".join(minimums(ROOT / "pyproject.toml")) + "\n")
    py, pip = venv / "bin" / "python", [venv / "bin" / "python", "-m", "pip"]
    run(sys.executable, "-m", "venv", venv, cwd=outside, env=env)
    build_requires = ["setuptools", "wheel", "Cython", "numpy"]
    run(*pip, "install", "-q", "-c", constraints, *build_requires, cwd=outside, env=env)
    run(
        *pip,
        "install",
        "-q",
        "--no-build-isolation",
        "-c",
        constraints,
        sdist,
        cwd=outside,
        env=env,
    )

    # what got installed: compiled extensions without their C or debug info, the LICENSE
    site = Path(
        run(py, "-c", "import framepipe; print(framepipe.__file__)", cwd=outside, env=env).strip()
    ).parent
    assert site.is_relative_to(venv)
    modules = sorted((site / "ext").glob("*.so"))
    assert [m.name.split(".")[0] for m in modules] == ["_preprocess", "_spsc"]
    assert not list((site / "ext").glob("*.c"))
    for module in modules:
        data = module.read_bytes()
        assert b".debug_info" not in data and str(tmp_path).encode() not in data, module.name
    assert list(site.parent.glob("framepipe-*.dist-info/licenses/LICENSE"))

    # the commands a user runs first, from a folder that is not the repository
    version = run("framepipe", "--version", cwd=outside, env=env)
    assert version == f"framepipe {framepipe.__version__}\n"
    assert "models" in run(py, "-m", "framepipe", "--help", cwd=outside, env=env)
    fetched = run("framepipe", "models", "fetch", cwd=outside, env=env)
    cache = tmp_path / "model-cache"
    assert fetched == f"centerface: {cache / 'centerface.onnx'}\n"
    assert "MIT License" in (cache / "centerface.LICENSE").read_text()
    demo = run("framepipe", "demo", "--seconds", "300", cwd=outside, env=env)
    assert "pipeline ended (video finished)" in demo, demo[-2000:]
    assert "done: 200 results; manager shut down cleanly" in demo, demo[-2000:]  # every frame

    # no extras installed: the HTTP gateway is refused at start, naming its extra
    refused = subprocess.run(
        ["framepipe", "serve", "--port", "0", "--http-port", "0"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().endswith("pip install 'framepipe[http]'"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    # and a WebRTC request is refused by the manager at the request, naming its extra
    answer = run(py, "-c", WEBRTC_REQUEST, cwd=outside, env=env, timeout=120).strip()
    assert answer.startswith("operation_error: WebRTC pipelines need aiortc"), answer
    assert answer.endswith("pip install 'framepipe[webrtc]'"), answer

    # a source tree without the Cython sources fails the build instead of going pure-Python
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    (unpacked / "framepipe" / "ext" / "_spsc.pyx").unlink()
    broken = subprocess.run(
        [py, "setup.py", "--name"], cwd=unpacked, env=env, capture_output=True, text=True
    )
    assert broken.returncode != 0
    assert "framepipe/ext/_spsc.pyx are missing" in broken.stderr, broken.stderr
