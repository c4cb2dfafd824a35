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
from tests.integration.conftest import TlsFiles, listener, snapshot, url, wait_until

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
