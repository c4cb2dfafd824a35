"""A listener on `::` is dual-stack: IPv4 and IPv6 clients both reach it, even on a host
whose default (net.ipv6.bindv6only=1) would make an IPv6 socket IPv6-only."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from dataplane.runtime import Runtime
from tests.integration.conftest import listener, snapshot

pytestmark = pytest.mark.integration


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no ::1")
async def test_a_listener_on_any_ipv6_address_serves_ipv4_and_ipv6_clients(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    runtime: Runtime = await dataplane(
        snapshot(listener(address="::", backends={"endpoints": [backend.endpoint]}))
    )
    port = runtime.listeners["ws"].config.port
    for host, family in (("127.0.0.1", socket.AF_INET), ("[::1]", socket.AF_INET6)):
        async with connect(f"ws://{host}:{port}/", ping_interval=None) as ws:
            assert ws.transport.get_extra_info("socket").family == family
            await ws.send(host)
            assert await ws.recv() == host


DUAL_STACK_PROBE = textwrap.dedent(
    """
    import socket
    from dataplane.runtime import bind_socket
    assert open("/proc/sys/net/ipv6/bindv6only").read().strip() == "1"
    server = bind_socket("::", 0, False)
    server.setblocking(True)
    port = server.getsockname()[1]
    for address, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        with socket.create_connection((address, port), timeout=5) as client:
            accepted, peer = server.accept()
            accepted.close()
            print(family.name, peer[0])
    """
)


def test_an_ipv6_listener_is_dual_stack_even_where_the_host_default_is_v6_only() -> None:
    """In a private network namespace with bindv6only=1 (unprivileged: a user namespace)."""
    setup = "echo 1 > /proc/sys/net/ipv6/bindv6only && ip link set lo up"
    try:
        probe = subprocess.run(
            ["unshare", "-rn", "sh", "-c", f"{setup} && echo ok"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed")
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        pytest.skip(f"cannot make a user+network namespace here: {probe.stderr.strip()}")
    result = subprocess.run(
        [
            "unshare",
            "-rn",
            "sh",
            "-c",
            f'{setup} && exec "$0" -c "$1"',
            sys.executable,
            DUAL_STACK_PROBE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["AF_INET ::ffff:127.0.0.1", "AF_INET6 ::1"]
