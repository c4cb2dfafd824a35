"""A real browser as the WebSocket client: Debian's Chromium, headless, through the data plane.

One Chromium per module, driven over the DevTools Protocol (tests/integration/browser.py).
Every test loads a page from a loopback HTTP server, so the browser sends a real `Origin`,
and runs the page's own `new WebSocket(...)` against a data plane in this process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dataplane.runtime import Runtime
from tests.integration.browser import CHROMIUM, Chromium, Page, PageServer, spki_sha256_base64
from tests.integration.conftest import (
    TlsFiles,
    listener,
    raw_request,
    snapshot,
    url,
    wait_until,
)

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found: install Debian's chromium package "
        "(apt-get install chromium; hack/ci-packages.sh does)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def chromium(tls: TlsFiles) -> Iterator[Chromium]:
    # Trust exactly the test certificate's key, not every certificate.
    browser = Chromium.start(
        f"--ignore-certificate-errors-spki-list={spki_sha256_base64(tls.cert_pem)}"
    )
    yield browser
    browser.stop()


@pytest.fixture
async def page(chromium: Chromium, page_server: PageServer) -> AsyncIterator[Page]:
    async with chromium.page(page_server.origin + "/") as opened:
        yield opened


def rejections(runtime: Runtime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_rejections_total", {"listener": "ws", "reason": reason}
    )
    return value or 0.0


async def test_browser_websocket_text_binary_and_whoami(
    backends: Any, dataplane: Any, page: Page
) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    payload = bytes(range(256)) + os.urandom(1024)
    seen = await page.ws_talk(url(runtime), ["hello from chromium", payload, "whoami"])
    assert seen["opened"], seen
    assert seen["answers"] == ["hello from chromium", payload, backend.name]
    assert not seen["errored"]
    assert (seen["code"], seen["reason"], seen["wasClean"]) == (1000, "done", True)
    # Chromium offers permessage-deflate; the backend's choice comes back through the proxy.
    assert "permessage-deflate" in seen["extensions"]


async def test_browser_wss_trusts_the_self_signed_certificate_by_its_key(
    backends: Any, dataplane: Any, tls: TlsFiles, page: Page
) -> None:
    (backend,) = await backends(1)
    config = listener(
        "ws",
        protocol="HTTPS",
        tls={"certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}]},
        backends={"endpoints": [backend.endpoint]},
    )
    runtime = await dataplane(snapshot(config))
    target = url(runtime)
    assert target.startswith("wss://")
    payload = os.urandom(4096)
    seen = await page.ws_talk(target, ["over tls", payload, "whoami"])
    assert seen["answers"] == ["over tls", payload, backend.name], seen
    assert (seen["code"], seen["wasClean"]) == (1000, True)


async def test_browser_origin_allowed_and_refused(
    backends: Any, dataplane: Any, page: Page, page_server: PageServer
) -> None:
    (backend,) = await backends(1)
    endpoints = {"endpoints": [backend.endpoint]}
    allowed = await dataplane(
        snapshot(listener(backends=endpoints, allowedOrigins=[page_server.origin]))
    )
    seen = await page.ws_talk(url(allowed), ["whoami"])
    assert seen["answers"] == [backend.name], seen
    assert rejections(allowed, "origin") == 0

    refused = await dataplane(
        snapshot(listener(backends=endpoints, allowedOrigins=["https://app.example.com"]))
    )
    seen = await page.ws_talk(url(refused), ["whoami"])
    # A browser learns nothing of the 403: the handshake failed, so error, then close 1006.
    assert not seen["opened"]
    assert seen["errored"]
    assert (seen["code"], seen["wasClean"], seen["answers"]) == (1006, False, [])
    await wait_until(lambda: rejections(refused, "origin") == 1)


async def test_browser_sees_idle_timeout_close(backends: Any, dataplane: Any, page: Page) -> None:
    (backend,) = await backends(1)
    config = listener(backends={"endpoints": [backend.endpoint]}, idleTimeoutSeconds=1)
    runtime = await dataplane(snapshot(config))
    seen = await page.ws_talk(url(runtime))  # opens, sends nothing, waits for the close
    assert seen["opened"]
    assert (seen["code"], seen["reason"], seen["wasClean"]) == (1001, "idle timeout", True)
    assert 0.9 <= seen["seconds"] < 5, seen


def page_url(runtime: Runtime, name: str = "ws") -> str:
    """The listener's own origin, as a person would type it: http:// or https://."""
    return url(runtime, name).replace("ws", "http", 1)


