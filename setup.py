"""Build the Cython extensions in framepipe/ext (everything else is in pyproject.toml).

The extensions are not optional: without them no pipeline runs, so a build that cannot find
their sources, or cannot compile them, fails instead of producing a pure-Python wheel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

EXT_DIR = Path("framepipe") / "ext"
EXTENSIONS = ("_spsc", "_preprocess")
# -g0 after Python's own -g: no debug info (nor the build's temporary paths) in the wheel.
COMPILE_ARGS = ["-O3", "-std=c11", "-Wno-unused-function", "-g0"]
LINK_ARGS = ["-s"]

missing = [name for name in EXTENSIONS if not (EXT_DIR / f"{name}.pyx").is_file()]
if missing:
    raise SystemExit(
        f"framepipe: the Cython sources {', '.join(f'{EXT_DIR}/{m}.pyx' for m in missing)} "
        "are missing; build from a git checkout or a complete sdist"
    )

extensions = [
    Extension(
        name=f"framepipe.ext.{name}",
        sources=[str(EXT_DIR / f"{name}.pyx")],
        include_dirs=[np.get_include(), str(EXT_DIR)],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in EXTENSIONS
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
