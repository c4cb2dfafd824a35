"""The floor for a proxy on uvloop: a bare TCP relay, never a model for product code.

Each accepted connection gets its own backend connection, and bytes are copied both ways
with no parsing, no checks, no metrics and no flow control. Whatever wslb spends per
request or per message above this relay is its own Python; what this relay spends is
uvloop's transports and the kernel. `make bench` runs it as the optional proxy `floor`
(`BENCH_PROXIES=wslb,haproxy,nginx,floor`), on the WS and HTTP ports only (no TLS).

Run: `python -m bench.floor BACKEND_PORT LISTEN_PORT [LISTEN_PORT...]`.
"""

from __future__ import annotations

import asyncio
import sys


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
                lambda: Backend(self), "127.0.0.1", self.backend_port
            )
        except OSError:
            self.close()
            return
        for data in self.early:
            backend.write(data)
        self.early = []
        self.backend = backend

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


async def serve(backend_port: int, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: Client(backend_port), "127.0.0.1", port, backlog=4096)
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
