"""A small HTTP/1.1 backend on asyncio streams for the HTTP proxy tests.

It records every TCP connection and every request (method, target, fields, body) so a
test can assert what reached the backend, and answers through a per-test handler. It
reads Content-Length and chunked bodies; a handler writes whatever it likes, including
nothing (a hung backend) or a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    target: str
    fields: list[tuple[str, str]]
    body: bytes
    connection: int  # which accepted connection carried it (1-based)

    def field(self, name: str) -> str | None:
        for key, value in self.fields:
            if key.lower() == name.lower():
                return value
        return None


Handler = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def response(
    status: int = 200, body: bytes = b"", fields: list[tuple[str, str]] | None = None
) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in fields or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_handler(seen: Seen, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """200 with a body naming the method, target and body length (HEAD: no body)."""
    body = f"{seen.method} {seen.target} {len(seen.body)}".encode()
    data = response(200, body, [("X-Backend-Connection", str(seen.connection))])
    if seen.method == "HEAD":
        data = data[: data.index(b"\r\n\r\n") + 4]
    w.write(data)


@dataclass
class HttpBackend:
    handler: Handler = echo_handler
    name: str = "b"
    read_bodies: bool = True  # False: the handler reads the body itself
    accepted: int = 0
    requests: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> HttpBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> dict[str, object]:
        return {"address": "127.0.0.1", "port": self.port}

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *rest = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                fields = [
                    (name.strip(), value.strip())
                    for name, _, value in (item.partition(":") for item in rest)
                ]
                seen = Seen(method, target, fields, b"", number)
                if self.read_bodies:
                    seen.body = await read_body(seen, reader)
                self.requests.append(seen)
                await self.handler(seen, reader, writer)
                await writer.drain()
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def read_body(seen: Seen, reader: asyncio.StreamReader) -> bytes:
    length = seen.field("Content-Length")
    if length is not None:
        return await reader.readexactly(int(length))
    if (seen.field("Transfer-Encoding") or "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


@dataclass
class Answer:
    status: int
    fields: list[tuple[str, str]]
    body: bytes

    def field(self, name: str) -> str | None:
        for key, value in self.fields:
            if key.lower() == name.lower():
                return value
        return None


async def read_answer(reader: asyncio.StreamReader, method: str = "GET") -> Answer:
    """One response from a client stream (Content-Length, chunked, or to EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head[:-4].decode("latin-1").split("\r\n")
    status = int(line.split(" ")[1])
    fields = [
        (name.strip(), value.strip()) for name, _, value in (item.partition(":") for item in rest)
    ]
    answer = Answer(status, fields, b"")
    if status < 200:
        return answer
    if method == "HEAD" or status in (204, 304):
        return answer
    seen = Seen("", "", fields, b"", 0)
    if answer.field("Content-Length") is not None or answer.field("Transfer-Encoding"):
        answer.body = await read_body(seen, reader)
    else:
        answer.body = await reader.read()
    return answer


class Client:
    """A raw keep-alive client connection to a listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, method: str = "GET", timeout: float = 5.0) -> Answer:
        async with asyncio.timeout(timeout):
            return await read_answer(self.reader, method)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                rest = await self.reader.read()
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return rest == b""

    def close(self) -> None:
        self.writer.close()


def get(target: str = "/", host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
