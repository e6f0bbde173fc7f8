"""Cython extensions (used by framepipe.core only)."""
