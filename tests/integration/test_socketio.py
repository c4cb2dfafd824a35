"""A real Socket.IO app through the load balancer: why HTTP beside WebSocket, and sticky.

Socket.IO (the `socket.io` and `socket.io-client` npm packages, tests/apps/socketio) starts
every session with HTTP long-polling and then upgrades it to a WebSocket; every request
names its session, which lives in one backend process. Two such backends behind one
listener: with the sticky cookie every request and the upgrade reach the backend that holds
the session; without it the requests are spread and a backend answers 400 "Session ID
unknown". Node is required: without it these tests fail, saying what to install. The
browser test runs Socket.IO's own browser client in Debian's Chromium (skipped, saying so,
where Chromium is not installed, as in test_browser.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataplane.runtime import Runtime
from tests.apps import socketio_peer
from tests.apps.socketio_peer import SocketIoServer
from tests.integration.browser import CHROMIUM, Chromium, spki_sha256_base64
from tests.integration.conftest import TlsFiles, listener, snapshot, wait_until

COOKIE = "WSLB_STICKY"
MESSAGES = 3


@pytest.fixture(scope="session")
def node_modules() -> Path:
    try:
        return socketio_peer.install()
    except socketio_peer.PeerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
async def socketio_servers(
    node_modules: Path,
) -> AsyncIterator[Callable[[int], Awaitable[list[SocketIoServer]]]]:
    started: list[SocketIoServer] = []

    async def start(count: int) -> list[SocketIoServer]:
        for _ in range(count):
            name = f"socketio-{len(started) + 1}"
            started.append(await socketio_peer.start_server(node_modules, name))
        return started[-count:]

    yield start
    for server in started:
        await server.stop()


@pytest.fixture(scope="module")
def chromium(tls: TlsFiles) -> Iterator[Chromium]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (hack/ci-packages.sh does)")
    browser = Chromium.start(
        f"--ignore-certificate-errors-spki-list={spki_sha256_base64(tls.cert_pem)}"
    )
    yield browser
    browser.stop()


def sticky_listener(servers: list[SocketIoServer], protocol: str, tls: TlsFiles) -> dict[str, Any]:
    sticky = {"mode": "insert", "secret": "socket.io test secret"}
    backends = {"scheduler": "rr", "sticky": sticky, "endpoints": [s.endpoint for s in servers]}
    config = listener(backends=backends)
    if protocol == "HTTPS":
        pem = {"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}
        config.update(protocol="HTTPS", tls={"certificates": [pem]})
    return config


def http_url(runtime: Runtime, name: str = "ws") -> str:
    config = runtime.listeners[name].config
    return f"{'https' if config.tls else 'http'}://127.0.0.1:{config.port}"


def session_unknown(servers: list[SocketIoServer]) -> list[dict[str, Any]]:
    errors = [e for s in servers for e in s.seen("connection_error")]
    return [e for e in errors if e["message"] == "Session ID unknown"]


@pytest.mark.parametrize("protocol", ["HTTP", "HTTPS"])
async def test_socketio_polls_then_upgrades_and_echoes_through_a_sticky_listener(
    socketio_servers: Any,
    dataplane: Any,
    node_modules: Path,
    tls: TlsFiles,
    tmp_path: Path,
    protocol: str,
) -> None:
    """Each client's polling requests and its upgrade carry the inserted cookie, so all of
    them reach the backend that opened its session: it ends on websocket and echoes."""
    servers = await socketio_servers(2)
    runtime = await dataplane(snapshot(sticky_listener(servers, protocol, tls)))
    ca = tmp_path / "ca.crt"
    ca.write_text(tls.cert_pem)
    echoed_by: list[str] = []
    for _session in range(2):  # two sessions, each on one backend from start to end
        seen = await socketio_peer.run_client(node_modules, http_url(runtime), MESSAGES, ca=ca)
        assert seen["connected"] and seen["errors"] == [], str(seen)
        assert seen["transports"] == ["polling", "websocket"], str(seen)
        assert seen["transport"] == "websocket", str(seen)
        assert [a["message"] for a in seen["acks"]] == [f"message {n + 1}" for n in range(MESSAGES)]
        assert {a["transport"] for a in seen["acks"]} == {"websocket"}, str(seen)
        assert seen["cookies"] == [COOKIE], str(seen)
        assert seen["code"] == 0, str(seen)
        (backend,) = {a["backend"] for a in seen["acks"]}
        echoed_by.append(backend)

    # Each session was opened and upgraded on the backend that echoed it, and no request
    # ever reached the other one (report lines come through a pipe: wait for them).
    def sessions(event: str) -> list[str]:
        return sorted(s.name for s in servers for _ in s.seen(event))

    await wait_until(lambda: sessions("upgrade") == sorted(echoed_by))
    assert sessions("open") == sorted(echoed_by)
    for server in servers:
        assert [e["sid"] for e in server.seen("open")] == [
            e["sid"] for e in server.seen("upgrade")
        ], str(server.events)
    assert session_unknown(servers) == []


async def test_socketio_fails_without_stickiness_session_id_unknown(
    socketio_servers: Any, dataplane: Any, node_modules: Path
) -> None:
    """Why the sticky cookie is needed: spread round-robin over two backends, a request of
    the session reaches the backend that never opened it, which answers 400 "Session ID
    unknown" (Engine.IO's code 1), and the client never gets to echo over websocket."""
    servers = await socketio_servers(2)
    backends = {"scheduler": "rr", "endpoints": [s.endpoint for s in servers]}
    runtime = await dataplane(snapshot(listener(backends=backends)))
    seen = await socketio_peer.run_client(node_modules, http_url(runtime), MESSAGES, seconds=5)
    assert seen["code"] == 1, str(seen)
    assert seen["errors"], str(seen)
    assert not (seen["connected"] and seen["transport"] == "websocket" and seen["acks"]), str(seen)
    # An HTTP status the client saw is that 400, never the proxy's own (426, 502...).
    statuses = {e.get("description") for e in seen["errors"]} - {None}
    assert statuses <= {400}, str(seen)
    # The handshake went through: one backend opened the session; the other refused a
    # request of that same session.
    report = f"client saw {seen}; backends reported {[s.events for s in servers]}"
    try:
        await wait_until(lambda: bool(session_unknown(servers)), timeout=5)
    except AssertionError:
        raise AssertionError(f"no backend answered 'Session ID unknown': {report}") from None
    ((opener, sid),) = [(s, e["sid"]) for s in servers for e in s.seen("open")]
    refused = session_unknown(servers)
    assert {e["backend"] for e in refused} == {s.name for s in servers} - {opener.name}, report
    assert all(f"sid={sid}" in e["url"] and e["code"] == 1 for e in refused), report


