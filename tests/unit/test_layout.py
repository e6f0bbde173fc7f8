"""The package's module boundaries (docs/ARCHITECTURE.md, "Folders"): dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import framepipe

PACKAGE = Path(framepipe.__file__).parent

# layer -> framepipe sub-packages it must never import
FORBIDDEN = {
    "protocol": {"core", "ext", "server", "client", "cli"},
    "core": {"server", "client", "cli"},
    "client": {"core", "ext", "server", "gateway", "cli"},
    # The gateway is a client of the manager: it may run beside a manager elsewhere.
    "gateway": {"core", "ext", "server", "cli"},
    "server": {"client", "gateway", "cli"},
    # the bench drives the real server as a subprocess, through the client, like a user
    "bench": {"server", "gateway", "cli"},
}


def _framepipe_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "framepipe" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer: str) -> None:
    offences = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = _framepipe_imports(path) & FORBIDDEN[layer]
        if bad:
            offences.append(f"{path.relative_to(PACKAGE)} imports framepipe.{sorted(bad)}")
    assert not offences, offences


def test_protocol_uses_no_io_modules() -> None:
    io_modules = {"socket", "asyncio", "selectors", "multiprocessing", "subprocess"}
    offences = []
    for path in sorted((PACKAGE / "protocol").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = {node.module.split(".")[0]}
            else:
                continue
            if mods & io_modules:
                offences.append(f"{path.name}: {sorted(mods & io_modules)}")
    assert not offences, offences


def test_error_tree_maps_one_to_one_onto_wire_error_types() -> None:
    from framepipe.protocol.errors import ERROR_CLASSES, ErrorType, FramepipeError

    assert set(ERROR_CLASSES) == set(ErrorType)
    for error_type, cls in ERROR_CLASSES.items():
        assert issubclass(cls, FramepipeError)
        assert cls.error_type is error_type


def test_the_manager_listens_before_it_imports_the_data_plane() -> None:
    """`framepipe serve` binds its port within a fraction of a second: importing the server
    loads neither numpy nor the decoders (they load in the background, or at a first scrape)."""
    import subprocess
    import sys

    probe = (
        "import sys, framepipe.server.manager.app, framepipe.server.manager.metrics; "
        "heavy = sorted(m for m in ('numpy', 'cv2', 'av', 'framepipe.core.sources') "
        "if m in sys.modules); print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", result.stdout


def test_the_data_plane_does_not_load_pydantic() -> None:
    """A decode process or a worker reading frames imports the ring, the sources' entities and
    the error tree; none of them needs pydantic (the wire's schemas), so none loads it."""
    import subprocess
    import sys

    probe = (
        "import sys, framepipe, framepipe.core.ring, framepipe.core.sources.entities, "
        "framepipe.errors; print('pydantic' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_server_is_laid_out_by_process() -> None:
    """A path says which process runs a file: the manager, a pipeline worker, an inference
    service (and a WebRTC pipeline's peer, in its worker); only what they share sits beside."""
    server = PACKAGE / "server"
    folders = {p.name for p in server.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.stem for p in server.glob("*.py")}
    assert folders == {"manager", "worker", "inference", "webrtc"}
    assert modules == {"__init__", "child_process", "settings", "settings_doc"}


def test_the_command_line_is_one_package() -> None:
    """The CLI's modules live in ``framepipe/cli/``; the package root keeps what the library
    and the server use too."""
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root == {"__init__", "__main__", "_installation", "_lazy", "_serve_process", "errors"}
    assert (PACKAGE / "cli" / "__main__.py").is_file()


def test_lazy_exports_have_one_home() -> None:
    """A package that loads a name on first use does it with ``framepipe._lazy.lazy_getattr``,
    not with a module ``__getattr__`` of its own."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_lazy.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name == "__getattr__"
            ):
                offences.append(str(path.relative_to(PACKAGE)))
    assert not offences, offences
