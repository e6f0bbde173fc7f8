"""The HTTP gateway: the stream manager's control plane over HTTP (extra ``http``).

A client of the manager like any other (it talks to it through
:class:`~framepipe.client.StreamManagerClient`), so it imports ``client`` and ``protocol`` only:
``framepipe serve --http-port`` runs it in the manager's process and event loop, and it could
as well run beside a manager elsewhere.

- :mod:`~framepipe.gateway.app`: the FastAPI application and its routes;
- :mod:`~framepipe.gateway.models`: typed request and response bodies (the OpenAPI schema);
- :mod:`~framepipe.gateway.errors`: error → status code and body;
- :mod:`~framepipe.gateway.streams`: results pushed to readers (one drain, fanned out);
- :mod:`~framepipe.gateway.runner`: uvicorn on the caller's event loop;
- :mod:`~framepipe.gateway.settings`: the gateway's settings;
- :mod:`~framepipe.gateway.demo`: the WebRTC demo page (``/webrtc``).
"""

from framepipe.gateway.settings import GatewaySettings, GatewaySettingsError

__all__ = ["Gateway", "GatewaySettings", "GatewaySettingsError", "create_app"]


def __getattr__(name: str) -> object:
    # FastAPI and uvicorn load only when the gateway is used (``framepipe serve`` without
    # --http-port, and installs without the ``http`` extra, never import them).
    if name == "Gateway":
        from framepipe.gateway.runner import Gateway

        return Gateway
    if name == "create_app":
        from framepipe.gateway.app import create_app

        return create_app
    raise AttributeError(f"module 'framepipe.gateway' has no attribute {name!r}")
