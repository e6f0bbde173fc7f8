"""The HTTP gateway's FastAPI application: the reference's ``/inference_pipelines`` routes on
top of the async client, results pushed as Server-Sent Events, and probes for orchestrators.

Routes (the first eight as the reference's gateway names and shapes them):

- ``GET  /inference_pipelines/list``
- ``POST /inference_pipelines/initialise``          body: the ``init`` payload
- ``POST /inference_pipelines/initialise_webrtc``   body: the ``webrtc`` payload
- ``GET  /inference_pipelines/{pipeline_id}/status``
- ``POST /inference_pipelines/{pipeline_id}/pause`` (``mute``), ``.../resume``, ``.../terminate``
- ``GET  /inference_pipelines/{pipeline_id}/consume``  JSON body (as the reference's clients
  send it, on a GET) and/or query parameters: ``excluded_fields``, ``max_entries``
- ``GET  /inference_pipelines/{pipeline_id}/results/stream``  (text/event-stream, see
  :mod:`framepipe.gateway.streams`)
- ``GET  /healthz`` (the process answers), ``GET /readyz`` (the manager answers)
- ``GET  /webrtc``: the WebRTC demo page (:mod:`framepipe.gateway.demo`)

Every request carries its own credentials: ``Authorization: Bearer <token>`` is passed to the
manager as the request's ``auth_token``; the gateway holds no token of its own except for the
``/readyz`` probe, which returns no data. Errors: :mod:`framepipe.gateway.errors`.

More routes plug in through ``create_app(..., routers=[...])``: Prometheus' ``/metrics``
(:mod:`framepipe.gateway.metrics`) does. ``control_plane=False`` leaves the
``/inference_pipelines`` routes out (a metrics-only endpoint).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from framepipe.client import StreamManagerClient
from framepipe.client.responses import ConsumedEntry
from framepipe.gateway import errors
from framepipe.gateway.demo import demo_routes
from framepipe.gateway.models import (
    CommandResponse,
    ConsumeResultsPayload,
    ErrorResponse,
    HealthResponse,
    InferencePipelineStatusResponse,
    InitializeWebRTCPipelineResponse,
    ListPipelinesResponse,
    MaxEntries,
    ReadinessResponse,
    ResultEntry,
    StatusReport,
    StreamDropped,
    StreamEnd,
)
from framepipe.gateway.models import ConsumePipelineResponse as HttpConsumeResponse
from framepipe.gateway.settings import MAX_STREAM_BUFFER, GatewaySettings
from framepipe.gateway.streams import (
    DroppedEvent,
    EndEvent,
    Entry,
    ResultEvent,
    ResultStreams,
    StreamEvent,
    Subscription,
)
from framepipe.protocol.errors import AuthorisationError, FramepipeError
from framepipe.protocol.payloads import InitialisePipelinePayload, InitialiseWebRTCPipelinePayload

logger = logging.getLogger(__name__)

PipelineId = Annotated[
    str, Path(min_length=1, max_length=256, description="id of the pipeline (from initialise)")
]
ExcludedFields = Annotated[
    list[str] | None,
    Query(description="key to leave out of each output (e.g. `image`); repeatable"),
]
_READY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ManagerAddress:
    host: str
    port: int


@dataclass
class GatewayContext:
    """What the routes share: where the manager is, the settings, the result streams."""

    settings: GatewaySettings
    manager: ManagerAddress
    streams: ResultStreams
    probe_token: str | None = None

    def client(self, token: str | None, timeout: float | None = None) -> StreamManagerClient:
        return StreamManagerClient(
            host=self.manager.host,
            port=self.manager.port,
            operations_timeout=timeout or self.settings.operations_timeout_s,
            auth_token=token,
        )


_bearer = HTTPBearer(
    auto_error=False,
    description="the stream manager's shared token (FRAMEPIPE_TOKEN), when it requires one",
)


def _token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    return credentials.credentials if credentials is not None else None


Token = Annotated[str | None, Depends(_token)]

_FAILURES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "invalid_payload: the request (or the manager's check of it) found a bad field"),
        (401, "authorisation_error: missing or wrong bearer token"),
        (404, "not_found: no such pipeline"),
        (409, "operation_error: the manager refused in its current state"),
        (413, "payload_too_large: the body is larger than FRAMEPIPE_HTTP_MAX_BODY_BYTES"),
        (500, "internal_error"),
        (502, "protocol_error: the manager's answer was malformed"),
        (
            503,
            "capacity_error (RAM budget, shared memory: retry later) or connectivity_error "
            "(the manager does not answer)",
        ),
    )
}

_STREAM_DESCRIPTION = """
Results pushed as Server-Sent Events as the pipeline produces them; no polling loop needed.

