"""The TLS layer's byte handling without sockets: a real TLS client (an SSLObject over
memory BIOs) talks to a real `TlsStream` through `Wire`, a stand-in for the socket's
transport that only collects what the stream writes. The loop's reads are played by
copying the client's bytes into the acceptor's shared buffer in chunks of any size, so
every way a read can cut the TLS records (inside a 5-byte header included) is reached."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.certs import self_signed
from dataplane.tls import CertificateSet, _base_context, front_context, load_certificate
from dataplane.tls_stream import READ_SIZE, TlsAcceptor, TlsStream
from lbwire.snapshot import Certificate, Tls

pytestmark = pytest.mark.unit

CERT, KEY = self_signed(["localhost"])


class Wire:
    """The raw socket's transport as the stream sees it: writes are collected."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: Any) -> None:
        self.sent += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.sent += part

    def take(self) -> bytes:
        data = bytes(self.sent)
        self.sent.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class App(asyncio.Protocol):
    """The app protocol: what it was told, in order."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.keep_open = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")


def server_context() -> ssl.SSLContext:
    context = _base_context("1.2")
    load_certificate(context, Certificate(certificate_pem=CERT, private_key_pem=KEY))
    return context


class Pair:
    """A client SSLObject and a server TlsStream joined by hand."""

    def __init__(
        self, chunks: list[int] | None = None, context: ssl.SSLContext | None = None
    ) -> None:
        self.app = App()
        self.acceptor = TlsAcceptor(context or server_context(), lambda: self.app, 10.0)
        self.stream = TlsStream(self.acceptor)
        self.wire = Wire()
        self.stream.connection_made(self.wire)  # type: ignore[arg-type]
        client = ssl.create_default_context(cadata=CERT)
        self.c_in, self.c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client.wrap_bio(self.c_in, self.c_out, server_hostname="localhost")
        self.chunks = chunks or [READ_SIZE]
        self.turn = 0
        self.most_pending = 0

    def to_server(self, data: bytes) -> None:
        """Deliver `data` as the loop would, in reads of the sizes given, cycling."""
        pos = 0
        while pos < len(data):
            size = min(self.chunks[self.turn % len(self.chunks)], len(data) - pos, READ_SIZE)
            self.turn += 1
            self.acceptor.view[:size] = data[pos : pos + size]
            self.stream.buffer_updated(size)
            shared = self.acceptor.incoming.pending + self.acceptor.outgoing.pending
            self.most_pending = max(self.most_pending, shared)
            pos += size

    def to_client(self) -> None:
        self.c_in.write(self.wire.take())

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.to_server(self.c_out.read())
                self.to_client()
        self.to_server(self.c_out.read())  # TLS 1.3: the client's Finished
        assert self.app.events == ["made"]

    def client_read(self) -> bytes:
        self.to_client()
        out = bytearray()
        while True:
            try:
                data = self.client.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not data:
                return bytes(out)
            out += data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=6),
    chunks=st.lists(st.integers(min_value=1, max_value=40_000), min_size=1, max_size=8),
)
async def test_every_byte_arrives_however_reads_cut_the_records(
    sizes: list[int], chunks: list[int]
) -> None:
    """Any split of the ciphertext (1-byte reads included, so record headers are cut)
    delivers the plaintext exactly, and the shared BIOs are empty after every read."""
    pair = Pair(chunks)
    pair.handshake()
    sent = b"".join(bytes([n % 251]) * n for n in sizes)
    for n in sizes:
        pair.client.write(bytes([n % 251]) * n)
    pair.to_server(pair.c_out.read())
    assert bytes(pair.app.data) == sent
    assert pair.most_pending == 0


async def test_writes_are_encrypted_a_record_at_a_time_and_arrive_whole() -> None:
    pair = Pair()
    pair.handshake()
    message = bytes(range(256)) * 4096  # 1 MiB
    pair.app.transport.write(message)
    assert pair.acceptor.outgoing.pending == 0  # every record went to the socket
    assert pair.client_read() == message


async def test_a_peers_close_notify_is_eof_and_close_sends_ours() -> None:
    pair = Pair()
    pair.handshake()
    pair.app.keep_open = True  # a tunnel that still has the backend's Close to send
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()  # the client's close_notify
    pair.to_server(pair.c_out.read())
    assert pair.app.events == ["made", "eof"]
    pair.app.transport.write(b"after")  # TLS 1.3 half-close: the server still writes
    assert pair.client_read() == b"after"
    pair.app.transport.close()
    assert pair.wire.closed
    pair.to_client()
    with pytest.raises(ssl.SSLZeroReturnError):  # the server's close_notify: a clean end
        pair.client.read(10)


async def test_a_raw_eof_is_eof_too_and_the_app_hears_of_the_loss_once() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.stream.eof_received() is True  # the stream closes the socket itself
    assert pair.app.events == ["made", "eof"]
    assert pair.wire.closed  # the app did not keep it open: close_notify, then close
    pair.stream.eof_received()
    pair.stream.connection_lost(None)
    pair.stream.connection_lost(None)
    assert pair.app.events == ["made", "eof", "lost"]


async def test_paused_reading_holds_bytes_until_resumed() -> None:
    pair = Pair()
    pair.handshake()
    pair.app.transport.pause_reading()
    assert not pair.wire.reading
    pair.client.write(b"held")
    pair.to_server(pair.c_out.read())  # a read the loop had started before the pause
    assert pair.app.data == b""
    pair.app.transport.resume_reading()
    await asyncio.sleep(0)  # delivered from the loop, not inside resume_reading
    await asyncio.sleep(0)
    assert pair.app.data == b"held"
    assert pair.wire.reading


async def test_a_malformed_client_hello_gets_an_alert_and_the_socket_closes() -> None:
    pair = Pair()
    pair.to_server(b"\x16\x03\x01\x00\x05" + b"\x01\x00\x00\x01\x00")  # a 1-byte hello
    assert pair.wire.closed
    assert pair.wire.sent[:1] == b"\x15"  # an alert record (decode_error)
    assert pair.app.events == []


async def test_plain_http_to_the_tls_port_is_closed_at_its_first_bytes() -> None:
    pair = Pair()
    pair.to_server(b"GET / HTTP/1.1\r\n")  # no record of this "length" ever completes
    assert pair.wire.closed
    assert pair.app.events == []


async def test_a_record_longer_than_tls_allows_fails_at_its_header() -> None:
    pair = Pair()
    pair.handshake()
    pair.to_server(b"\x17\x03\x03\xff\xff" + bytes(40_000))  # 64 KiB claimed
    assert pair.wire.aborted
    assert pair.stream.is_closing()
    assert pair.most_pending == 0  # the rest of the read is dropped, not left for others


def observed_front(failures: list[ssl.SSLError]) -> ssl.SSLContext:
    """The listener's kind of context: SNI switch and a failure observer."""
    certificates = CertificateSet(
        Tls(certificates=[Certificate(certificate_pem=CERT, private_key_pem=KEY)])
    )
    return front_context(lambda: certificates, "1.2", failures.append)


