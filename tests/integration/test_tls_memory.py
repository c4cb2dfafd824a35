"""The shared memory BIOs of an HTTPS listener's connections (dataplane.tls_stream) with
many real WSS clients at once: messages of every size, each way, interleaved on one loop,
so one connection's record is cut while others' are fed; each client must get exactly
its own echoes, in order."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import TlsFiles, snapshot, url
from tests.integration.tls_clients import https_listener

pytestmark = pytest.mark.integration

CLIENTS = 12
MESSAGES = 25
DEADLINE = 60.0


async def test_concurrent_wss_clients_each_get_exactly_their_own_echoes(
    backends: Any, dataplane: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = https_listener(
        tls, {"endpoints": [backend.endpoint]}, limits={"maxMessageBytes": 1 << 20}
    )
    runtime = await dataplane(snapshot(config))

    async def one(index: int) -> int:
        draw = random.Random(index)
        async with connect(url(runtime, "wss"), ssl=tls.client_context, max_size=None) as ws:
            sent = []
            for number in range(MESSAGES):
                size = draw.choice([1, 100, 5_000, 17_000, 70_000, 300_000])
                payload = bytes([index]) + number.to_bytes(2, "big") + draw.randbytes(size)
                sent.append(payload)
                await ws.send(payload)
                if draw.random() < 0.5:  # some answers read late: more in flight at once
                    assert await ws.recv() == sent.pop(0)
            while sent:
                assert await ws.recv() == sent.pop(0)
        return index

    done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(CLIENTS))), DEADLINE)
    assert done == list(range(CLIENTS))
