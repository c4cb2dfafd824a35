"""A WSS client process for the TLS layer's memory tests: N connections that each send
one message of B bytes and read its echo, then hold open until stdin says "close".

It runs in its own process so that what the test measures (malloc in use in the data
plane's process) holds none of the clients' TLS state.

    python -m tests.integration.wss_holder URL COUNT BYTES CAFILE
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import ClientConnection, connect

DEADLINE = 60.0  # seconds to open every connection and echo every message


async def main(url: str, count: int, size: int, cafile: str) -> None:
    context = ssl.create_default_context(cafile=cafile)
    message = b"m" * size
    held: list[ClientConnection] = []

    async def one() -> None:
        ws = await connect(url, ssl=context, max_size=None, compression=None)
        held.append(ws)
        if size:
            await ws.send(message)
            echoed = await ws.recv()
            if echoed != message:
                raise AssertionError("the echo differs from the message")

    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"open": len(held)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for ws in held:
        await ws.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