@pytest.mark.parametrize("protocol", ["HTTP", "HTTPS"])
async def test_socketio_browser_client_upgrades_and_echoes_through_a_sticky_listener(
    socketio_servers: Any, dataplane: Any, tls: TlsFiles, chromium: Chromium, protocol: str
) -> None:
    """Chromium loads a backend's page through the listener and runs Socket.IO's browser
    client: the browser keeps the sticky cookie itself (no client option), polls, upgrades
    to websocket and echoes, all on the backend that served its session."""
    servers = await socketio_servers(2)
    runtime = await dataplane(snapshot(sticky_listener(servers, protocol, tls)))
    page_url = f"{http_url(runtime)}/?count={MESSAGES}"
    async with chromium.page(page_url, ready="typeof result === 'object'") as page:
        seen: dict[str, Any] = await page.evaluate("result", timeout=15)
    assert seen["connected"] and seen["errors"] == [], str(seen)
    assert seen["transports"] == ["polling", "websocket"], str(seen)
    assert seen["transport"] == "websocket", str(seen)
    assert [a["message"] for a in seen["acks"]] == [f"message {n + 1}" for n in range(MESSAGES)]
    ((backend, transport),) = {(a["backend"], a["transport"]) for a in seen["acks"]}
    assert transport == "websocket"
    (server,) = [s for s in servers if s.name == backend]
    await wait_until(lambda: len(server.seen("upgrade")) == 1)
    assert [e["sid"] for e in server.seen("open")] == [e["sid"] for e in server.seen("upgrade")]
    assert session_unknown(servers) == []
    assert [s.seen("open") for s in servers if s is not server] == [[]]
