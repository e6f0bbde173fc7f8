"""The WebRTC demo page: ``GET /webrtc``.

One static page, plain HTML and JavaScript (no build step): it asks for the camera, starts a
pipeline with ``POST /inference_pipelines/initialise_webrtc`` (the bundled ``centerface`` model
by default), and shows the camera, the annotated video that comes back, the fps and the
predictions that arrive on the data channel. A browser gives a page the camera only in a
secure context: ``http://localhost`` / ``http://127.0.0.1``, or HTTPS (README, "WebRTC").
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["demo_routes"]


@cache
def _page() -> str:
    return files("framepipe.gateway").joinpath("static/webrtc.html").read_text(encoding="utf-8")


def demo_routes() -> APIRouter:
    router = APIRouter(tags=["demo"])

    @router.get("/webrtc", response_class=HTMLResponse, include_in_schema=False)
    async def webrtc_demo() -> HTMLResponse:
        return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})

    return router
