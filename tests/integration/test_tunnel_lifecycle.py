"""A tunnel's objects after it closed, through a real data plane on loopback."""

from __future__ import annotations

import gc
from typing import Any

from websockets.asyncio.client import connect

from dataplane.tunnel import BackendSide, ClientSide
from tests.integration.conftest import listener, snapshot, url, wait_until


def _connection_objects(site: Any) -> int:
    """This listener's connection objects alive (other tests' may be too)."""
    count = 0
    for item in gc.get_objects():
        kind = type(item)  # not isinstance: a dead weak proxy raises
        if (kind is ClientSide and item.listener is site) or (
            kind is BackendSide and item.client.listener is site
        ):
            count += 1
    return count


async def test_a_closed_tunnel_is_freed_without_the_cyclic_gc(
    backends: Any, dataplane: Any
) -> None:
    """The data plane runs the cyclic GC rarely (cli.py): a closed tunnel whose objects
    sat in a reference cycle would hold its memory until then."""
    (backend,) = await backends(1)
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    site = runtime.listeners["ws"]
    gc.collect()
    gc.disable()
    try:
        async with connect(url(runtime), ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            assert _connection_objects(site) == 2  # the tunnel's two sides
        # Both TCP connections end, then refcounting alone frees both sides.
        await wait_until(lambda: _connection_objects(site) == 0)
    finally:
        gc.enable()
