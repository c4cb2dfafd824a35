"""Request smuggling and limits through a listener: every ambiguous or malformed request
is refused with its status, the client connection is closed, and nothing reaches the
backend (docs/http.md, "Refusals")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dataplane.runtime import Runtime
from tests.integration.conftest import listener, snapshot
from tests.integration.http_backend import Client, HttpBackend, get

pytestmark = pytest.mark.integration

H = b"GET / HTTP/1.1\r\nHost: h\r\n"
P = b"POST / HTTP/1.1\r\nHost: h\r\n"

CASES: dict[str, tuple[bytes, int]] = {
    "content-length and transfer-encoding": (
        P + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding and content-length": (
        P + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    "content-length twice, equal": (P + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    "content-length twice, different": (
        P + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        400,
    ),
    "content-length list": (P + b"Content-Length: 1, 1\r\n\r\nx", 400),
    "content-length signed": (P + b"Content-Length: +1\r\n\r\nx", 400),
    "content-length hex": (P + b"Content-Length: 0x1\r\n\r\nx", 400),
    "transfer-encoding gzip": (P + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    "transfer-encoding chunked then gzip": (P + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    "transfer-encoding repeated": (
        P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "transfer-encoding xchunked": (P + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    "transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obs-fold": (H + b"X-A: 1\r\n folded\r\n\r\n", 400),
    "bare lf line end": (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    "bare cr in a value": (H + b"X-A: a\rb\r\n\r\n", 400),
    "nul in a value": (H + b"X-A: a\x00b\r\n\r\n", 400),
    "control byte in a value": (H + b"X-A: a\x01b\r\n\r\n", 400),
    "del in a value": (H + b"X-A: a\x7fb\r\n\r\n", 400),
    "space before the colon": (H + b"X-A : 1\r\n\r\n", 400),
    "space inside a name": (H + b"X A: 1\r\n\r\n", 400),
    "absolute target, other host": (
        b"GET http://evil.example/ HTTP/1.1\r\nHost: h\r\n\r\n",
        400,
    ),
    "absolute target, other port": (b"GET http://h:81/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "missing host": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    "host repeated": (H + b"Host: other\r\n\r\n", 400),
    "bad chunk size": (P + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400),
    "chunk longer than its size": (
        P + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "garbage chunk extension": (
        P + b"Transfer-Encoding: chunked\r\n\r\n1;\x01\r\na\r\n0\r\n\r\n",
        400,
    ),
    "h2c upgrade": (H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n", 400),
    "asterisk with get": (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "connect": (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 405),
    "http/2.0 version": (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    "head over 16 kib": (H + b"X-Pad: " + b"a" * 16 * 1024 + b"\r\n\r\n", 431),
    "more than 128 fields": (H + b"".join(b"X-%d: 1\r\n" % i for i in range(130)) + b"\r\n", 431),
}


@pytest.fixture
async def guarded(dataplane: Any) -> AsyncIterator[tuple[int, HttpBackend]]:
    backend = await HttpBackend().start()
    config = listener(backends={"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    yield runtime.listeners["ws"].config.port, backend
    await backend.stop()


@pytest.mark.parametrize("case", list(CASES))
async def test_smuggling_shaped_request_is_refused(
    guarded: tuple[int, HttpBackend], case: str
) -> None:
    port, backend = guarded
    data, status = CASES[case]
    client = await Client.connect(port)
    client.send(data)
    answer = await client.answer()
    assert answer.status == status, answer
    assert answer.field("Connection") == "close"
    assert await client.closed()
    client.close()
    assert backend.accepted == 0  # nothing reached the backend, not even a connection


@pytest.mark.parametrize("case", ["content-length and transfer-encoding", "obs-fold"])
async def test_refusal_after_a_good_request_answers_the_good_one_first(
    guarded: tuple[int, HttpBackend], case: str
) -> None:
    """A smuggled request pipelined behind a valid one never reaches the backend."""
    port, backend = guarded
    client = await Client.connect(port)
    client.send(get("/first") + CASES[case][0])
    first = await client.answer()
    refused = await client.answer()
    assert (first.status, refused.status) == (200, 400)
    assert await client.closed()
    client.close()
    assert [seen.target for seen in backend.requests] == ["/first"]


async def test_chunked_body_that_goes_bad_after_its_head_aborts_the_backend(
    guarded: tuple[int, HttpBackend],
) -> None:
    """The one refusal seen after the head went out: the backend gets no complete request."""
    port, backend = guarded
    client = await Client.connect(port)
    client.send(P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    import asyncio

    from tests.integration.conftest import wait_until

    await wait_until(lambda: backend.accepted == 1)
    await asyncio.sleep(0)
    client.send(b"zz\r\n")
    answer = await client.answer()
    assert answer.status == 400
    assert await client.closed()
    client.close()
    assert backend.requests == []  # its body never completed


async def test_lowered_max_header_bytes_applies_to_later_heads(dataplane: Any) -> None:
    backend = await HttpBackend().start()
    config = listener(backends={"endpoints": [backend.endpoint]}, limits={"maxHeaderBytes": 1024})
    runtime: Runtime = await dataplane(snapshot(config))
    client = await Client.connect(runtime.listeners["ws"].config.port)
    client.send(get())
    assert (await client.answer()).status == 200
    client.send(get(extra="X-Pad: " + "a" * 1100 + "\r\n"))
    assert (await client.answer()).status == 431
    assert await client.closed()
    client.close()
    await backend.stop()
    assert len(backend.requests) == 1
