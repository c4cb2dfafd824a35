"""The config server: data planes dial in over TLS and receive their snapshots.

A data plane opens `/v1/loadbalancers/<namespace>/<name>` with subprotocol
`wslb.config.v1` and `Authorization: Bearer <token>`. The token must be that
LoadBalancer's (checked before the upgrade, constant-time), so a data plane can only
ever read its own snapshot, which carries TLS private keys. After `hello`, each
connection is driven by a `PushSession` (lbwire): one snapshot in flight, newest
pending, stale nonces ignored.

This module owns connections and sessions only. It does not build snapshots or write
status: the reconciler calls `publish()`, and `on_change(lb)` tells it when to look at
`sessions(lb)` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from lbwire.errors import ProtocolError
from lbwire.messages import SUBPROTOCOL, Ack, Hello, Nack, SnapshotMessage, decode, encode
from lbwire.session import PushSession
from lbwire.snapshot import Snapshot

log = logging.getLogger("wslb.config_server")

PATH_PREFIX = "/v1/loadbalancers/"
HELLO_TIMEOUT = 10.0
MAX_CLIENT_MESSAGE = 1024 * 1024  # acks, nacks and hellos are small


class Metrics(Protocol):
    def pushed(self, lb: str) -> None: ...
    def acked(self, lb: str, seconds: float) -> None: ...
    def nacked(self, lb: str, reason: str) -> None: ...
    def connected(self, lb: str, count: int) -> None: ...


def load_balancer_of(path: str) -> str | None:
    """`/v1/loadbalancers/ns/name` -> `ns/name`; None for anything else."""
    if not path.startswith(PATH_PREFIX):
        return None
    parts = path[len(PATH_PREFIX) :].split("?", 1)[0].split("/")
    if len(parts) != 2 or not all(parts) or any(len(part) > 253 for part in parts):
        return None
    return f"{parts[0]}/{parts[1]}"


class _Peer:
    """One connected data plane."""

    def __init__(self, connection: ServerConnection, session: PushSession) -> None:
        self.connection = connection
        self.session = session
        self.sent_at: dict[str, float] = {}  # nonce -> monotonic send time
        self.sending: set[asyncio.Task[None]] = set()  # keeps send tasks referenced

    def send(self, message: SnapshotMessage | None) -> None:
        if message is None:
            return
        self.sent_at[message.nonce] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._send(encode(message)))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.connection.send(text)


class ConfigServer:
    def __init__(
        self,
        *,
        tokens: Callable[[str], str | None],
        ssl_context: ssl.SSLContext | None,
        on_change: Callable[[str], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.tokens = tokens
        self.ssl_context = ssl_context
        self.on_change = on_change
        self.metrics = metrics
        self.desired: dict[str, Snapshot] = {}
        self.peers: dict[str, dict[str, _Peer]] = {}  # lb -> node -> peer
        self.server: Server | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> int:
        self.server = await serve(
            self._handle,
            host,
            port,
            ssl=self.ssl_context,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._authorize,
            max_size=MAX_CLIENT_MESSAGE,
            server_header="wslb-controller",
        )
        bound = int(next(iter(self.server.sockets)).getsockname()[1])
        log.info("config server listening on %s:%d (tls=%s)", host, bound, bool(self.ssl_context))
        return bound

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def listening(self) -> bool:
        return self.server is not None and self.server.is_serving()

    # ------------------------------------------------------------------ reconciler API

    def publish(self, load_balancer: str, snapshot: Snapshot) -> None:
        """Set the desired state of `load_balancer`; push it to its connected data planes."""
        self.desired[load_balancer] = snapshot
        for peer in list(self.peers.get(load_balancer, {}).values()):
            message = peer.session.offer(snapshot)
            if message is not None and self.metrics is not None:
                self.metrics.pushed(load_balancer)
            peer.send(message)

    def forget(self, load_balancer: str) -> None:
        """The LoadBalancer is gone: drop its desired state and close its sessions."""
        self.desired.pop(load_balancer, None)
        for peer in list(self.peers.pop(load_balancer, {}).values()):
            asyncio.get_running_loop().create_task(
                peer.connection.close(1001, "load balancer deleted")
            )

    def sessions(self, load_balancer: str) -> list[PushSession]:
        return [peer.session for peer in self.peers.get(load_balancer, {}).values()]

    # ------------------------------------------------------------------ connections

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        load_balancer = load_balancer_of(request.path)
        if load_balancer is None:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown path\n")
        headers = request.headers.get_all("Authorization")
        scheme, _, offered = (headers[0] if len(headers) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not offered.strip():
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "bearer token required\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="wslb"'
            return response
        expected = self.tokens(load_balancer)
        offered = offered.strip()
        if expected is None or not hmac.compare_digest(offered.encode(), expected.encode()):
            log.warning("refused a data plane for %s: wrong token", load_balancer)
            return connection.respond(http.HTTPStatus.FORBIDDEN, "token refused\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        load_balancer = load_balancer_of(connection.request.path if connection.request else "")
        if load_balancer is None or connection.subprotocol != SUBPROTOCOL:
            await connection.close(1002, f"subprotocol {SUBPROTOCOL} required")
            return
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = decode(await connection.recv())
        except (TimeoutError, ProtocolError, ConnectionClosed) as exc:
            await connection.close(1002, f"expected hello: {exc}"[:120])
            return
        if not isinstance(hello, Hello) or hello.load_balancer != load_balancer:
            await connection.close(1008, "hello must name the load balancer of the path")
            return
        session = PushSession(
            hello.node,
            load_balancer,
            applied_version=hello.last_applied_version,
            applied_digest=hello.last_applied_digest,
        )
        peer = _Peer(connection, session)
        nodes = self.peers.setdefault(load_balancer, {})
        previous = nodes.get(hello.node)
        nodes[hello.node] = peer
        if previous is not None:
            await previous.connection.close(1001, "replaced by a newer connection")
        log.info(
            "data plane %s of %s connected (applied %s)",
            hello.node,
            load_balancer,
            hello.last_applied_version,
        )
        self._connected(load_balancer)
        desired = self.desired.get(load_balancer)
        if desired is not None:
            message = session.offer(desired)
            if message is not None and self.metrics is not None:
                self.metrics.pushed(load_balancer)
            peer.send(message)
        try:
            async for text in connection:
                self._receive(load_balancer, peer, text)
        except ConnectionClosed:
            pass
        finally:
            if self.peers.get(load_balancer, {}).get(hello.node) is peer:
                del self.peers[load_balancer][hello.node]
            log.info("data plane %s of %s disconnected", hello.node, load_balancer)
            self._connected(load_balancer)

    def _receive(self, load_balancer: str, peer: _Peer, text: str | bytes) -> None:
        try:
            message = decode(text)
        except ProtocolError as exc:
            log.warning("data plane %s sent a bad message: %s", peer.session.node, exc)
            return
        if isinstance(message, Ack):
            sent = peer.sent_at.pop(message.nonce, None)
            follow = peer.session.on_ack(message)
            if sent is not None and self.metrics is not None:
                self.metrics.acked(load_balancer, time.monotonic() - sent)
        elif isinstance(message, Nack):
            peer.sent_at.pop(message.nonce, None)
            follow = peer.session.on_nack(message)
            log.warning(
                "data plane %s nacked: %s: %s",
                peer.session.node,
                message.error.reason,
                message.error.message,
            )
            if self.metrics is not None:
                self.metrics.nacked(load_balancer, message.error.reason)
        else:
            log.warning("data plane %s sent an unexpected %s", peer.session.node, message.type)
            return
        if follow is not None and self.metrics is not None:
            self.metrics.pushed(load_balancer)
        peer.send(follow)
        self.on_change(load_balancer)

    def _connected(self, load_balancer: str) -> None:
        if self.metrics is not None:
            self.metrics.connected(load_balancer, len(self.peers.get(load_balancer, {})))
        self.on_change(load_balancer)