async def demo_page(chromium: Chromium, origin: str) -> dict[str, Any]:
    """Load the echo backend's demo page from `origin` and wait for its result."""
    async with chromium.page(origin, ready="typeof demoResult === 'object'") as page:
        result: dict[str, Any] = await page.evaluate("demoResult")
        result["title"] = await page.evaluate("document.title")
        result["status"] = await page.evaluate("document.getElementById('status').textContent")
    return result


def fields_of(answer: bytes) -> list[tuple[str, str]]:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in head)]


async def test_demo_page_and_api_info_heads_from_the_echo_backend(backends: Any) -> None:
    """One Content-Type each, and a CSP that allows no inline code but the page's own."""
    (backend,) = await backends(1)
    page = await raw_request(backend.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 ")
    fields = fields_of(page)
    assert [v for n, v in fields if n == "content-type"] == ["text/html; charset=utf-8"]
    (csp,) = [v for n, v in fields if n == "content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp  # nothing external, no inline
    info = await raw_request(backend.port, b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [v for n, v in fields_of(info) if n == "content-type"] == ["application/json"]


async def test_demo_page_works_straight_from_the_echo_backend(
    backends: Any, chromium: Chromium
) -> None:
    """The page itself, with no load balancer: its CSP lets its script, fetch and ws:// run."""
    (backend,) = await backends(1)
    origin = f"http://127.0.0.1:{backend.port}/"
    seen = await demo_page(chromium, origin)
    assert seen.get("error") is None, seen
    assert seen["wsUrl"] == f"ws://127.0.0.1:{backend.port}/ws"
    assert seen["echo"] == seen["sent"] == "hello over ws"
    assert seen["http"] == {
        "name": backend.name,
        "peer": "127.0.0.1",
        "forwardedFor": None,
        "forwardedProto": None,
    }
    assert seen["wsBackend"] == backend.name
    assert (seen["ok"], seen["title"]) == (True, "wslb demo: ok"), seen


@pytest.mark.parametrize("protocol", ["HTTP", "HTTPS"])
async def test_browser_loads_the_demo_page_through_the_listener_and_its_websocket_echoes(
    backends: Any, dataplane: Any, tls: TlsFiles, chromium: Chromium, protocol: str
) -> None:
    """One listener serves the page, its fetch of /api/info and its same-origin ws:// or
    wss:// (the page picks the scheme after its own), as an app behind the LB needs."""
    pair = await backends(2)
    config = listener(backends={"scheduler": "rr", "endpoints": [b.endpoint for b in pair]})
    if protocol == "HTTPS":
        config["protocol"] = "HTTPS"
        pem = {"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}
        config["tls"] = {"certificates": [pem]}
    runtime = await dataplane(snapshot(config))
    seen = await demo_page(chromium, page_url(runtime))
    scheme = "wss" if protocol == "HTTPS" else "ws"
    assert seen["page"] == page_url(runtime), seen
    assert seen.get("error") is None, seen
    assert seen["wsUrl"] == url(runtime, path="/ws") and seen["wsUrl"].startswith(f"{scheme}:")
    assert seen["echo"] == seen["sent"] == f"hello over {scheme}"
    names = {b.name for b in pair}
    assert seen["http"]["name"] in names and seen["wsBackend"] in names, seen
    # The HTTP request went through the proxy, which said so in the forwarded fields.
    assert seen["http"]["forwardedProto"] == protocol.lower(), seen
    assert seen["http"]["forwardedFor"] == "127.0.0.1", seen
    assert (seen["ok"], seen["title"]) == (True, "wslb demo: ok"), seen
    assert seen["status"] == "HTTP and WebSocket answered through one listener"
