"""TLS termination for HTTPS (WSS) listeners over a plain TCP transport.

Why not `loop.create_server(ssl=...)`: uvloop's SSLProtocol mallocs a 256 KiB read
buffer per connection and writes whole socket reads and whole app writes into the
connection's memory BIOs, which never shrink: an idle WSS connection that once carried a
1 MiB message keeps ~620 KiB (hack/conn-memory.md). Here the raw socket's protocol is a
`TlsStream` (a BufferedProtocol): the loop reads into ONE buffer per listening socket
(`TlsAcceptor.view`), whose bytes go into the connection's incoming BIO at once, at most
`SLICE` bytes at a time with the plaintext read out between; writes are encrypted a
`SLICE` at a time and the ciphertext handed straight to the raw transport. So a
connection's BIOs hold about one TLS record whatever its messages' size.

An OpenSSL memory BIO keeps the largest buffer it ever needed (its BUF_MEM never
shrinks): after the handshake the incoming BIO holds the ClientHello's size (1.8 KB
from a browser that offers a post-quantum key share) and the outgoing one the server's
flight (~1 KB), for the connection's whole life. So the stream frees both buffers once,
after the first exchange (`fresh`: from the handshake's end to the app's first write):
-1.3 KB per idle WSS connection. Python's MemoryBIO has no call for it; OpenSSL's public
BIO_set_mem_buf has, reached with ctypes (see `_buffer_releaser`, which checks the one
CPython detail it needs and turns the release off where it does not hold).

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
import sys
from collections.abc import Callable
from typing import Any, Final

from dataplane.tls import failure_observer

#: Plaintext per SSLObject.write and per SSLObject.read: one TLS record's payload.
SLICE: Final = 16384
#: The most ciphertext fed to the incoming BIO at once: one record (TLS 1.3's limit,
#: payload + 256, and the header); a bogus length is fed in pieces this big.
MAX_FEED: Final = SLICE + 256 + 5
#: The shared read buffer (uvloop's plain TCP transports read 256 KiB at a time too).
READ_SIZE: Final = 256 * 1024
#: A TLS record header: type, version (2), length (2).
HEADER: Final = 5

#: Records to read right after the handshake: until the BIO runs dry.
DRAIN: Final = 1 << 30

_AGAIN: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

# OpenSSL's BIO_C_SET_BUF_MEM (the BIO_set_mem_buf macro), BIO_CLOSE, BIO_TYPE_MEM and
# BIO_CTRL_PENDING (openssl/bio.h; unchanged since 1.0).
_SET_BUF_MEM: Final = 114
_BIO_CLOSE: Final = 1
_BIO_TYPE_MEM: Final = 1 | 0x0400
_CTRL_PENDING: Final = 10


def _buffer_releaser() -> Callable[[ssl.MemoryBIO], None] | None:
    """A function that frees the buffer of an empty MemoryBIO (one that holds data is
    left alone), or None where that cannot be done safely.

    It gives the BIO a new, empty BUF_MEM with OpenSSL's public BIO_set_mem_buf, which
    frees the old one; the next write allocates what it needs. The private step is
    finding the BIO: CPython's MemoryBIO object is its header and the `BIO *` (since
    3.5), so the size of the type is checked first, then the pointer read from a probe
    BIO must be a memory BIO holding what was written to it, and a release and a round
    trip must work. The functions come from the libcrypto that `_ssl` itself is linked
    to (dlsym through `_ssl`'s own handle), whose version must be the one `ssl` reports."""
    offset = object.__basicsize__
    if sys.implementation.name != "cpython" or ssl.MemoryBIO.__basicsize__ != offset + 16:
        return None
    try:
        import _ssl
        import ctypes

        library = ctypes.PyDLL(getattr(_ssl, "__file__", None))
        ctrl = library.BIO_ctrl
        new_buffer = library.BUF_MEM_new
        method_type = library.BIO_method_type
        version = library.OpenSSL_version_num
    except (ImportError, OSError, AttributeError):
        return None
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    new_buffer.argtypes = []
    new_buffer.restype = ctypes.c_void_p
    method_type.argtypes = [ctypes.c_void_p]
    method_type.restype = ctypes.c_int
    version.argtypes = []
    version.restype = ctypes.c_ulong
    if version() != ssl.OPENSSL_VERSION_NUMBER:
        return None
    address = ctypes.c_void_p.from_address

    def release(bio: ssl.MemoryBIO) -> None:
        if not bio.pending:
            fresh = new_buffer()
            if fresh:
                ctrl(address(id(bio) + offset).value, _SET_BUF_MEM, _BIO_CLOSE, fresh)

    probe = ssl.MemoryBIO()
    probe.write(b"probe")
    pointer = address(id(probe) + offset).value
    if (
        not pointer
        or method_type(pointer) != _BIO_TYPE_MEM
        or ctrl(pointer, _CTRL_PENDING, 0, None) != 5
    ):
        return None
    probe.read()
    release(probe)
    probe.write(b"again")
    if probe.read() != b"again":
        return None
    return release


#: Frees an empty MemoryBIO's buffer; None where this Python or OpenSSL cannot.
release_buffer: Final = _buffer_releaser()

# Stream states.
HANDSHAKE: Final = 0
OPEN: Final = 1
CLOSED: Final = 2  # close() or abort() called, a fatal error, or the socket lost


class TlsAcceptor:
    """What every TLS connection of one listening socket shares; the protocol factory.

    The read buffer is per acceptor (so per listener and per loop): its bytes only live
    between one read and its feed into a BIO, and one loop runs one read at a time."""

    __slots__ = (
        "app_factory",
        "context",
        "handshake_timeout",
        "loop",
        "on_failure",
        "on_timeout",
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
        "fresh",
        "head",
        "incoming",
        "left",
        "outgoing",
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
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj: Any = acceptor.wrap(self.incoming, self.outgoing, server_side=True)
        self.state = HANDSHAKE
        self.timer: asyncio.TimerHandle | None = None
        # Where records end (see _record): bytes left of the record being fed (0: the
        # next byte starts one; -1: the stream's first byte, which may start an
        # SSLv2-format ClientHello), and a record header cut by the end of a read.
        self.left = -1
        self.head = b""
        self.backlog = b""  # ciphertext read while the app paused reading (rare)
        self.paused = False  # the app paused reading
        self.write_paused = False  # the raw transport's buffer is over its high-water mark
        self.peer_closed = False  # close_notify or EOF came: nothing more is read
        self.app_lost = False  # the app's connection_lost ran
        self.error: Exception | None = None  # why the stream failed, for connection_lost
        # From the handshake's end to the app's first write: each read, and that write,
        # end by freeing their BIO's buffer (the module docstring says why).
        self.fresh = False

    # ------------------------------------------------------------ raw socket protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        acceptor = self.acceptor
        self.timer = acceptor.loop.call_later(acceptor.handshake_timeout, self._timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.acceptor.view

    def buffer_updated(self, nbytes: int) -> None:
        view = self.acceptor.view
        if (
            self.state == OPEN
            and self.left == 0
            and nbytes >= HEADER
            and HEADER + (view[3] << 8 | view[4]) == nbytes
            and not (self.head or self.paused or self.backlog or self.peer_closed)
        ):
            # The usual read of a small message: one whole record, one SSL read.
            self.incoming.write(view[:nbytes])
            try:
                data = self.sslobj.read(SLICE)
            except _AGAIN:
                data = None  # a KeyUpdate, say: nothing for the app
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            if self.outgoing.pending:
                self._flush()
            if self.fresh and release_buffer is not None:
                release_buffer(self.incoming)
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
            self.backlog += view[:nbytes]
            return
        self._feed(view, nbytes)

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
        """Feed `nbytes` of `view` to the incoming BIO one TLS record at a time (at most
        MAX_FEED bytes), reading each complete record's plaintext out before the next is
        fed, so the BIO never holds more than one record; deliver the plaintext to the app
        in one call, as a plain transport delivers one socket read."""
        incoming = self.incoming
        chunks: list[bytes] = []
        pos = 0
        ended = False
        while pos < nbytes:
            left = self.left
            if left <= 0:
                left = self._record(view, pos, nbytes)
            take = nbytes - pos
            if take > left:
                take = left
            if take > MAX_FEED:
                take = MAX_FEED
            incoming.write(view[pos : pos + take])
            pos += take
            left -= take
            self.left = left
            if self.state == HANDSHAKE:
                # After every feed, not every record: a peer that speaks no TLS is refused
                # at its first bytes, not when a "record" of its text completes.
                if not self._handshake():
                    if self.state == CLOSED:
                        return
                    continue
                ended = self._read(chunks, DRAIN)  # what came after the client's Finished
            elif left == 0 and not self.head:
                ended = self._read(chunks, 1)
            elif take == MAX_FEED:
                # Longer than any legal record: OpenSSL refuses it at its header, before
                # the BIO holds more of it.
                ended = self._read(chunks, 1)
            if ended or self.state != OPEN:
                break  # bytes after a close_notify are not read
        self._flush()
        if self.fresh and release_buffer is not None:
            release_buffer(incoming)  # the handshake's, and the first request's, records
        if chunks and self.app is not None and self.state == OPEN:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if ended and self.state == OPEN:
            self._peer_ended()

    def _record(self, view: memoryview, pos: int, end: int) -> int:
        """Bytes from `pos` to the end of the record that starts there (its header is
        5 bytes: type, version, the body's length); a header cut by the read's end is
        kept in `head`, and then the bytes there are fed while the rest is awaited."""
        head = self.head
        if not head and end - pos >= HEADER:
            if self.left == -1 and view[pos] & 0x80:
                # The stream's first bytes, an SSLv2-format ClientHello: 2-byte header,
                # the length's top bit set.
                return 2 + ((view[pos] & 0x7F) << 8 | view[pos + 1])
            return HEADER + (view[pos + 3] << 8 | view[pos + 4])
        taken = bytes(view[pos : min(end, pos + HEADER - len(head))])
        head += taken
        if len(head) < HEADER:
            self.head = head
            return len(taken)  # fed; `head` says the record is not complete
        self.head = b""
        return len(taken) + (head[3] << 8 | head[4])

    def _handshake(self) -> bool:
        """Advance the handshake with what was fed; True once it is done (the app is then
        connected and any records after the client's Finished are read next)."""
        try:
            self.sslobj.do_handshake()
        except _AGAIN:
            return False
        except ssl.SSLError as exc:
            report = self.acceptor.on_failure
            if report is not None:
                report(exc)
            self._flush()  # the alert
            self._close_raw(exc)
            return False
        self._stop_timer()
        self.state = OPEN
        self.fresh = True
        app = self.app = self.acceptor.app_factory()
        app.connection_made(self)  # type: ignore[arg-type]  # a transport in all but name
        if self.write_paused:
            app.pause_writing()
        return True

    def _read(self, chunks: list[bytes], records: int) -> bool:
        """Read the plaintext of `records` complete records (each read takes one, or a
        KeyUpdate and the record after it; it raises SSLWantReadError only when none is
        left); True if the stream ended: the peer's close_notify, or a TLS error."""
        sslobj = self.sslobj
        while records > 0:
            records -= 1
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
        """Hand what OpenSSL wrote (records, alerts, KeyUpdate answers) to the socket."""
        if self.outgoing.pending:
            raw = self.raw
            if raw is not None and not raw.is_closing():
                raw.write(self.outgoing.read())
            else:
                self.outgoing.read()

    # ------------------------------------------------------------ the app's transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raw: asyncio.Transport = self.raw  # type: ignore[assignment]
        if self.state != OPEN or raw.is_closing():
            # Closing or closed (a reset closes the socket's transport before its
            # connection_lost runs): dropped, as a closing uvloop transport does.
            return
        sslobj = self.sslobj
        outgoing = self.outgoing
        size = len(data)
        try:
            if size <= SLICE:
                sslobj.write(data)
                raw.write(outgoing.read())
            else:
                view = memoryview(data)
                parts: list[bytes] = []
                for start in range(0, size, SLICE):
                    sslobj.write(view[start : start + SLICE])
                    parts.append(outgoing.read())
                raw.writelines(parts)
        except ssl.SSLError as exc:
            # WantRead here would be a renegotiation, which the context refuses.
            self._fail(exc)
            return
        if self.fresh:
            # The first answer: the server's flight and it are through; free the buffer.
            self.fresh = False
            if release_buffer is not None:
                release_buffer(outgoing)

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
            try:
                getattr(self.sslobj, self.acceptor.shutdown)()
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
