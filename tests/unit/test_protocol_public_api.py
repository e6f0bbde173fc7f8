"""The public names of framepipe.protocol and framepipe.client are what they claim."""

from __future__ import annotations

import inspect

import framepipe.client
import framepipe.protocol
from framepipe.client import StreamManagerClient, SyncStreamManagerClient
from framepipe.server.manager.tcp import CommandHandler

CLIENT_METHODS = {
    "list_pipelines",
    "initialise_pipeline",
    "initialise_webrtc_pipeline",
    "get_status",
    "pause_pipeline",
    "mute_pipeline",
    "resume_pipeline",
    "consume_pipeline_result",
    "terminate_pipeline",
    "get_metrics",
    "send",
    "exchange",
}


def test_every_exported_name_exists() -> None:
    for module in (framepipe.protocol, framepipe.client):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)
        assert len(set(module.__all__)) == len(module.__all__)


def test_both_clients_offer_the_same_methods() -> None:
    for cls in (StreamManagerClient, SyncStreamManagerClient):
        assert set(dir(cls)) >= CLIENT_METHODS, cls
    for name in CLIENT_METHODS - {"exchange", "send"}:
        asynchronous = inspect.signature(getattr(StreamManagerClient, name))
        synchronous = inspect.signature(getattr(SyncStreamManagerClient, name))
        assert list(asynchronous.parameters) == list(synchronous.parameters), name
        assert inspect.iscoroutinefunction(getattr(StreamManagerClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(SyncStreamManagerClient, name)), name


def test_init_classmethod_matches_the_reference_client() -> None:
    parameters = list(inspect.signature(StreamManagerClient.init).parameters)
    assert parameters[:3] == ["host", "port", "operations_timeout"]


def test_command_handler_protocol() -> None:
    assert list(inspect.signature(CommandHandler.handle).parameters) == [
        "self",
        "request_id",
        "command",
    ]
