"""Raw WebSocket peers for close-path tests: they send exactly the bytes a test names
(partial frames, reserved opcodes, unmasked frames, no Close reply) and record what they
receive, parsed by websockets' own frame parser. Loopback only, port 0."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from tests.integration.conftest import upgrade_request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()  # noqa: S324


class FrameReader:
    """Frames parsed incrementally from a byte stream; a bad frame ends the stream."""

    def __init__(self, mask: bool) -> None:
        self.mask = mask
        self.buffer = b""
        self.error: Exception | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames: list[Frame] = []
        while self.error is None:
            reader = StreamReader()
            reader.feed_data(self.buffer)
            parser = Frame.parse(reader.read_exact, mask=self.mask)
            try:
                next(parser)
            except StopIteration as done:
                frames.append(done.value)
                self.buffer = self.buffer[len(self.buffer) - len(reader.buffer) :]
                continue
            except (ProtocolError, ValueError) as exc:
                self.error = exc
            break  # incomplete: wait for more bytes
        return frames


def close_code(frame: Frame) -> int:
    return Close.parse(frame.data).code


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawBackend"], Awaitable[None]]


@dataclass
class RawBackend:
    """Answers the upgrade with a 101, then runs `behaviour` on the stream."""

    behaviour: Behaviour
    frames: list[Frame] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    eof_at: float | None = None
    server: asyncio.Server | None = None
    extra_101: str = ""

    @property
    def endpoint(self) -> dict[str, object]:
        assert self.server is not None
        return {"address": "127.0.0.1", "port": self.server.sockets[0].getsockname()[1]}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.decode("latin-1").split("\r\n")
            if line.lower().startswith("sec-websocket-key:")
        )
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                f"{self.extra_101}\r\n"
            ).encode()
        )
        try:
            await self.behaviour(reader, writer, self)
        finally:
            writer.close()

    async def read_frames(
        self, reader: asyncio.StreamReader, on_frame: Callable[[Frame], bool] | None = None
    ) -> None:
        """Record client frames until EOF (or until `on_frame` returns False)."""
        parser = FrameReader(mask=True)
        while True:
            data = await reader.read(65536)
            if not data:
                self.eof_at = time.monotonic()
                return
            for frame in parser.feed(data):
                self.frames.append(frame)
                if on_frame is not None and not on_frame(frame):
                    return
            if parser.error is not None:
                self.errors.append(parser.error)
                return


@contextlib.asynccontextmanager
async def raw_backend(behaviour: Behaviour, extra_101: str = "") -> AsyncIterator[RawBackend]:
    backend = RawBackend(behaviour, extra_101=extra_101)
    backend.server = await asyncio.start_server(backend._serve, "127.0.0.1", 0)
    try:
        yield backend
    finally:
        backend.server.close()


@dataclass
class RawClient:
    """A client that sends raw bytes after its upgrade and records the frames it gets."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    frames: list[Frame] = field(default_factory=list)
    parser: FrameReader = field(default_factory=lambda: FrameReader(mask=False))
    eof_at: float | None = None

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_until(
        self, done: Callable[[RawClient], bool], timeout: float = 5.0, answer_pings: bool = False
    ) -> None:
        """Read frames until `done(self)` or EOF, failing at the deadline."""
        async with asyncio.timeout(timeout):
            while not done(self):
                data = await self.reader.read(65536)
                if not data:
                    self.eof_at = time.monotonic()
                    return
                for frame in self.parser.feed(data):
                    self.frames.append(frame)
                    if answer_pings and frame.opcode is Opcode.PING:
                        self.send(Frame(Opcode.PONG, frame.data).serialize(mask=True))

    def close(self) -> None:
        self.writer.close()


def text(data: bytes, mask: bool) -> bytes:
    return Frame(Opcode.TEXT, data).serialize(mask=mask)


def close(code: int, mask: bool, reason: str = "") -> bytes:
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=mask)
