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

from framepipe._lazy import lazy_getattr
from framepipe.gateway.settings import GatewaySettings, GatewaySettingsError

__all__ = ["Gateway", "GatewaySettings", "GatewaySettingsError", "create_app"]


# FastAPI and uvicorn load only when the gateway is used (``framepipe serve`` without
# --http-port, and installs without the ``http`` extra, never import them).
__getattr__ = lazy_getattr(
    __name__, {"Gateway": "framepipe.gateway.runner", "create_app": "framepipe.gateway.app"}
)
