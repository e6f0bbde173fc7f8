"""The gateway application, built without a server: its schema and its extension point."""

from __future__ import annotations

from fastapi import APIRouter

from framepipe.gateway.app import GatewayContext, ManagerAddress, create_app
from framepipe.gateway.settings import GatewaySettings
from framepipe.gateway.streams import ResultStreams


def context() -> GatewayContext:
    return GatewayContext(
        settings=GatewaySettings(),
        manager=ManagerAddress("127.0.0.1", 1),
        streams=ResultStreams(batch=1, poll_s=1.0),
    )


def test_failures_are_json_everywhere_and_never_422() -> None:
    schema = create_app(context()).openapi()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, (path, method)
            for code, response in responses.items():
                if code >= "400":
                    assert list(response.get("content", {})) == ["application/json"], (path, code)


def test_more_routes_plug_in_for_metrics_later() -> None:
    metrics = APIRouter()

    @metrics.get("/metrics")
    async def render() -> str:
        return ""

    app = create_app(context(), routers=[metrics])
    assert "/metrics" in app.openapi()["paths"]
