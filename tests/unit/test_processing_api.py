"""The public surface of framepipe.core.processing is what it claims."""

from __future__ import annotations

import importlib
import inspect
import types

import framepipe.core.processing as processing


def test_every_exported_name_exists() -> None:
    missing = [name for name in processing.__all__ if not hasattr(processing, name)]
    assert not missing
    assert sorted(processing.__all__) == processing.__all__


def test_no_submodule_shadows_an_exported_name() -> None:
    # importing a submodule sets it as an attribute of the package; one named like an
    # export would replace the lazily loaded object with the module
    for module in set(processing._EXPORTS.values()):
        importlib.import_module(module)
    shadowed = [
        name
        for name in processing.__all__
        if isinstance(getattr(processing, name), types.ModuleType)
    ]
    assert not shadowed


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
