"""The public surface of framepipe.core.processing is what it claims."""

from __future__ import annotations

import inspect

import framepipe.core.processing as processing


def test_every_exported_name_exists() -> None:
    missing = [name for name in processing.__all__ if not hasattr(processing, name)]
    assert not missing
    assert sorted(processing.__all__) == processing.__all__


def test_contract_signatures() -> None:
    assert list(inspect.signature(processing.processing_spec_from_wire).parameters) == [
        "processing_configuration"
    ]
    assert list(inspect.signature(processing.build_processor).parameters) == ["spec"]
    assert list(inspect.signature(processing.Processor.compose).parameters) == [
        "self",
        "frames",
        "frames_metadata",
        "predictions",
    ]
    assert processing.Processor.model is None  # a processor names a model; it never runs one