async def test_a_refused_handshake_is_reported_once_to_the_contexts_observer() -> None:
    failures: list[ssl.SSLError] = []
    pair = Pair(context=observed_front(failures))
    pair.to_server(b"\x16\x03\x01\x00\x05" + b"\x01\x00\x00\x01\x00")
    assert pair.wire.closed
    assert len(failures) == 1 and "LENGTH_TOO_SHORT" in str(failures[0]), failures


async def test_the_app_gets_a_public_ssl_object_from_the_bare_one_the_stream_keeps() -> None:
    """The stream keeps OpenSSL's C object alone (no ssl.SSLObject and weakref per
    connection); get_extra_info still answers with an ssl.SSLObject over it."""
    failures: list[ssl.SSLError] = []
    pair = Pair(context=observed_front(failures))
    pair.handshake()
    assert not isinstance(pair.stream.sslobj, ssl.SSLObject)
    view = pair.app.transport.get_extra_info("ssl_object")
    assert isinstance(view, ssl.SSLObject)
    assert view.version() == "TLSv1.3" and view.server_side
    assert view.selected_alpn_protocol() is None  # the client offered none
    assert view.getpeercert(binary_form=True) is None  # no client certificate asked
    assert pair.app.transport.get_extra_info("cipher") == view.cipher()
    pair.app.transport.close()  # close_notify through the bare object's shutdown
    pair.to_client()
    assert pair.client.read(10) == b""  # the server's close_notify (none: SSLWantReadError)
    assert failures == []


async def test_data_and_a_close_notify_in_one_small_read_are_both_heard() -> None:
    pair = Pair()
    pair.handshake()
    pair.app.keep_open = True
    pair.client.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.to_server(pair.c_out.read())  # two records, one read
    assert bytes(pair.app.data) == b"last words"
    assert pair.app.events == ["made", "eof"]
    assert pair.most_pending == 0
