"""The admin port: /metrics for Prometheus, /healthz (alive) and /readyz (config applied).

A deliberately tiny HTTP/1.1 server: GET only, one request per connection, bounded
request size and time. It binds to loopback unless told otherwise, because metrics
name backends and listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dataplane.handshake import render_response

log = logging.getLogger("wslb.admin")

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        metrics_text: Callable[[], bytes] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.metrics_text = metrics_text or (lambda: generate_latest(self.registry))
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        bound = int(self.server.sockets[0].getsockname()[1])
        log.info("admin on http://%s:%d (/metrics /healthz /readyz)", host, bound)
        return bound

    async def start_unix(self, path: str) -> None:
        """A worker's private admin socket, read by its parent (see workers.py)."""
        self.server = await asyncio.start_unix_server(self._serve, path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
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

    async def answer(self, head: bytes) -> bytes:
        """The whole HTTP response to a request head (overridden by the workers' parent)."""
        return self._answer(head)

    def _answer(self, head: bytes) -> bytes:
        if len(head) > MAX_REQUEST:
            return render_response(431, "request too large")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return render_response(405, "only GET", [("Allow", "GET")])
        path = parts[1].split(b"?", 1)[0]
        if path == b"/healthz":
            return render_response(200, "ok")
        if path == b"/readyz":
            return (
                render_response(200, "ready") if self.ready() else render_response(503, "not ready")
            )
        if path == b"/metrics":
            body = self.metrics_text()
            head_lines = (
                "HTTP/1.1 200 OK\r\n"
                f"Content-Type: {CONTENT_TYPE_LATEST}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            return head_lines.encode() + body
        return render_response(404, "not found")
