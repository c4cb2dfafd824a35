"""TLS termination for HTTPS (WSS) listeners over a plain TCP transport.

Why not `loop.create_server(ssl=...)`: uvloop's SSLProtocol mallocs a 256 KiB read
buffer per connection and writes whole socket reads and whole app writes into the
connection's memory BIOs, which never shrink: an idle WSS connection that once carried a
1 MiB message keeps ~620 KiB (hack/conn-memory.md). Here the raw socket's protocol is a
`TlsStream` (a BufferedProtocol): the loop reads into ONE buffer per listening socket
(`TlsAcceptor.view`), whose bytes go into the incoming memory BIO at once, at most
`MAX_FEED` bytes at a time with the plaintext read out between; writes are encrypted a
`SLICE` at a time and the ciphertext handed straight to the raw transport.

The two memory BIOs are the acceptor's too, shared by all its connections, because no
connection ever leaves a byte in them: every feed is read out at once (OpenSSL keeps a
record's first part in its own per-connection buffer until the rest comes, and frees
that buffer once the record is read: SSL_MODE_RELEASE_BUFFERS) and everything OpenSSL
writes is handed to the socket before the stream returns or calls the app. An OpenSSL
memory BIO keeps the largest buffer it ever needed, so per connection they held the
ClientHello's and the server flight's size for its whole life (1.3 KB idle here, 1.8 KB
more for a browser's ClientHello with a post-quantum key share) and about two records
after traffic (~44 KB), besides the two BIOs themselves (~0.7 KB): shared, an idle
connection holds none of it. The invariant is what keeps one connection's bytes from
another's: `_feed`, `write` and `close` end with both BIOs empty, and what a failure
leaves unread is dropped.

`TlsStream` is also the transport its app protocol (tunnel.ClientSide) sees: write, close
(close_notify, then close), abort, flow control both ways, get_extra_info. The app
protocol is made when the handshake completes, as uvloop does. Policy (certificates by
SNI, versions, ALPN, tickets) stays in the listener's SSLContext (dataplane/tls.py); the
context's failure observer (`tls.failure_observer`) hears of OpenSSL's refusals. This
module owns no policy and logs nothing: a failed or timed-out handshake closes the
socket quietly.

Chosen behaviours (uvloop's where it has one):
- a peer's close_notify, and a raw EOF without one, both reach the app as eof_received;
  if the app keeps the connection open, writing goes on (TLS 1.3 half-close), else the
  stream sends its own close_notify and closes;
- close() sends close_notify once the handshake is done and does not wait for the
  peer's (HAProxy and nginx do the same); abort() drops everything;
- a handshake failure sends OpenSSL's alert before closing (uvloop drops it);
- renegotiation is refused by the context (OP_NO_RENEGOTIATION); TLS 1.3 KeyUpdate is
  answered by OpenSSL inside read(); whatever OpenSSL writes is flushed after each read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Final

from dataplane.tls import failure_observer

#: Plaintext per SSL write and per SSL read: one TLS record's payload.
SLICE: Final = 16384
#: The most ciphertext fed to the incoming BIO at once: one record (TLS 1.3's limit,
#: payload + 256, and the header); OpenSSL refuses a longer one at its header.
MAX_FEED: Final = SLICE + 256 + 5
#: The shared read buffer (uvloop's plain TCP transports read 256 KiB at a time too).
READ_SIZE: Final = 256 * 1024

_AGAIN: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

# Stream states.
HANDSHAKE: Final = 0
OPEN: Final = 1
CLOSED: Final = 2  # close() or abort() called, a fatal error, or the socket lost


def _drop_strays(acceptor: TlsAcceptor) -> None:
    """Bytes left in a shared BIO when a stream starts a call are no stream's to use: each
    call leaves both empty (the module docstring), so this is a last line only, never
    the path bytes take."""
    acceptor.incoming.read()
    acceptor.outgoing.read()


class TlsAcceptor:
    """What every TLS connection of one listening socket shares; the protocol factory.

    The read buffer and the two memory BIOs are per acceptor (so per listener and per
    loop): bytes only pass through them within one call of one stream, and one loop runs
    one call at a time."""

    __slots__ = (
        "app_factory",
        "context",
        "handshake_timeout",
        "incoming",
        "loop",
        "on_failure",
        "on_timeout",
        "outgoing",
        "shutdown",
        "view",
        "wrap",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake_timeout: float,
        on_timeout: Callable[[str], object] | None = None,
    ) -> None:
        self.context = context
        self.app_factory = app_factory
        self.handshake_timeout = handshake_timeout
        # Hears of each handshake the deadline cut, with the client's address (OpenSSL's
        # refusals go to the context's failure observer, below).
        self.on_timeout = on_timeout
        self.loop = asyncio.get_running_loop()
        self.view = memoryview(bytearray(READ_SIZE))
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        # Each connection's SSL object is the C object alone, without the `ssl.SSLObject`
        # that `wrap_bio` puts around it (`_wrap_bio` is what wrap_bio calls, 3.7 to 3.14):
        # 164 B less per connection (that object, its attributes, the C object's weakref
        # back to it) and one Python frame less per read and write. Its failed handshakes
        # are then reported here, not by the context's SSLObject class (dataplane.tls).
        # Where `_wrap_bio` is missing, the public call and the class's report.
        wrap = getattr(context, "_wrap_bio", None)
        self.wrap: Callable[..., Any] = context.wrap_bio if wrap is None else wrap
        self.shutdown = "unwrap" if wrap is None else "shutdown"
        self.on_failure = None if wrap is None else failure_observer(context)

    def __call__(self) -> TlsStream:
        return TlsStream(self)


class TlsStream(asyncio.BufferedProtocol):
    """One TLS connection: the raw socket's protocol and its app protocol's transport."""

    __slots__ = (
        "acceptor",
        "app",
        "app_lost",
        "backlog",
        "error",
        "paused",
        "peer_closed",
        "raw",
        "sslobj",
        "state",
        "timer",
        "write_paused",
    )

    def __init__(self, acceptor: TlsAcceptor) -> None:
        self.acceptor = acceptor
        self.raw: asyncio.Transport | None = None
        self.app: asyncio.Protocol | None = None
        self.sslobj: Any = acceptor.wrap(acceptor.incoming, acceptor.outgoing, server_side=True)
        self.state = HANDSHAKE
        self.timer: asyncio.TimerHandle | None = None
        self.backlog = b""  # ciphertext read while the app paused reading (rare)
        self.paused = False  # the app paused reading
        self.write_paused = False  # the raw transport's buffer is over its high-water mark
        self.peer_closed = False  # close_notify or EOF came: nothing more is read
        self.app_lost = False  # the app's connection_lost ran
        self.error: Exception | None = None  # why the stream failed, for connection_lost

    # ------------------------------------------------------------ raw socket protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        acceptor = self.acceptor
        self.timer = acceptor.loop.call_later(acceptor.handshake_timeout, self._timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.acceptor.view

    def buffer_updated(self, nbytes: int) -> None:
        if (
            self.state == OPEN
            and nbytes <= MAX_FEED
            and not (self.paused or self.backlog or self.peer_closed)
        ):
            # The usual read of a small message: one SSL read takes it all.
            acceptor = self.acceptor
            incoming = acceptor.incoming
            if incoming.pending:
                _drop_strays(acceptor)
            incoming.write(acceptor.view[:nbytes])
            try:
                data = self.sslobj.read(SLICE)
            except _AGAIN:
                data = None  # a record's first part (now in OpenSSL's buffer), a KeyUpdate
            except ssl.SSLError as exc:
                self._fail(exc)
                if incoming.pending:
                    incoming.read()
                return
            if incoming.pending:
                # More than one record in this read: the rest as _feed reads them.
                chunks = [data] if data else []
                ended = data == b"" or self._read(chunks)  # b"": a close_notify
                self._deliver(chunks, ended, False)
                return
            if acceptor.outgoing.pending:
                self._flush()
            if data:
                self.app.data_received(data)  # type: ignore[union-attr]  # OPEN: made
            elif data is not None:
                self._peer_ended()  # close_notify
            return
        if self.state == CLOSED or self.peer_closed:
            return
        if self.paused or self.backlog:
            # The app paused reading after the loop had started this read: keep its bytes
            # until resume_reading (the shared buffer is the next read's).
            self.backlog += self.acceptor.view[:nbytes]
            return
        self._feed(self.acceptor.view, nbytes)

    def eof_received(self) -> bool | None:
        if self.state == HANDSHAKE:
            self._stop_timer()
            return None  # a probe, or a client gone mid-handshake: close quietly
        self._peer_ended()
        return True  # the stream closes the raw transport itself (after close_notify)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.app is not None:
            self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._stop_timer()
        app = self.app
        if app is not None and not self.app_lost:
            self.app_lost = True
            app.connection_lost(exc if exc is not None else self.error)

    # ------------------------------------------------------------ reading

    def _feed(self, view: memoryview, nbytes: int) -> None:
        """Feed `nbytes` of `view` to the shared incoming BIO at most MAX_FEED bytes at a
        time, each piece read out at once, and hand what OpenSSL wrote to the socket: the
        BIOs are empty when this calls the app or returns. Then connect the app if the
        handshake ended and deliver the plaintext in one call, as a plain transport
        delivers one socket read."""
        acceptor = self.acceptor
        incoming = acceptor.incoming
        if incoming.pending or acceptor.outgoing.pending:
            _drop_strays(acceptor)
        chunks: list[bytes] = []
        pos = 0
        ended = opened = False
        while pos < nbytes:
            take = nbytes - pos
            if take > MAX_FEED:
                take = MAX_FEED
            incoming.write(view[pos : pos + take])
            pos += take
            if self.state == HANDSHAKE:
                # After every feed: a peer that speaks no TLS is refused at its first
                # bytes. WantRead means OpenSSL took all that was fed.
                if not self._handshake():
                    if self.state == CLOSED:
                        return
                    continue
                opened = True  # and what came after the client's Finished is read next
            ended = self._read(chunks)
            if ended or self.state != OPEN:
                break  # bytes after a close_notify are not read
        self._deliver(chunks, ended, opened)

    def _deliver(self, chunks: list[bytes], ended: bool, opened: bool) -> None:
        """Empty both BIOs (what is left after a close_notify or an error is this
        stream's: dropped), then connect the app if the handshake just ended, give it the
        plaintext in one call and tell it of the peer's close_notify."""
        incoming = self.acceptor.incoming
        if incoming.pending:
            incoming.read()
        self._flush()
        if opened and self.state == OPEN:
            self._connect()
        if chunks and self.app is not None and self.state == OPEN:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if ended and self.state == OPEN:
            self._peer_ended()

    def _handshake(self) -> bool:
        """Advance the handshake with what was fed; True once it is done."""
        try:
            self.sslobj.do_handshake()
        except _AGAIN:
            return False
        except ssl.SSLError as exc:
            acceptor = self.acceptor
            if acceptor.incoming.pending:
                acceptor.incoming.read()
            self._flush()  # the alert
            self._close_raw(exc)
            if acceptor.on_failure is not None:
                acceptor.on_failure(exc)
            return False
        self._stop_timer()
        self.state = OPEN
        return True

    def _connect(self) -> None:
        """The handshake is done and the BIOs are empty: make the app and connect it."""
        app = self.app = self.acceptor.app_factory()
        app.connection_made(self)  # type: ignore[arg-type]  # a transport in all but name
        if self.write_paused:
            app.pause_writing()

    def _read(self, chunks: list[bytes]) -> bool:
        """Read the plaintext of every complete record fed (each read takes one, or a
        KeyUpdate and the record after it) until the BIO is empty (a record's first part
        goes into OpenSSL's buffer: SSLWantReadError); True if the stream ended: the
        peer's close_notify, or a TLS error."""
        sslobj = self.sslobj
        incoming = self.acceptor.incoming
        while incoming.pending:
            try:
                data = sslobj.read(SLICE)
            except _AGAIN:
                break
            except ssl.SSLError as exc:
                self._fail(exc)
                return True
            if not data:  # close_notify
                return True
            chunks.append(data)
        return False

    def _peer_ended(self) -> None:
        """close_notify or a raw EOF: tell the app once; close unless it keeps writing."""
        if self.peer_closed:
            return
        self.peer_closed = True
        app = self.app
        if app is not None and self.state == OPEN and not app.eof_received():
            self.close()

    # ------------------------------------------------------------ writing

    def _flush(self) -> None:
        """Hand what OpenSSL wrote (records, alerts, KeyUpdate answers) to the socket;
        the shared BIO is emptied even when the socket is gone."""
        outgoing = self.acceptor.outgoing
        if outgoing.pending:
            raw = self.raw
            if raw is not None and not raw.is_closing():
                raw.write(outgoing.read())
            else:
                outgoing.read()

    # ------------------------------------------------------------ the app's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raw: asyncio.Transport = self.raw  # type: ignore[assignment]
        if self.state != OPEN or raw.is_closing():
            # Closing or closed (a reset closes the socket's transport before its
            # connection_lost runs): dropped, as a closing uvloop transport does.
            return
        sslobj = self.sslobj
        outgoing = self.acceptor.outgoing
        if outgoing.pending:
            _drop_strays(self.acceptor)
        size = len(data)
        try:
            if size <= SLICE:
                sslobj.write(data)
                raw.write(outgoing.read())
                return
            view = memoryview(data)
            parts: list[bytes] = []
            for start in range(0, size, SLICE):
                sslobj.write(view[start : start + SLICE])
                parts.append(outgoing.read())
            raw.writelines(parts)
        except ssl.SSLError as exc:
            # WantRead here would be a renegotiation, which the context refuses.
            self._fail(exc)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS streams do not half-close (can_write_eof is False)")

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Send close_notify (after the handshake), then close once the socket's buffer
        is flushed."""
        if self.state == OPEN:
            acceptor = self.acceptor
            if acceptor.incoming.pending or acceptor.outgoing.pending:
                _drop_strays(acceptor)  # as every other entry point does
            try:
                getattr(self.sslobj, acceptor.shutdown)()
            except ssl.SSLError:
                pass  # SSLWantReadError: ours is sent, the peer's is not awaited
            self._flush()
        self._close_raw(None)

    def abort(self) -> None:
        self.state = CLOSED
        self._stop_timer()
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self.state != OPEN or self.raw.is_closing()  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            raw = self.raw
            if raw is not None and not raw.is_closing():
                raw.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.backlog:
                self.acceptor.loop.call_soon(self._resume_backlog)
                return
            raw = self.raw
            if raw is not None and not raw.is_closing():
                raw.resume_reading()

    def is_reading(self) -> bool:
        return not self.paused and self.state == OPEN

    def _resume_backlog(self) -> None:
        if self.paused or self.state != OPEN:
            return  # paused again: the next resume_reading comes back here
        backlog = self.backlog
        self.backlog = b""
        self._feed(memoryview(backlog), len(backlog))
        raw = self.raw
        if not self.paused and raw is not None and not raw.is_closing():
            raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        assert self.raw is not None
        return self.raw.get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """TLS details from the SSL object (as uvloop's SSL transport names them), the
        rest from the socket's transport, which keeps the peer's address after close."""
        sslobj = self.sslobj
        if name == "ssl_object":
            if isinstance(sslobj, ssl.SSLObject):
                return sslobj
            # The C object in the public class's clothes, as wrap_bio would have made it.
            view = ssl.SSLObject.__new__(self.acceptor.context.sslobject_class)
            view._sslobj = sslobj  # type: ignore[attr-defined]
            return view
        if name == "sslcontext":
            return self.acceptor.context
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        if name == "compression":
            return sslobj.compression()
        raw = self.raw
        return raw.get_extra_info(name, default) if raw is not None else default

    # ------------------------------------------------------------ endings

    def _fail(self, exc: Exception) -> None:
        """A TLS error on an open stream (bad record, ...): the socket goes at once and
        the app's connection_lost gets `exc`."""
        self.error = exc
        self.acceptor.incoming.read()  # the rest of this read: before any app callback
        self._flush()
        self.abort()

    def _close_raw(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._stop_timer()
        if exc is not None:
            self.error = exc
        raw = self.raw
        if raw is not None and not raw.is_closing():
            raw.close()

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == HANDSHAKE:
            self.abort()
            report = self.acceptor.on_timeout
            if report is not None:
                peer = self.get_extra_info("peername")
                report(str(peer[0]) if peer else "")

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
