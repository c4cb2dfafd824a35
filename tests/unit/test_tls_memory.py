"""The memory BIOs of a listener's TLS connections are shared (`TlsAcceptor.incoming`,
`.outgoing`): a connection holds no BIO and no BIO buffer. What keeps one connection's
bytes from another's is that every call of a stream leaves both BIOs empty; these tests
interleave several real TLS clients byte by byte, records cut anywhere, and check that
each side gets exactly its own bytes and the BIOs are empty after every call."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.tls_stream import TlsAcceptor, TlsStream
from tests.unit.test_tls_stream import CERT, App, Wire, server_context

pytestmark = pytest.mark.unit


class Client:
    """One real TLS client joined by hand to its stream on a shared acceptor."""

    def __init__(self, acceptor: TlsAcceptor, apps: list[App]) -> None:
        self.acceptor = acceptor
        self.app = App()
        apps.append(self.app)
        self.stream = TlsStream(acceptor)
        self.wire = Wire()
        self.stream.connection_made(self.wire)  # type: ignore[arg-type]
        context = ssl.create_default_context(cadata=CERT)
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        self.queue = b""  # ciphertext on its way to the server, delivered in pieces
        self.received = bytearray()

    def deliver(self, size: int) -> None:
        """One socket read of up to `size` queued bytes; the shared BIOs must be empty
        after it."""
        size = min(size, len(self.queue))
        self.acceptor.view[:size] = self.queue[:size]
        self.queue = self.queue[size:]
        self.stream.buffer_updated(size)
        assert self.acceptor.incoming.pending == 0
        assert self.acceptor.outgoing.pending == 0

    def pump(self) -> None:
        """Move what the client wrote to the queue and what the server wrote to the client."""
        self.queue += self.c_out.read()
        self.c_in.write(self.wire.take())
        while True:
            try:
                data = self.client.read(65536)
            except ssl.SSLWantReadError:
                return
            if not data:
                return
            self.received += data

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.pump()
                self.deliver(len(self.queue))
                self.pump()
        self.pump()  # the client's Finished
        self.deliver(len(self.queue))
        assert self.app.events == ["made"]  # the acceptor made the apps in this order


def shared_acceptor(count: int) -> tuple[TlsAcceptor, list[Client]]:
    apps: list[App] = []
    made = iter(apps)
    acceptor = TlsAcceptor(server_context(), lambda: next(made), 10.0)
    clients = [Client(acceptor, apps) for _ in range(count)]
    return acceptor, clients


async def test_a_connection_holds_no_bio_of_its_own() -> None:
    acceptor, clients = shared_acceptor(2)
    for client in clients:
        client.handshake()
        held = [getattr(client.stream, name) for name in TlsStream.__slots__]
        assert not any(isinstance(value, ssl.MemoryBIO) for value in held)
    assert isinstance(acceptor.incoming, ssl.MemoryBIO)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 40_000), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    reads=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 20_000)), min_size=1),
)
async def test_interleaved_connections_each_get_exactly_their_own_bytes(
    messages: list[tuple[int, int, bool]], reads: list[tuple[int, int]]
) -> None:
    """Three connections on one acceptor; messages each way in any order; the clients'
    ciphertext reaches the server in reads of any size, taken from the connections in
    any order, so one connection's record is cut while another's is fed."""
    _, clients = shared_acceptor(3)
    for client in clients:
        client.handshake()
    sent_up: list[bytes] = [b"", b"", b""]
    sent_down: list[bytes] = [b"", b"", b""]
    turn = 0
    for index, (who, size, upward) in enumerate(messages):
        client = clients[who]
        payload = bytes([index % 251 + 1]) * size
        if upward:
            client.client.write(payload)
            sent_up[who] += payload
            client.pump()
        else:
            client.app.transport.write(payload)
            sent_down[who] += payload
        # Some reads, from the connections the draw names.
        for _ in range(2):
            target, read = reads[turn % len(reads)]
            turn += 1
            clients[target].pump()
            clients[target].deliver(read)
    for client, up, down in zip(clients, sent_up, sent_down, strict=True):
        while client.queue:
            client.deliver(7_000)
        client.pump()
        assert bytes(client.app.data) == up
        assert bytes(client.received) == down
        assert not client.wire.closed and not client.wire.aborted


async def test_one_connection_failing_mid_record_leaves_the_others_whole() -> None:
    """A record of another connection waits half-fed in OpenSSL's buffer while one
    connection sends garbage and another closes (close_notify; OpenSSL then looks for
    the peer's in the shared BIO): each goes its own way, the waiting record arrives."""
    _, (waiting, failing, closing) = shared_acceptor(3)
    for client in (waiting, failing, closing):
        client.handshake()
    waiting.client.write(b"w" * 10_000)
    waiting.pump()
    waiting.deliver(4_000)  # the record's first part
    failing.queue = b"\x17\x03\x03\x00\x20" + bytes(32)  # a record that fails its tag
    failing.deliver(len(failing.queue))
    assert failing.wire.aborted
    closing.app.transport.close()
    assert closing.wire.closed
    closing.c_in.write(closing.wire.take())
    assert closing.client.read(10) == b""  # its close_notify, nothing else
    waiting.deliver(len(waiting.queue))
    assert bytes(waiting.app.data) == b"w" * 10_000
    waiting.app.transport.write(b"still here")
    waiting.pump()
    assert bytes(waiting.received) == b"still here"


async def test_a_paused_connections_bytes_wait_outside_the_shared_bio() -> None:
    _, (paused, other) = shared_acceptor(2)
    for client in (paused, other):
        client.handshake()
    paused.app.transport.pause_reading()
    paused.client.write(b"held")
    paused.pump()
    paused.deliver(len(paused.queue))
    other.client.write(b"passes")
    other.pump()
    other.deliver(len(other.queue))
    assert bytes(other.app.data) == b"passes"
    assert bytes(paused.app.data) == b""
    paused.app.transport.resume_reading()
    for _ in range(3):
        await asyncio.sleep(0)
    assert bytes(paused.app.data) == b"held"
