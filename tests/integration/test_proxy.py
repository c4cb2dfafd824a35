"""WS and WSS through the data plane to real websockets backends."""

from __future__ import annotations

import os
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request

from tests.integration.conftest import TlsFiles, listener, snapshot, url
from tests.integration.tls_clients import https_listener


async def test_ws_echo_text_binary_and_fragmented(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    async with connect(url(runtime)) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        payload = os.urandom(5000)
        await ws.send(payload)
        assert await ws.recv() == payload
        await ws.send(["frag", "men", "ted"])
        assert await ws.recv() == "fragmented"
        await ws.send("whoami")
        assert await ws.recv() == backend.name


async def test_ten_mib_message_with_raised_limit(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]}, limits={"maxMessageBytes": 16 * 1024 * 1024}
    )
    runtime = await dataplane(snapshot(config))
    async with connect(url(runtime), max_size=None) as ws:
        payload = os.urandom(10 * 1024 * 1024)
        await ws.send(payload)
        assert await ws.recv() == payload


async def test_wss_echo_with_certificate_from_config(
    backends: Any, dataplane: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    runtime = await dataplane(snapshot(config))
    async with connect(url(runtime, "wss"), ssl=tls.client_context) as ws:
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
        assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.3", "TLSv1.2")


async def test_subprotocol_and_permessage_deflate_negotiated_with_backend(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1, subprotocols=["chat.v2"])
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    async with connect(url(runtime), subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response.headers["X-Backend"] == backend.name
        text = "compressible " * 1000
        await ws.send(text)
        assert await ws.recv() == text


async def test_forwarded_headers_reach_the_backend(dataplane: Any) -> None:
    seen: list[Request] = []

    def capture(connection: ServerConnection, request: Request) -> None:
        seen.append(request)

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=capture) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]})
        runtime = await dataplane(snapshot(config))
        headers = {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9"}
        async with connect(url(runtime, path="/chat?room=1"), additional_headers=headers) as ws:
            await ws.send("x")
            await ws.recv()
    (request,) = seen
    assert request.path == "/chat?room=1"
    assert request.headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert request.headers["X-Forwarded-Proto"] == "http"
    assert request.headers["X-Forwarded-Port"] == str(runtime.listeners["ws"].config.port)
    assert request.headers["X-Real-IP"] == "127.0.0.1"
    assert request.headers["Forwarded"] == "for=203.0.113.9, for=127.0.0.1;proto=http"
