"""An open WebSocket connection keeps, for its access-log line, only what the line needs.

A browser's handshake carries kilobytes (cookies, User-Agent, extension offers) and the
connection may stay open for hours: when the fast path has read the target and Host and
nothing was forwarded, the connection keeps those two strings, not the head. The line
must still say what it said when the whole head was kept."""

from __future__ import annotations

import contextlib
import gc
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from dataplane.access_log import AccessLog
from dataplane.listener import SHARED_REQUEST_LENGTH, SHARED_REQUESTS
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.logs import LogFormat
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import listener, snapshot, wait_until

pytestmark = pytest.mark.integration

COOKIE = "session=" + "c" * 3000  # a browser's cookie jar; nothing else in the head is this long


def held_strings(root: object, depth: int = 3) -> list[bytes | str]:
    """Every bytes or str object reachable from `root` within `depth` references."""
    found: list[bytes | str] = []
    seen = {id(root)}
    level = [root]
    for _ in range(depth):
        following = []
        for item in level:
            for ref in gc.get_referents(item):
                if id(ref) in seen:
                    continue
                seen.add(id(ref))
                if isinstance(ref, (bytes, str)):
                    found.append(ref)
                elif not isinstance(ref, type):
                    following.append(ref)
        level = following
    return found


class Logged:
    """An in-process data plane whose access log writes JSON lines to memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.access_log = AccessLog(LogFormat.JSON, stream=self.stream)
        self.runtime = Runtime(Metrics(), access_log=self.access_log)

    def lines(self) -> list[dict[str, Any]]:
        """The lines written; whole once the block below has ended."""
        return [json.loads(text) for text in self.stream.getvalue().splitlines()]


@contextlib.asynccontextmanager
async def logged(config: dict[str, Any]) -> AsyncIterator[Logged]:
    """`config` (one listener) applied; at the end the data plane stops and every line
    is written."""
    plane = Logged()
    plane.access_log.start()
    await plane.runtime.apply(parse_snapshot(snapshot(config)))
    try:
        yield plane
    finally:
        await plane.runtime.shutdown(drain_timeout=0)
        plane.access_log.flush()
        plane.access_log.close()


@pytest.mark.parametrize("forwarding", [True, False])
async def test_an_open_tunnel_keeps_no_head_and_its_line_is_whole(
    backends: Any, forwarding: bool
) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        forwardedHeaders={"enabled": forwarding},
        keepalive={"intervalSeconds": 0},
    )
    async with logged(config) as plane:
        runtime = plane.runtime
        port = runtime.listeners["ws"].config.port
        async with connect(
            f"ws://127.0.0.1:{port}/chat/room?token=secret",
            ping_interval=None,
            additional_headers={"Cookie": COOKIE, "User-Agent": "Mozilla/5.0 (test)"},
        ) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            (connection,) = runtime.listeners["ws"].connections
            kept = [s for s in held_strings(connection) if len(s) >= len(COOKIE)]
            assert kept == [], f"an open tunnel holds its {len(kept[0])}-byte head"
        await wait_until(lambda: not runtime.listeners["ws"].connections)
    (line,) = plane.lines()
    assert (line["kind"], line["method"], line["status"]) == ("websocket", "GET", 101)
    assert line["host"] == f"127.0.0.1:{port}"
    assert line["path"] == "/chat/room"  # the query string stays out unless asked for
    # the chain the backend got: the client's address when this proxy adds it, else none
    assert line["forwarded_for"] == ("127.0.0.1" if forwarding else None)
    assert (line["messages_from_client"], line["close_code"]) == (1, 1000)


async def test_a_forwarded_request_keeps_its_chain_in_the_line(backends: Any) -> None:
    """A head with X-Forwarded-For takes the kept-head path: the chain comes from it."""
    (backend,) = await backends(1)
    config = listener(backends={"endpoints": [backend.endpoint]}, accessLog={"includeQuery": True})
    async with logged(config) as plane:
        runtime = plane.runtime
        port = runtime.listeners["ws"].config.port
        async with connect(
            f"ws://127.0.0.1:{port}/feed?since=5",
            ping_interval=None,
            additional_headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"},
        ) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        await wait_until(lambda: not runtime.listeners["ws"].connections)
    (line,) = plane.lines()
    assert line["path"] == "/feed?since=5"
    assert line["forwarded_for"] == "198.51.100.7, 203.0.113.9, 127.0.0.1"


async def test_tunnels_to_one_path_share_what_their_lines_need(backends: Any) -> None:
    """Sockets of one app mostly share target and Host: one pair serves them all, so the
    log costs an open connection no memory of its own; the sharing stays bounded."""
    (backend,) = await backends(1)
    async with logged(listener(backends={"endpoints": [backend.endpoint]})) as plane:
        site = plane.runtime.listeners["ws"]
        async with (
            connect(f"ws://127.0.0.1:{site.config.port}/live", ping_interval=None) as one,
            connect(f"ws://127.0.0.1:{site.config.port}/live", ping_interval=None) as two,
        ):
            for ws in (one, two):
                await ws.send("hi")
                assert await ws.recv() == "hi"
            first, second = site.connections
            assert first.head == ("/live", f"127.0.0.1:{site.config.port}")
            assert first.head is second.head
        # bounded: distinct pairs beyond the limit forget the older ones; long ones are
        # never kept
        for index in range(3 * SHARED_REQUESTS):
            site.logged_request(f"/room/{index}", "h")
        assert len(site._logged_requests) <= SHARED_REQUESTS
        long = "/" + "x" * SHARED_REQUEST_LENGTH
        assert site.logged_request(long, "h") == (long, "h")
        assert (long, "h") not in site._logged_requests
    assert len(plane.lines()) == 2
