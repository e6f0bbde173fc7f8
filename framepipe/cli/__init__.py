"""The ``framepipe`` command line (``framepipe.cli:main``, ``python -m framepipe``): each
sub-command in a private module of this package."""

from framepipe.cli._main import main

__all__ = ["main"]