Events:

- `event: result`, `id: <n>` (a per-pipeline sequence number), data: one result
  `{"outputs": [...], "frames_metadata": [...]}` (the shape of `consume`'s);
- `event: dropped`, data `{"dropped": n, "dropped_total": N}`: this reader fell behind by more
  than its buffer (`buffer`, default FRAMEPIPE_HTTP_STREAM_BUFFER) and lost its oldest results,
  like a full sink loses its oldest; sent just before the next result this reader gets;
- `event: end`, data `{"reason": "pipeline_gone"|"limit"|"error"|"shutdown", "message", "results",
  "dropped_total", "error"?}`: the last event;
- comment lines (`: ...`) keep the connection alive.

Several readers of one pipeline each receive every result drained while they are connected
(the gateway drains the pipeline's sink once and fans out). Other consumers of the sink
(`consume`, TCP clients) compete with the stream for results.

The event data's schemas are `StreamDropped` and `StreamEnd` in the components.
"""


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


#: One event of the results stream as an SSE parser reads it: its ``event`` name, its ``id``
#: (results: the per-pipeline sequence number) and its ``data``, JSON text whose shape each
#: event's description gives (``StreamDropped``, ``StreamEnd`` in the components). OpenAPI 3.0
#: and 3.1 give the schema of one event under ``schema`` (3.2 names it ``itemSchema``).
STREAM_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["result", "dropped", "end"]},
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}


SMALL_BODY_BYTES = 64 * 1024
"""A body up to this size is read whoever sends it (the manager judges the token); a larger one
is read only with the manager's token, when the gateway knows it."""


class _BodyLimit:
    """Refuse request bodies above ``max_bytes`` with 413, declared or streamed. When the
    gateway knows the manager's token (``token``: it runs with the manager), a body larger than
    ``SMALL_BODY_BYTES`` without that bearer token is refused with 401 before it is read: HTTP
    carries the token in a header, so a large body costs nothing until it is trusted."""

    def __init__(self, app: ASGIApp, max_bytes: int, token: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.token = token.encode() if token else None

    def _trusted(self, scope: Scope) -> bool:
        if self.token is None:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self.token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trusted = self._trusted(scope)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                failure = None
                if declared > self.max_bytes:
                    failure = errors.too_large(self.max_bytes)
                elif declared > SMALL_BODY_BYTES and not trusted:
                    failure = errors.failure_for(_untrusted_body())
                if failure is not None:
                    await _json_response(failure)(scope, receive, send)
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, "body too large")
                if received > SMALL_BODY_BYTES and not trusted:
                    raise HTTPException(401, "untrusted body")  # (FastAPI re-raises only these)
            return message

        await self.app(scope, limited, send)


class _HostCheck:
    """Without a token, anyone who can make a browser send a request can drive the manager:
    a web page whose name resolves to 127.0.0.1 (DNS rebinding) sends its own ``Host``, and a
    page on any site may send a cross-origin POST without a body (no CORS preflight for it).
    So a token-less gateway answers only requests whose ``Host`` is one of its names, and
    refuses a POST whose ``Origin`` is another site than the one it names (a CORS origin the
    operator configured excepted)."""

    def __init__(
        self, app: ASGIApp, allowed_hosts: frozenset[str], cors_origins: frozenset[str]
    ) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed_hosts = allowed_hosts
        self.cors_origins = cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        host_header = headers.get(b"host", b"").decode("latin-1").strip().lower()
        host = _host_name(host_header)
        problem = None
        if not self.any_host and host not in self.allowed_hosts:
            problem = (
                f"Host {host_header[:100]!r} is not a name of this gateway; it answers "
                "127.0.0.1, localhost and the names in FRAMEPIPE_HTTP_ALLOWED_HOSTS"
            )
        elif scope.get("method") == "POST" and b"origin" in headers:
            origin = headers[b"origin"].decode("latin-1").strip().lower()
            origin_host = _host_name(origin.partition("://")[2]) if "://" in origin else ""
            if origin not in self.cors_origins and origin_host != host:
                problem = (
                    f"a POST from the web origin {origin[:100]!r} is refused (cross-site "
                    "request to a gateway without a token; FRAMEPIPE_HTTP_CORS_ORIGINS "
                    "allows an origin)"
                )
        if problem is not None:
            failure = errors.failure_for(AuthorisationError(problem))
            await _json_response(failure)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(authority: str) -> str:
    """``host:port`` / ``[v6]:port`` → the host alone."""
    authority = authority.rstrip("/").split("/", 1)[0]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


#: Names a token-less gateway always answers to.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _untrusted_body() -> AuthorisationError:
    return AuthorisationError(
        f"A request body over {SMALL_BODY_BYTES} bytes needs the manager's token "
        "(missing or wrong bearer token)"
    )


def _json_response(failure: errors.HttpFailure) -> JSONResponse:
    return JSONResponse(
        failure.body.model_dump(mode="json", exclude_none=True),
        status_code=failure.status_code,
        headers=failure.headers,
    )


def _describe_validation(error: RequestValidationError) -> str:
    problems = []
    for item in error.errors():
        if item.get("type") == "json_invalid":  # loc is ("body", character offset)
            problems.append(_where_json_broke(item, error.body))
            continue
        location = ".".join(str(part) for part in item.get("loc", ()))
        problems.append(f"field '{location}': {item.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def _where_json_broke(item: dict[str, Any], body: object) -> str:
    """'the body is not valid JSON: <why> at line L, column C' (as json.loads counts them)."""
    reason = str((item.get("ctx") or {}).get("error") or "JSON decode error")
    location = item.get("loc", ())
    offset = location[-1] if location and isinstance(location[-1], int) else None
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    if offset is None or not isinstance(text, str):
        return f"the body is not valid JSON: {reason}"
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"the body is not valid JSON: {reason} at line {line}, column {column}"


def create_app(
    context: GatewayContext, *, routers: Sequence[APIRouter] = (), control_plane: bool = True
) -> FastAPI:
    """The gateway application serving ``context``'s manager (without the
    ``/inference_pipelines`` routes when ``control_plane`` is False)."""
    app = FastAPI(
        title="framepipe HTTP gateway",
        version="0.1.0",
        description="The stream manager's control plane over HTTP (the reference's "
        "/inference_pipelines routes), with results pushed as Server-Sent Events.",
    )
    app.state.gateway = context
    settings = context.settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes, token=context.probe_token)
    if context.probe_token is None:
        names = LOCAL_HOSTS | set(settings.allowed_hosts)
        if settings.http_host:
            names |= {settings.http_host.lower().strip("[]")}
        app.add_middleware(
            _HostCheck,
            allowed_hosts=frozenset(names),
            cors_origins=frozenset(o.lower() for o in settings.cors_origins),
        )
    _install_error_handlers(app, settings.max_body_bytes)
    if control_plane:
        app.include_router(_pipeline_routes(context))
    app.include_router(_probe_routes(context))
    app.include_router(demo_routes())
    for router in routers:
        app.include_router(router)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    async def on_framepipe_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FramepipeError)
        failure = errors.failure_for(exc)
        if failure.status_code >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return _json_response(failure)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _json_response(errors.invalid_request(_describe_validation(exc)))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 413:
            return _json_response(errors.too_large(max_body_bytes))
        if exc.status_code == 401:
            return _json_response(errors.failure_for(_untrusted_body()))
        if exc.status_code in (404, 405):
            return _json_response(
                errors.no_route(exc.status_code, request.method, request.url.path)
            )
        return _json_response(errors.invalid_request(str(exc.detail)))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _json_response(errors.unexpected(exc))

    app.add_exception_handler(FramepipeError, on_framepipe_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema, amended: no 422 (the gateway answers validation errors with 400),
    failures in JSON everywhere, and the stream's event data schemas in the components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.get("responses", {})
                    responses.pop("422", None)
                    # Failures are JSON on every route, the event stream's included (FastAPI
                    # would document them in the route's own media type).
                    for code, response in responses.items():
                        content = response.get("content", {})
                        if code >= "400" and "text/event-stream" in content:
                            content["application/json"] = content.pop("text/event-stream")
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["StreamDropped"] = StreamDropped.model_json_schema()
            end_schema = StreamEnd.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in end_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["StreamEnd"] = end_schema
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _pipeline_routes(context: GatewayContext) -> APIRouter:
    router = APIRouter(prefix="/inference_pipelines", responses=_FAILURES)

    @router.get(
        "/list",
        response_model=ListPipelinesResponse,
        summary="List active InferencePipelines",
        description="Ids of every pipeline the manager runs (idle workers are not listed).",
    )
    async def list_pipelines(token: Token) -> ListPipelinesResponse:
        response = await context.client(token).list_pipelines()
        return ListPipelinesResponse(
            status="success", context=response.context, pipelines=response.pipelines
        )

    @router.post(
        "/initialise",
        response_model=CommandResponse,
        summary="Starts new InferencePipeline",
        description="The manager's `init`: `context.pipeline_id` names the new pipeline.",
    )
    async def initialise(request: InitialisePipelinePayload, token: Token) -> CommandResponse:
        response = await context.client(token).initialise_pipeline(request)
        return CommandResponse(status="success", context=response.context)

    @router.post(
        "/initialise_webrtc",
        response_model=InitializeWebRTCPipelineResponse,
        summary="Establishes WebRTC peer connection and starts new InferencePipeline "
        "consuming video track",
        description="The manager's `webrtc`: the body is an `initialise` body plus "
        "`webrtc_offer` (and the reference's optional WebRTC fields); the answer carries the "
        "SDP answer and the new pipeline's id. An offer without video is invalid_payload (400).",
    )
    async def initialise_webrtc(
        request: InitialiseWebRTCPipelinePayload, token: Token
    ) -> InitializeWebRTCPipelineResponse:
        response = await context.client(token).initialise_webrtc_pipeline(request)
        return InitializeWebRTCPipelineResponse(
            status="success", context=response.context, sdp=response.sdp, type=response.type
        )

    @router.get(
        "/{pipeline_id}/status",
        response_model=InferencePipelineStatusResponse,
        summary="Get status of InferencePipeline",
        description="The pipeline's status report (the reference's, plus `framepipe`).",
    )
    async def status(pipeline_id: PipelineId, token: Token) -> InferencePipelineStatusResponse:
        response = await context.client(token).get_status(pipeline_id)
        return InferencePipelineStatusResponse(
            status="success",
            context=response.context,
            report=StatusReport.model_validate(response.report),
        )

    def _command(name: str, summary: str) -> None:
        async def run(pipeline_id: PipelineId, token: Token) -> CommandResponse:
            client = context.client(token)
            method = {
                "pause": client.pause_pipeline,
                "resume": client.resume_pipeline,
                "terminate": client.terminate_pipeline,
            }[name]
            response = await method(pipeline_id)
            return CommandResponse(status="success", context=response.context)

        run.__name__ = name
        router.post(
            f"/{{pipeline_id}}/{name}",
            response_model=CommandResponse,
            summary=summary,
            description=summary + ".",
        )(run)

    _command("pause", "Pauses the InferencePipeline (the manager's `mute`)")
    _command("resume", "Resumes the InferencePipeline")
    _command("terminate", "Terminates the InferencePipeline")

    @router.get(
        "/{pipeline_id}/consume",
        response_model=HttpConsumeResponse,
        response_model_exclude_unset=True,
        summary="Consumes InferencePipeline result",
        description="Pops the oldest result of the pipeline's sink (empty lists when there is "
        "none), or with `max_entries` up to that many, oldest first, in `entries`. Parameters "
        "come as a JSON body (the reference's clients send one with this GET) and/or as query "
        "parameters; excluded fields of both apply, the body's `max_entries` wins.",
    )
    async def consume(
        pipeline_id: PipelineId,
        token: Token,
        excluded_fields: ExcludedFields = None,
        max_entries: Annotated[MaxEntries | None, Query()] = None,
        request: Annotated[ConsumeResultsPayload | None, Body()] = None,
    ) -> HttpConsumeResponse:
        body_fields = request.excluded_fields if request is not None else []
        excluded = list(dict.fromkeys([*(excluded_fields or []), *body_fields]))
        if request is not None and request.max_entries is not None:
            max_entries = request.max_entries
        response = await context.client(token).consume_pipeline_result(
            pipeline_id, excluded_fields=excluded, max_entries=max_entries
        )
        first = ResultEntry.from_consumed(
            ConsumedEntry(outputs=response.outputs, frames_metadata=response.frames_metadata)
        )
        fields: dict[str, Any] = {}
        if max_entries is not None:  # `entries` only for the extension's callers
            fields["entries"] = [ResultEntry.from_consumed(entry) for entry in response.entries]
        return HttpConsumeResponse(
            status="success",
            context=response.context,
            outputs=first.outputs,
            frames_metadata=first.frames_metadata,
            **fields,
        )

    @router.get(
        "/{pipeline_id}/results/stream",
        response_class=EventStreamResponse,
        summary="Results pushed as they are produced (Server-Sent Events)",
        description=_STREAM_DESCRIPTION,
        responses={200: {"content": {"text/event-stream": {"schema": STREAM_EVENT_SCHEMA}}}},
    )
    async def stream_results(
        pipeline_id: PipelineId,
        token: Token,
        excluded_fields: ExcludedFields = None,
        limit: Annotated[
            int | None,
            Query(ge=1, description="end the stream after this many results"),
        ] = None,
        buffer: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_STREAM_BUFFER,
                description="results this reader may fall behind before it loses the oldest "
                "(default FRAMEPIPE_HTTP_STREAM_BUFFER)",
            ),
        ] = None,
    ) -> EventStreamResponse:
        client = context.client(token)
        # Answer a wrong id or token with its status code, before the stream's 200 is sent.
        await client.get_status(pipeline_id)

        async def fetch(pid: str, excluded: frozenset[str], max_entries: int) -> list[Entry]:
            response = await client.consume_pipeline_result(
                pid, excluded_fields=sorted(excluded), max_entries=max_entries
            )
            return [
                ResultEntry.from_consumed(entry).model_dump(mode="json")
                for entry in response.entries
            ]

        subscription = context.streams.subscribe(
            pipeline_id,
            fetch,
            capacity=buffer or context.settings.stream_buffer,
            excluded_fields=frozenset(excluded_fields or ()),
            limit=limit,
        )
        return EventStreamResponse(
            _sse(context, subscription),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def _sse(context: GatewayContext, subscription: Subscription) -> AsyncIterator[bytes]:
    keepalive = context.settings.stream_keepalive_s
    try:
        yield f": results of pipeline {subscription.pipeline_id}\n\n".encode()
        while not subscription.finished:
            if not await subscription.wait(keepalive):
                yield b": keep-alive\n\n"
                continue
            chunk = b"".join(_encode(event, subscription) for event in subscription.take())
            if chunk:
                yield chunk
    finally:
        context.streams.unsubscribe(subscription)


def _encode(event: StreamEvent, subscription: Subscription) -> bytes:
    if isinstance(event, ResultEvent):
        entry = event.entry
        excluded = subscription.excluded_fields
        if excluded:
            entry = {
                "outputs": [
                    None if out is None else {k: v for k, v in out.items() if k not in excluded}
                    for out in entry["outputs"]
                ],
                "frames_metadata": entry["frames_metadata"],
            }
        return b"event: result\nid: %d\ndata: %s\n\n" % (event.seq, orjson.dumps(entry))
    if isinstance(event, DroppedEvent):
        data = StreamDropped(dropped=event.dropped, dropped_total=event.dropped_total)
        return b"event: dropped\ndata: %s\n\n" % data.model_dump_json().encode()
    assert isinstance(event, EndEvent)
    error = (
        errors.failure_for(event.error).body if event.reason == "error" and event.error else None
    )
    end = StreamEnd(
        reason=event.reason,
        message=event.message,
        results=event.results,
        dropped_total=event.dropped_total,
        error=error,
    )
    return b"event: end\ndata: %s\n\n" % end.model_dump_json(exclude_none=True).encode()


def _probe_routes(context: GatewayContext) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get(
        "/healthz",
        response_model=HealthResponse,
        summary="Liveness: the gateway's process answers",
    )
    async def healthz() -> HealthResponse:
        return HealthResponse()

    @router.get(
        "/readyz",
        response_model=ReadinessResponse,
        summary="Readiness: the stream manager answers",
        responses={503: {"model": ReadinessResponse, "description": "the manager does not answer"}},
    )
    async def readyz() -> Any:
        client = context.client(context.probe_token, timeout=_READY_TIMEOUT_S)
        try:
            await client.list_pipelines()
        except FramepipeError as error:  # a ConnectivityError, mostly
            body = ReadinessResponse(status="not_ready", message=errors.one_line(str(error)))
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        return ReadinessResponse(status="ready")

    return router
