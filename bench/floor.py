"""The floor for a proxy on uvloop: a bare TCP relay, never a model for product code.

Each accepted connection gets its own backend connection, and bytes are copied both ways
with no parsing, no checks, no metrics and no flow control. Whatever wslb spends per
request or per message above this relay is its own Python; what this relay spends is
uvloop's transports and the kernel. `make bench` runs it as the optional proxy `floor`
(`BENCH_PROXIES=wslb,haproxy,nginx,floor`), on the WS and HTTP ports only (no TLS).

Run: `python -m bench.floor BACKEND_PORT LISTEN_PORT [LISTEN_PORT...]`. With
`FLOOR_BUFFERED=1` in its environment both sides are `asyncio.BufferedProtocol`s: uvloop
reads into a buffer of the relay's own and the relay writes a view of it, so no bytes object
is made per read (what a buffered data plane could save, measured against the plain floor).
"""

from __future__ import annotations

import asyncio
import os
import sys

READ_BUFFER = 256 * 1024  # uvloop's own read size for plain protocols


class Backend(asyncio.Protocol):
    """The relay's backend side: every byte goes to the client as it comes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    """The relay's client side: held unread until its backend connection is open."""

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.transport: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend, _ = await loop.create_connection(
                self.backend_side, "127.0.0.1", self.backend_port
            )
        except OSError:
            self.close()
            return
        for data in self.early:
            backend.write(data)
        self.early = []
        self.backend = backend

    def backend_side(self) -> asyncio.BaseProtocol:
        """The protocol of this connection's backend socket."""
        return Backend(self)

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
        else:
            self.backend.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.close()


class _Reads:
    """One direction's read buffer, written on as a view: while the other transport still
    holds an unsent view of it (a partial write), the next read gets a new buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(READ_BUFFER)
        self.view = memoryview(self.buffer)

    def get(self) -> memoryview:
        return self.view

    def forward(self, size: int, to: asyncio.Transport | None) -> None:
        if to is None:
            return
        to.write(self.view[:size])
        if to.get_write_buffer_size():
            self.buffer = bytearray(READ_BUFFER)  # the old one stays with the transport
            self.view = memoryview(self.buffer)


class BufferedBackend(asyncio.BufferedProtocol):
    """`Backend`, reading into its own buffer."""

    def __init__(self, client: BufferedClient) -> None:
        self.client = client
        self.reads = _Reads()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reads.get()

    def buffer_updated(self, nbytes: int) -> None:
        self.reads.forward(nbytes, self.client.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class BufferedClient(asyncio.BufferedProtocol, Client):
    """`Client`, reading into its own buffer."""

    def __init__(self, backend_port: int) -> None:
        super().__init__(backend_port)
        self.reads = _Reads()

    def backend_side(self) -> asyncio.BaseProtocol:
        return BufferedBackend(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reads.get()

    def buffer_updated(self, nbytes: int) -> None:
        if self.backend is None:
            self.early.append(bytes(self.reads.view[:nbytes]))
        else:
            self.reads.forward(nbytes, self.backend)


async def serve(backend_port: int, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    buffered = os.environ.get("FLOOR_BUFFERED", "") not in ("", "0")
    factory = BufferedClient if buffered else Client
    servers = [
        await loop.create_server(lambda: factory(backend_port), "127.0.0.1", port, backlog=4096)
        for port in ports
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) < 2 or not all(arg.isdigit() for arg in args):
        raise SystemExit("usage: python -m bench.floor BACKEND_PORT LISTEN_PORT [LISTEN_PORT...]")
    import uvloop

    from bench.procstat import raise_nofile

    raise_nofile()
    uvloop.run(serve(int(args[0]), [int(port) for port in args[1:]]))


if __name__ == "__main__":
    main()
