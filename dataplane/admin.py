"""The admin port: /metrics for Prometheus, /healthz (alive) and /readyz (config applied).

A deliberately tiny HTTP/1.1 server: one request per connection, bounded request size and
time. It binds to loopback unless told otherwise, because metrics name backends and
listeners; an empty host binds every IPv4 and IPv6 address (IPv6 clusters). /metrics
answers in OpenMetrics when the scraper's Accept header asks for it, else in the 0.0.4
text format. A worker's private Unix socket (see workers.py) also takes `PUT /config`:
the snapshot its parent holds the config channel for; never on the TCP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from dataplane.rejection import render_response
from lbwire.errors import StartupError
from lbwire.messages import MAX_MESSAGE_BYTES

log = logging.getLogger("wslb.admin")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
APPLY_TIMEOUT = 60.0  # binding sockets and loading certificates for a large snapshot

Apply = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""Takes a request body, returns (status, JSON body)."""


def header(head: bytes, name: bytes) -> str:
    """The value of header `name` (lower case) in a request head, or ""."""
    for line in head.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """`registry` encoded as the Accept header asks: (body, content type)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class AdminServer:
    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self.registry = registry
        self.ready = ready
        self.servers: list[asyncio.Server] = []
        self._apply: Apply | None = None

    async def start(self, host: str | None, port: int) -> int:
        """Listen on `host` (None: all addresses, both families); the port bound."""
        try:
            server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        except OSError as exc:
            where = f"[{host}]:{port}" if host and ":" in host else f"{host or '*'}:{port}"
            raise StartupError(
                f"cannot listen on the admin address {where}: {exc.strerror or exc}"
            ) from None
        self.servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        shown = "[::]+0.0.0.0" if host is None else (f"[{host}]" if ":" in host else host)
        log.info("admin on http://%s:%d (/metrics /healthz /readyz)", shown, bound)
        return bound

    async def start_unix(self, path: str, apply: Apply | None = None) -> None:
        """A worker's private admin socket, read (and fed with `PUT /config`) by its parent."""
        self._apply = apply
        self.servers.append(await asyncio.start_unix_server(self._serve, path))

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"PUT /config ") and self._apply is not None:
                writer.write(await self._put_config(head, reader))
            else:
                writer.write(await self.answer(head))
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _put_config(self, head: bytes, reader: asyncio.StreamReader) -> bytes:
        assert self._apply is not None
        length = header(head, b"content-length")
        if not length.isdigit() or int(length) > MAX_MESSAGE_BYTES:
            return render_response(413, "Content-Length missing or too large")
        async with asyncio.timeout(REQUEST_TIMEOUT):
            body = await reader.readexactly(int(length))
        async with asyncio.timeout(APPLY_TIMEOUT):
            status, answer = await self._apply(body)
        return _response(status, answer, "application/json")

    async def answer(self, head: bytes) -> bytes:
        """The whole HTTP response to a request head."""
        if len(head) > MAX_REQUEST:
            return render_response(431, "request too large")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return render_response(405, "only GET", [("Allow", "GET")])
        path = parts[1].split(b"?", 1)[0]
        if path == b"/healthz":
            return render_response(200, "ok")
        if path == b"/readyz":
            ready = await self.is_ready()
            return render_response(200, "ready") if ready else render_response(503, "not ready")
        if path == b"/metrics":
            body, content_type = await self.metrics(header(head, b"accept"))
            return _response(200, body, content_type)
        return render_response(404, "not found")

    async def is_ready(self) -> bool:
        return self.ready()

    async def metrics(self, accept: str) -> tuple[bytes, str]:
        """The exposition and its content type (the workers' parent merges instead)."""
        return render_metrics(self.registry, accept)


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 422: "Unprocessable Content"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body
