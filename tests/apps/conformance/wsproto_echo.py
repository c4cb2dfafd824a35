"""An echo server on wsproto (python-hyper's sans-I/O WebSocket library) that answers each
message as soon as it is parsed, before it parses the next one.

Why a second echo server: websockets' server parses a whole read before its handler runs,
so when a valid message and a protocol error arrive together it fails the connection
without echoing the message (Autobahn grades that NON-STRICT); so does picows. wsproto
yields events one at a time, so this server echoes "Hello" and only then meets the bad
frame (graded OK): the answer that issue 13 §3 says a load balancer must not lose. Every
protocol check (handshake, RSV bits, opcodes, masking, fragmentation, UTF-8, close codes)
is wsproto's; this module only moves bytes and echoes.
"""

from __future__ import annotations

import asyncio
from typing import cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

#: How long a failed connection waits for the peer's EOF (websockets' close_timeout).
CLOSE_TIMEOUT = 10.0


class Echo(asyncio.Protocol):
    """One connection: feed wsproto, write each answer before reading the next event."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.transport: asyncio.Transport | None = None
        self.failed = False  # our Close is sent: read nothing more, wait for the peer's EOF
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.failed:
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if self.failed or self.transport.is_closing():
                    return
                self.answer(event)
        except (LocalProtocolError, RemoteProtocolError):
            self.transport.abort()  # a bad handshake, or bytes after the connection ended

    def answer(self, event: object) -> None:
        assert self.transport is not None
        if isinstance(event, Request):
            self.transport.write(self.ws.send(AcceptConnection()))
        elif isinstance(event, TextMessage | BytesMessage):
            echo = Message(data=event.data, message_finished=event.message_finished)
            self.transport.write(self.ws.send(echo))
        elif isinstance(event, Ping):
            self.transport.write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection) and self.ws.state is ConnectionState.REMOTE_CLOSING:
            # The peer's Close: answer it, then the server closes TCP first (RFC 6455 §7.1.1).
            self.transport.write(self.ws.send(event.response()))
            self.transport.close()
        elif isinstance(event, CloseConnection):
            # A protocol error: send our Close and half-close, then read until the peer's
            # EOF, as websockets' server does. Closing the socket at once with the peer's
            # bytes unread makes the kernel answer them with a reset.
            self.transport.write(self.ws.send(event.response()))
            self.transport.write_eof()
            self.failed = True
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def eof_received(self) -> bool:
        return False  # the peer is gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()


async def start_echo(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Listen on `host`:`port` (0: the kernel picks; read it from `server.sockets`)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(Echo, host, port)
