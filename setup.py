"""Build the Cython extensions in framepipe/ext (everything else is in pyproject.toml)."""

from __future__ import annotations

import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

COMPILE_ARGS = ["-O3", "-std=c11", "-Wno-unused-function"]

extensions = [
    Extension(
        name=path[:-4].replace("/", "."),
        sources=[path],
        include_dirs=[np.get_include(), "framepipe/ext"],
        extra_compile_args=COMPILE_ARGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in sorted(glob.glob("framepipe/ext/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level="3",
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
    if extensions
    else [],
)
