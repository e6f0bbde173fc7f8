"""Async client of the stream manager (the reference's ``StreamManagerClient`` interface).

Each call opens a connection, sends one request, reads one response, closes — the protocol's
one-request-per-connection rule. A failure response raises the exception of its error type
(:mod:`framepipe.client.errors`); a manager that cannot be reached or does not answer within
``operations_timeout`` raises :class:`ConnectivityError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from framepipe.client import _exchange
from framepipe.client.errors import ConnectivityError, ProtocolViolationError
from framepipe.client.responses import (
    CommandResponse,
    ConsumePipelineResponse,
    InferencePipelineStatusResponse,
    InitializeWebRTCPipelineResponse,
    ListPipelinesResponse,
)
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
)
from framepipe.protocol.envelope import Envelope
from framepipe.protocol.framing import FrameDecoder, FramingError
from framepipe.protocol.payloads import InitialisePipelinePayload, InitialiseWebRTCPipelinePayload


class StreamManagerClient(_exchange.ClientSettings):
    async def list_pipelines(self) -> ListPipelinesResponse:
        return _exchange.list_pipelines_response(await self.send(ListPipelinesCommand()))

    async def initialise_pipeline(
        self, initialisation_request: InitialisePipelinePayload
    ) -> CommandResponse:
        return _exchange.command_response(
            await self.send(InitCommand(payload=initialisation_request))
        )

    async def initialise_webrtc_pipeline(
        self, initialisation_request: InitialiseWebRTCPipelinePayload
    ) -> InitializeWebRTCPipelineResponse:
        return _exchange.webrtc_response(
            await self.send(WebRTCCommand(payload=initialisation_request))
        )

    async def terminate_pipeline(self, pipeline_id: str) -> CommandResponse:
        return _exchange.command_response(
            await self.send(TerminateCommand(pipeline_id=pipeline_id))
        )

    async def pause_pipeline(self, pipeline_id: str) -> CommandResponse:
        """``mute``: the pipeline stops consuming frames but stays alive."""
        return _exchange.command_response(await self.send(MuteCommand(pipeline_id=pipeline_id)))

    mute_pipeline = pause_pipeline

    async def resume_pipeline(self, pipeline_id: str) -> CommandResponse:
        return _exchange.command_response(await self.send(ResumeCommand(pipeline_id=pipeline_id)))

    async def get_status(self, pipeline_id: str) -> InferencePipelineStatusResponse:
        return _exchange.status_response(await self.send(StatusCommand(pipeline_id=pipeline_id)))

    async def consume_pipeline_result(
        self,
        pipeline_id: str,
        excluded_fields: list[str] | None = None,
        max_entries: int | None = None,
    ) -> ConsumePipelineResponse:
        """One result entry (the reference's behaviour), or with ``max_entries`` (a framepipe
        extension) up to that many, oldest first, in ``entries``."""
        command = ConsumeResultCommand(
            pipeline_id=pipeline_id,
            excluded_fields=list(excluded_fields or []),
            max_entries=max_entries,
        )
        return _exchange.consume_response(await self.send(command))

    async def send(self, command: Command) -> Envelope:
        """Send one command; the successful response's envelope (failures raise)."""
        payload = await self.exchange(_exchange.request_bytes(command, self.auth_token))
        return _exchange.envelope_from_payload(payload)

    async def exchange(self, request: bytes) -> bytes:
        """Send raw request bytes on a new connection; the response payload (no header)."""
        try:
            async with asyncio.timeout(self.operations_timeout):
                return await self._exchange(request)
        except (OSError, TimeoutError) as error:  # ssl.SSLError is an OSError
            raise ConnectivityError(
                f"Could not communicate with the stream manager at {self.host}:{self.port}: "
                f"{type(error).__name__}: {error}"
            ) from error

    async def _exchange(self, request: bytes) -> bytes:
        async with asyncio.timeout(self.connect_timeout):
            if self.ssl_context is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            else:
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.tls_server_hostname,
                )
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(request)
            await writer.drain()
            decoder = FrameDecoder(self.max_message_size)
            while True:
                chunk = await reader.read(_exchange.READ_CHUNK)
                if not chunk:
                    raise ConnectivityError(
                        "The stream manager closed the connection before a complete answer "
                        f"({decoder.buffered} bytes received)"
                    )
                try:
                    messages = decoder.feed(chunk)
                except FramingError as error:
                    raise ProtocolViolationError(f"Malformed response frame: {error}") from error
                if messages:
                    return messages[0]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
