"""The config channel end to end on loopback: real TLS, real websockets, real data plane."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controller.config_server import ConfigServer
from dataplane.config_client import ClientSettings, ConfigClient
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.messages import SUBPROTOCOL, Hello, encode
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import config_server_tls, listener, snapshot, wait_until

LB = "team-a/edge"
TOKEN = "s3cret-token-for-edge"


@dataclass
class Channel:
    server: ConfigServer
    port: int
    ca_file: Path
    changes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[Channel]:
    context = config_server_tls(tmp_path)
    changes: list[str] = []
    server = ConfigServer(
        tokens=lambda lb: TOKEN if lb == LB else None,
        ssl_context=context,
        on_change=changes.append,
    )
    port = await server.start("127.0.0.1", 0)
    yield Channel(server, port, tmp_path / "ca.crt", changes)
    await server.close()


@pytest.fixture
async def data_plane(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Runtime, ConfigClient]]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None], Runtime]] = []

    async def start(
        channel: Channel, node: str = "dp-1", token: str = TOKEN, state: str = "state"
    ) -> tuple[Runtime, ConfigClient]:
        token_file = tmp_path / f"token-{node}"
        token_file.write_text(token)
        runtime = Runtime(Metrics())
        client = ConfigClient(
            ClientSettings(
                url=channel.url,
                load_balancer=LB,
                node=node,
                token_file=token_file,
                ca_file=channel.ca_file,
                state_dir=tmp_path / state,
                backoff_min=0.05,
                backoff_max=0.2,
            ),
            runtime,
        )
        await client.restore()
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(client.run(stop))
        stops.append((stop, task, runtime))
        return runtime, client

    yield start
    for stop, task, runtime in stops:
        stop.set()
        await asyncio.wait_for(task, 5)
        await runtime.shutdown(drain_timeout=0)


def desired(version: str, *listeners: dict[str, Any]) -> Any:
    return parse_snapshot(snapshot(*listeners, version=version))


async def test_hello_snapshot_ack_and_traffic_flows(
    channel: Channel, data_plane: Any, backends: Any
) -> None:
    (backend,) = await backends(1)
    wanted = desired("1", listener(generation=3, backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, wanted)
    runtime, _ = await data_plane(channel)
    await wait_until(lambda: runtime.snapshot is not None)
    assert runtime.snapshot == wanted
    (session,) = channel.server.sessions(LB)
    await wait_until(lambda: session.applied_version == "1")
    assert session.applied_generations() == {"ws": 3}
    assert LB in channel.changes
    port = wanted.listeners[0].port
    async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
        await ws.send("via controller")
        assert await ws.recv() == "via controller"


async def test_nack_keeps_old_config_and_reaches_the_session(
    channel: Channel, data_plane: Any, backends: Any
) -> None:
    (backend,) = await backends(1)
    good = desired("1", listener(backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, good)
    runtime, _ = await data_plane(channel)
    (session,) = await _one_session(channel)
    await wait_until(lambda: session.applied_version == "1")
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy_port = taken.sockets[0].getsockname()[1]
    try:
        bad = desired(
            "2",
            listener(port=good.listeners[0].port, backends={"endpoints": [backend.endpoint]}),
            listener("clash", port=busy_port),
        )
        channel.server.publish(LB, bad)
        await wait_until(lambda: session.last_error is not None)
        assert session.last_error is not None
        assert session.last_error.reason == "ApplyFailed"
        assert session.last_error.listeners == ["clash"]
        assert "listeners[1].port" in session.last_error.message
        assert session.applied_version == "1"
        assert runtime.snapshot == good
    finally:
        taken.close()


async def test_reconnect_resumes_without_resending_the_same_content(
    channel: Channel, data_plane: Any, backends: Any
) -> None:
    (backend,) = await backends(1)
    wanted = desired("1", listener(backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, wanted)
    runtime, client = await data_plane(channel)
    (session,) = await _one_session(channel)
    await wait_until(lambda: session.applied_version == "1")
    await channel.server.close()
    await wait_until(lambda: not client.connected.is_set())
    restarted = ConfigServer(
        tokens=channel.server.tokens,
        ssl_context=channel.server.ssl_context,
        on_change=lambda lb: None,
    )
    # A controller that restarted publishes the same content under a new version.
    restarted.publish(
        LB,
        desired(
            "9", listener(port=wanted.listeners[0].port, backends={"endpoints": [backend.endpoint]})
        ),
    )
    await restarted.start("127.0.0.1", channel.port)
    channel.server = restarted
    await wait_until(lambda: len(restarted.sessions(LB)) == 1, timeout=10)
    (again,) = restarted.sessions(LB)
    assert again.in_flight is None  # nothing was sent: the digest matched
    assert again.applied_generations() == {"ws": 0}
    assert runtime.snapshot is not None and runtime.snapshot.version == "1"


async def test_wrong_or_missing_token_and_wrong_path_are_refused(channel: Channel) -> None:
    context = ssl.create_default_context(cafile=str(channel.ca_file))
    cases = [
        (f"/v1/loadbalancers/{LB}", {"Authorization": "Bearer wrong"}, 403),
        (f"/v1/loadbalancers/{LB}", {}, 401),
        ("/v1/loadbalancers/team-b/other", {"Authorization": f"Bearer {TOKEN}"}, 403),
        ("/elsewhere", {"Authorization": f"Bearer {TOKEN}"}, 404),
        # a repeated header is refused like a missing one, never a 500
        (
            f"/v1/loadbalancers/{LB}",
            [("Authorization", "Bearer x"), ("Authorization", "Bearer y")],
            401,
        ),
    ]
    for path, headers, status in cases:
        with pytest.raises(InvalidStatus) as caught:
            await connect(
                channel.url + path,
                ssl=context,
                additional_headers=headers,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            )
        assert caught.value.response.status_code == status
    assert channel.server.sessions(LB) == []


async def test_bearer_scheme_is_case_insensitive(channel: Channel) -> None:
    context = ssl.create_default_context(cafile=str(channel.ca_file))
    async with connect(
        f"{channel.url}/v1/loadbalancers/{LB}",
        ssl=context,
        additional_headers={"Authorization": f"bearer {TOKEN}"},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        assert ws.subprotocol == SUBPROTOCOL


async def test_hello_for_another_load_balancer_is_closed_1008(channel: Channel) -> None:
    context = ssl.create_default_context(cafile=str(channel.ca_file))
    async with connect(
        f"{channel.url}/v1/loadbalancers/{LB}",
        ssl=context,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        await ws.send(encode(Hello(node="x", load_balancer="team-b/other")))
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008


async def test_a_restarted_data_plane_serves_its_persisted_snapshot_without_controller(
    channel: Channel, data_plane: Any, backends: Any
) -> None:
    (backend,) = await backends(1)
    wanted = desired("1", listener(backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, wanted)
    first, _ = await data_plane(channel, node="dp-1", state="shared")
    await wait_until(lambda: first.snapshot is not None)
    await first.shutdown(drain_timeout=0)
    await channel.server.close()  # the controller is gone
    second, client = await data_plane(channel, node="dp-1", state="shared")
    assert second.snapshot == wanted
    assert not client.connected.is_set()
    async with connect(f"ws://127.0.0.1:{wanted.listeners[0].port}/", ping_interval=None) as ws:
        await ws.send("static stability")
        assert await ws.recv() == "static stability"


async def _one_session(channel: Channel) -> list[Any]:
    await wait_until(lambda: len(channel.server.sessions(LB)) == 1)
    return channel.server.sessions(LB)
