"""The controller against a real kube-apiserver and etcd on loopback.

`main.run` (kopf, lightkube, the reconciler, the TLS config server) logs in with a token
of the chart's own ServiceAccount, bound to the chart's own ClusterRole: a missing rule
shows up here as a 403, in the controller's log and in the API server's audit log. The
data plane is the real `ConfigClient` and `Runtime`; it dials the config server with the
token and CA it reads from the Secret the controller created.

Two limits of a cluster without kube-controller-manager or kubelet: EndpointSlices are
created by the test, and their addresses cannot be loopback ones (the API server refuses
127.0.0.0/8 in an EndpointSlice), so backends get pod-like 10.244.x.y addresses and no
traffic is sent through the data plane to them; the e2e tier (kind) does that. The one
departure from production in the data plane: listeners bind 127.0.0.1 instead of the
snapshot's 0.0.0.0, to stay on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controller import main
from controller.cluster import FIELD_MANAGER
from controller.election import Elector, LightkubeLeases, PodLabel
from controller.settings import Settings
from dataplane.certs import self_signed
from dataplane.config_client import ClientSettings, ConfigClient
from dataplane.runtime import Runtime
from lbwire.messages import SUBPROTOCOL, Ack, Nack, SnapshotMessage
from lbwire.snapshot import Snapshot
from tests.integration.apiserver import (
    REPO,
    ControlPlane,
    binary,
    control_plane,
    free_port,
    missing_binaries,
)
from tests.integration.conftest import http_get

MISSING = missing_binaries()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"needs a kube-apiserver, etcd, kubectl and helm: run `make e2e-assets` "
        f"(missing: {', '.join(MISSING)})",
    ),
]

API = "wslb.io/v1alpha1"
RELEASE_NS = "wslb-system"
CONDITIONS = ["Accepted", "ResolvedRefs", "Programmed"]
# What a missing RBAC rule looks like in the controller's log (kopf, lightkube, ours).
DENIED = re.compile(r"forbidden|\b403\b", re.IGNORECASE)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


@pytest.fixture
def namespace(cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh namespace; the controller in this test logs in as the chart's ServiceAccount."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.controller_kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


# ---------------------------------------------------------------------- objects


def service(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]},
    }


def endpoint_slice(ns: str, *addresses: str, not_ready: tuple[str, ...] = ()) -> dict[str, Any]:
    endpoints = [
        {"addresses": [a], "conditions": {"ready": True, "terminating": False}} for a in addresses
    ] + [{"addresses": [a], "conditions": {"ready": False, "terminating": True}} for a in not_ready]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "echo-a",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": "echo"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def load_balancer(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "LoadBalancer",
        "metadata": {"name": "lb", "namespace": ns},
        "spec": {"replicas": 1, "service": {"type": "ClusterIP"}},
    }


def listener(ns: str, port: int, idle_timeout: int = 60) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Listener",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "loadBalancerRef": {"name": "lb"},
            "protocol": "HTTP",
            "port": port,
            "backends": [{"serviceName": "echo", "port": 8080}],
            "idleTimeoutSeconds": idle_timeout,
        },
    }


# ---------------------------------------------------------------------- helpers


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15.0) -> Any:
    """Poll an async `check` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s (last: {last!r})")
        await asyncio.sleep(0.1)


async def kubectl(cluster: ControlPlane, *args: str, input: str | None = None) -> str:
    """kubectl as the admin, off the event loop (the controller shares it)."""
    result = await asyncio.to_thread(cluster.kubectl, *args, input=input)
    return result.stdout


async def get(cluster: ControlPlane, resource: str, name: str, ns: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(cluster.get, resource, name, ns)


async def apply(cluster: ControlPlane, *objects: dict[str, Any]) -> None:
    await asyncio.to_thread(cluster.apply, *objects)


def write_tls(directory: Path) -> None:
    """The config server's serving certificate for 127.0.0.1, self-signed (also its CA)."""
    cert, key = self_signed(["127.0.0.1"])
    (directory / "tls.crt").write_text(cert)
    (directory / "ca.crt").write_text(cert)
    (directory / "tls.key").write_text(key)


class ControllerThread(threading.Thread):
    """`main.run` on an event loop of its own, as in its own process.

    Not on the test's loop: when kopf stops, it cancels every task created on its loop
    after it started (it assumes it owns the loop), which would include the data plane's.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="wslb-controller", daemon=True)
        self.settings = settings
        self.ports: dict[str, int] = {}
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        async def body() -> None:
            self._loop, self._stop_flag = asyncio.get_running_loop(), asyncio.Event()
            if self._stopping.is_set():
                return
            await main.run(
                self.settings,
                self._stop_flag,
                started=lambda c, h: self.ports.update(config=c, http=h),
            )

        try:
            asyncio.run(body())
        except BaseException as exc:
            self.error = exc

    def request_stop(self) -> None:
        self._stopping.set()
        if self._loop is not None and self._stop_flag is not None:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                self._loop.call_soon_threadsafe(self._stop_flag.set)


@contextlib.asynccontextmanager
async def running_controller(
    tls_dir: Path, pull_secrets: tuple[str, ...] = ()
) -> AsyncIterator[ControllerThread]:
    """The controller as the wslb-controller process runs it, on ephemeral loopback ports."""
    controller = ControllerThread(
        Settings(
            leader_election=False,
            image_pull_secrets=pull_secrets,
            namespace=RELEASE_NS,
            config_tls_dir=str(tls_dir),
            config_host="127.0.0.1",
            config_port=0,
            http_port=0,
            holdoff_seconds=0.02,
            max_delay_seconds=0.2,
            retry_seconds=0.5,
            image="wslb:integration",
        )
    )
    controller.start()

    async def started() -> bool:
        if not controller.is_alive():
            raise AssertionError(f"controller exited: {controller.error!r}")
        return len(controller.ports) == 2

    try:
        await eventually(started, "controller listening", timeout=10)
        yield controller
    finally:
        controller.request_stop()
        await asyncio.to_thread(controller.join, 20)
        assert not controller.is_alive(), "controller did not stop"
        if controller.error is not None:
            raise controller.error


class LoopbackRuntime(Runtime):
    """The real Runtime; listeners bind 127.0.0.1 rather than the snapshot's 0.0.0.0."""

    async def apply(self, snapshot: Snapshot) -> None:
        listeners = [
            item.model_copy(update={"address": "127.0.0.1"}) for item in snapshot.listeners
        ]
        await super().apply(snapshot.model_copy(update={"listeners": listeners}))


class RecordingClient(ConfigClient):
    """The real ConfigClient, keeping every snapshot it was sent and what it answered."""

    def __init__(self, settings: ClientSettings, runtime: Runtime) -> None:
        super().__init__(settings, runtime)
        self.received: list[tuple[SnapshotMessage, Ack | Nack]] = []

    async def apply(self, message: SnapshotMessage) -> Ack | Nack:
        reply = await super().apply(message)
        self.received.append((message, reply))
        return reply


@contextlib.asynccontextmanager
async def data_plane(
    directory: Path, url: str, load_balancer: str, token: str, ca_pem: str
) -> AsyncIterator[RecordingClient]:
    """A data plane as its pod runs one: the token and CA from the config Secret's keys,
    in files; redialing quickly so tests need not wait out a production backoff."""
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_text(ca_pem)
    runtime = LoopbackRuntime()
    client = RecordingClient(
        ClientSettings(
            url=url,
            load_balancer=load_balancer,
            node="lb-wslb-0",
            token_file=directory / "token",
            ca_file=directory / "ca.crt",
            backoff_min=0.1,
            backoff_max=0.5,
        ),
        runtime,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        yield client
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await runtime.shutdown(drain_timeout=0)


def applied(client: RecordingClient, count: int) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: `count` snapshots received, the last one acked."""

    async def check() -> bool:
        return len(client.received) >= count and isinstance(client.received[-1][1], Ack)

    return check


async def config_secret(cluster: ControlPlane, ns: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        return await get(cluster, "secret", "lb-wslb-config", ns)

    secret: dict[str, Any] = await eventually(found, "config Secret")
    return secret


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def addresses(message: SnapshotMessage) -> list[tuple[str, int, bool]]:
    [item] = message.snapshot["listeners"]
    return [(e["address"], e["port"], e["ready"]) for e in item["backends"]["endpoints"]]


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, int]]:
    """type -> (status, observedGeneration) of an object's status conditions."""
    status = (obj or {}).get("status") or {}
    return {
        c["type"]: (c["status"], c.get("observedGeneration")) for c in status.get("conditions", [])
    }


async def unsupported_upgrade(port: int) -> bytes:
    """The response head to a WebSocket upgrade of version 8, which the data plane answers
    itself (426) without a backend."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


# ---------------------------------------------------------------------- tests


def test_chart_rbac_allows_the_controller_no_more(cluster: ControlPlane) -> None:
    """The ServiceAccount's token gets what the controller uses and is refused the rest."""
    allowed = [
        ("watch", "loadbalancers.wslb.io", "--all-namespaces"),
        ("list", "endpointslices.discovery.k8s.io", "--all-namespaces"),
        ("patch", "listeners.wslb.io", "--subresource=status", "-n", "default"),
        ("patch", "loadbalancers.wslb.io", "--subresource=status", "-n", "default"),
        ("create", "secrets", "-n", "default"),
        ("patch", "deployments.apps", "-n", "default"),
        ("patch", "poddisruptionbudgets.policy", "-n", "default"),
        ("create", "events", "-n", "default"),
        ("update", "leases.coordination.k8s.io/wslb-controller", "-n", "wslb-system"),
        ("patch", "pods", "-n", "wslb-system"),
    ]
    refused = [
        ("patch", "loadbalancers.wslb.io", "-n", "default"),  # the spec is the user's
        ("update", "listeners.wslb.io", "-n", "default"),
        ("delete", "pods", "-n", "default"),
        ("patch", "pods", "-n", "default"),  # only the release namespace's (leader label)
        ("update", "leases.coordination.k8s.io/other", "-n", "wslb-system"),
        ("create", "leases.coordination.k8s.io", "-n", "wslb-system"),  # the chart creates it
        ("delete", "services", "-n", "default"),  # the garbage collector deletes owned objects
        ("delete", "secrets", "-n", "default"),
        ("update", "deployments.apps", "-n", "default"),
        ("create", "pods", "--subresource=exec", "-n", "default"),
        ("get", "nodes"),
        ("list", "namespaces"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("*", "*", "--all-namespaces"),
    ]
    assert [args for args in allowed if not cluster.can_i(*args)] == []
    assert [args for args in refused if cluster.can_i(*args)] == []
    # Not just the review API: a real request with the token is refused by RBAC.
    denied = cluster.kubectl("get", "nodes", kubeconfig=cluster.controller_kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and cluster.controller_user in denied.stderr


async def test_controller_against_a_real_api_server(
    cluster: ControlPlane, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Owned objects, the config channel, status, endpoint changes, and the listing gate
    across a restart, with the chart's RBAC and no request refused."""
    caplog.set_level(logging.INFO)
    audited_before = len(cluster.audit_events())  # the RBAC test's own refusals are older
    ns = namespace
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    port = free_port()
    await apply(
        cluster,
        service(ns),
        endpoint_slice(ns, "10.244.1.5", "10.244.2.7", not_ready=("10.244.3.9",)),
        load_balancer(ns),
        listener(ns, port),
    )
    lb = await get(cluster, "loadbalancers.wslb.io", "lb", ns)
    assert lb is not None
    owner = {
        "apiVersion": API,
        "kind": "LoadBalancer",
        "name": "lb",
        "uid": lb["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    async with contextlib.AsyncExitStack() as stack:
        async with running_controller(tls_dir) as ctl:
            assert await http_get(ctl.ports["http"], "/healthz") == (200, "ok\n")

            async def ready() -> bool:
                return (await http_get(ctl.ports["http"], "/readyz"))[0] == 200

            await eventually(ready, "/readyz 200")

            # The owned objects, written with the ServiceAccount's token.
            async def owned(resource: str, name: str) -> dict[str, Any]:
                async def found() -> dict[str, Any] | None:
                    return await get(cluster, resource, name, ns)

                obj: dict[str, Any] = await eventually(found, f"{resource} {name}")
                assert obj["metadata"]["ownerReferences"] == [owner], name
                return obj

            secret = await owned("secret", "lb-wslb-config")
            deployment = await owned("deployment", "lb-wslb")
            lb_service = await owned("service", "lb-wslb")
            await owned("service", "lb-wslb-metrics")
            assert deployment["spec"]["replicas"] == 1
            managers = {m["manager"] for m in deployment["metadata"]["managedFields"]}
            assert FIELD_MANAGER in managers
            assert [p["port"] for p in lb_service["spec"]["ports"]] == [port]
            token, ca_pem = secret_text(secret, "token"), secret_text(secret, "ca.crt")
            assert ca_pem == (tls_dir / "ca.crt").read_text()

            # The config channel refuses a wrong token and a missing one.
            url = f"wss://127.0.0.1:{ctl.ports['config']}"
            context = ssl.create_default_context(cadata=ca_pem)
            for headers, code in (({"Authorization": "Bearer wrong"}, 403), ({}, 401)):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(
                        f"{url}/v1/loadbalancers/{ns}/lb",
                        ssl=context,
                        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                        additional_headers=headers,
                    ):
                        pass
                assert refused.value.response.status_code == code

            # A data plane, as the pod runs it: token and CA from the Secret's keys.
            client = await stack.enter_async_context(
                data_plane(tmp_path, url, f"{ns}/lb", token, ca_pem)
            )
            runtime = client.runtime
            await eventually(applied(client, 1), "first snapshot applied")
            first, _ = client.received[0]
            assert addresses(first) == [
                ("10.244.1.5", 9000, True),
                ("10.244.2.7", 9000, True),
                ("10.244.3.9", 9000, False),
            ]
            # The data plane serves the listener: it answers an unsupported WebSocket
            # version itself (a plain GET would be proxied to the unroutable pod addresses).
            head = await unsupported_upgrade(port)
            assert head.startswith(b"HTTP/1.1 426 "), head
            assert b"sec-websocket-version: 13" in head.lower(), head

            # Status: every Listener condition True for its generation; the LB's counts.
            async def listener_programmed(generation: int) -> dict[str, Any] | None:
                obj = await get(cluster, "listeners.wslb.io", "web", ns)
                want = dict.fromkeys(CONDITIONS, ("True", generation))
                if obj and {k: conditions(obj).get(k) for k in CONDITIONS} == want:
                    return obj
                return None

            web = await eventually(lambda: listener_programmed(1), "Listener Programmed")
            assert web["metadata"]["generation"] == 1
            assert web["status"]["observedGeneration"] == 1
            assert (web["status"]["readyBackends"], web["status"]["totalBackends"]) == (2, 3)

            async def lb_acked() -> dict[str, Any] | None:
                obj = await get(cluster, "loadbalancers.wslb.io", "lb", ns)
                status = (obj or {}).get("status") or {}
                if status.get("appliedVersion") == client.applied_version:
                    return obj
                return None

            lb = await eventually(lb_acked, "LoadBalancer appliedVersion")
            assert lb["status"]["dataPlanes"] == {"desired": 1, "connected": 1, "acked": 1}
            assert conditions(lb)["Accepted"] == ("True", 1)
            assert conditions(lb)["Programmed"] == ("True", 1)
            cluster_ip = (await get(cluster, "service", "lb-wslb", ns) or {})["spec"]["clusterIP"]
            assert lb["status"]["address"] == cluster_ip  # allocated by the API server

            # An EndpointSlice change becomes a new snapshot, applied and acked.
            await apply(cluster, endpoint_slice(ns, "10.244.1.5", "10.244.4.2"))
            await eventually(applied(client, 2), "snapshot after the EndpointSlice change")
            assert addresses(client.received[-1][0]) == [
                ("10.244.1.5", 9000, True),
                ("10.244.4.2", 9000, True),
            ]
            assert [e.address for e in runtime.listeners["web"].config.backends.endpoints] == [
                "10.244.1.5",
                "10.244.4.2",
            ]

            # A spec change: the new generation is observed once the data plane acked it.
            await apply(cluster, listener(ns, port, idle_timeout=61))
            web = await eventually(lambda: listener_programmed(2), "Programmed generation 2")
            assert web["status"]["observedGeneration"] == 2
            assert runtime.listeners["web"].config.idle_timeout_seconds == 61
            before_restart = len(client.received)

        # Controller down; the data plane keeps serving what it has and keeps redialing.
        assert runtime.listeners["web"].config.port == port
        await apply(cluster, endpoint_slice(ns, "10.244.5.1", "10.244.5.2", "10.244.5.3"))

        async with running_controller(tls_dir) as ctl:
            client.settings.url = f"wss://127.0.0.1:{ctl.ports['config']}"  # a new ephemeral port
            await eventually(applied(client, before_restart + 1), "snapshot after the restart")
            # The listing gate: the restarted controller's first snapshot is complete.
            after, _ = client.received[before_restart]
            assert addresses(after) == [
                ("10.244.5.1", 9000, True),
                ("10.244.5.2", 9000, True),
                ("10.244.5.3", 9000, True),
            ]
            # The same Secret and token: the data plane got in without being told anew.
            restarted = await get(cluster, "secret", "lb-wslb-config", ns)
            assert restarted is not None
            assert restarted["metadata"]["uid"] == secret["metadata"]["uid"]
            await eventually(lb_acked, "LoadBalancer appliedVersion after the restart")
            _, metrics = await http_get(ctl.ports["http"], "/metrics")
            lb_labels = f'load_balancer="lb",namespace="{ns}"'
            assert f"wslb_controller_acks_total{{{lb_labels}}} 1.0" in metrics
            # The nack counters exist before any nack (increase() sees the first one),
            # build info is there, and no counter has a `_created` twin.
            nacks = f'wslb_controller_nacks_total{{{lb_labels},reason="InvalidConfig"}}'
            assert f"{nacks} 0.0" in metrics
            assert "wslb_build_info{" in metrics
            assert "_created" not in metrics

            async def listener_programmed() -> bool:
                _, text = await http_get(ctl.ports["http"], "/metrics")
                series = (
                    "wslb_controller_listener_programmed{"
                    f'listener="web",load_balancer="lb",namespace="{ns}",reason="Programmed"}} 1.0'
                )
                return series in text

            await eventually(listener_programmed, "listener_programmed 1 after the restart")
            complete = len(client.received)

            # Deleting the EndpointSlice empties the backends: a real empty, not a partial one.
            await kubectl(cluster, "delete", "endpointslice", "echo-a", "-n", ns)
            await eventually(applied(client, complete + 1), "snapshot after the slice deletion")
            assert addresses(client.received[-1][0]) == []

            # Deleting the LoadBalancer lets its data plane go and un-accepts its Listener.
            logged = len(caplog.records)
            await kubectl(cluster, "delete", "loadbalancer.wslb.io", "lb", "-n", ns)

            async def orphaned() -> bool:
                obj = await get(cluster, "listeners.wslb.io", "web", ns)
                status = (obj or {}).get("status") or {}
                accepted = [c for c in status.get("conditions", []) if c["type"] == "Accepted"]
                return [(c["status"], c["reason"]) for c in accepted] == [
                    ("False", "LoadBalancerNotFound")
                ]

            await eventually(orphaned, "Listener not accepted without its LoadBalancer")
            assert any(
                r.name == "wslb.config_server" and "disconnected" in r.getMessage()
                for r in caplog.records[logged:]
            )

    # No snapshot was ever refused, and none before the deletion had lost its endpoints.
    assert all(isinstance(reply, Ack) for _, reply in client.received)
    assert all(addresses(message) for message, _ in client.received[:complete])

    # RBAC: nothing the controller asked for was refused, by its log or the API server's.
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [
        formatter.format(record)
        for record in caplog.records
        if not record.name.startswith("websockets")  # the config server's own 401/403 above
    ]
    denied = [line for line in lines if DENIED.search(line)]
    assert denied == []
    events = [
        e
        for e in cluster.audit_events()[audited_before:]
        if e["user"]["username"] == cluster.controller_user
    ]
    unauthorized = [
        (e["verb"], e["requestURI"], e["responseStatus"]["code"])
        for e in events
        if e["responseStatus"].get("code") in (401, 403)
    ]
    assert unauthorized == []
    made = {
        (
            e["verb"],
            e.get("objectRef", {}).get("resource"),
            e.get("objectRef", {}).get("subresource"),
        )
        for e in events
    }
    assert {
        ("watch", "endpointslices", None),
        ("create", "secrets", None),
        ("patch", "deployments", None),
        ("patch", "listeners", "status"),
        ("patch", "loadbalancers", "status"),
    } <= made


def backend_service(ns: str, name: str) -> dict[str, Any]:
    body = service(ns)
    body["metadata"]["name"] = name
    return body


def backend_slice(ns: str, name: str, *addresses: str) -> dict[str, Any]:
    body = endpoint_slice(ns, *addresses)
    body["metadata"]["name"] = f"{name}-a"
    body["metadata"]["labels"] = {"kubernetes.io/service-name": name}
    return body


def tls_secret(ns: str, name: str, *dns_names: str) -> tuple[dict[str, Any], str]:
    """A kubernetes.io/tls Secret with a fresh self-signed certificate; and its PEM."""
    cert, key = self_signed(list(dns_names))
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert.encode()).decode(),
            "tls.key": base64.b64encode(key.encode()).decode(),
        },
    }
    return body, cert


def rules_listener(ns: str, port: int) -> dict[str, Any]:
    def rule(name: str, path: str, service: str, **match: str) -> dict[str, Any]:
        return {
            "name": name,
            "match": {"path": path, **match},
            "backends": [{"serviceName": service, "port": 8080}],
        }

    return {
        "apiVersion": API,
        "kind": "Listener",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {
            "loadBalancerRef": {"name": "lb"},
            "protocol": "HTTPS",
            "port": port,
            "tls": {"certificates": [{"secretName": "app-tls"}, {"secretName": "chat-tls"}]},
            "backends": [{"serviceName": "echo", "port": 8080}],
            "http": {"maxBodyBytes": 1048576},
            "rules": [
                {**rule("api", "/api", "api", host="app.example.com"), "idleTimeoutSeconds": 30},
                rule("ghost", "/ghost", "ghost"),
                rule("api-again", "/api/", "api", host="app.example.com"),  # shadowed by api
            ],
        },
    }


async def served_certificate(port: int, server_name: str) -> bytes:
    """The DER certificate the listener presents to a ClientHello with `server_name`."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


async def test_listener_with_rules_and_two_certificates_is_programmed(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """A Listener with three rules (one naming a missing Service, one shadowed) and two
    certificate Secrets: the API server admits it, the controller builds the rules and the
    SNI names into the snapshot, the data plane acks it and answers each name with its
    certificate, status shows the missing Service and the conflict, and rotating the second
    Secret reaches the data plane."""
    ns = namespace
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    port = free_port()
    app_secret, app_pem = tls_secret(ns, "app-tls", "app.example.com")
    chat_secret, chat_pem = tls_secret(ns, "chat-tls", "*.chat.example.com")
    await apply(
        cluster,
        service(ns),
        endpoint_slice(ns, "10.244.1.5"),
        backend_service(ns, "api"),
        backend_slice(ns, "api", "10.244.2.1", "10.244.2.2"),
        app_secret,
        chat_secret,
        load_balancer(ns),
        rules_listener(ns, port),
    )
    async with contextlib.AsyncExitStack() as stack:
        ctl = await stack.enter_async_context(running_controller(tls_dir))
        secret = await config_secret(cluster, ns)
        url = f"wss://127.0.0.1:{ctl.ports['config']}"
        token, ca_pem = secret_text(secret, "token"), secret_text(secret, "ca.crt")
        client = await stack.enter_async_context(
            data_plane(tmp_path, url, f"{ns}/lb", token, ca_pem)
        )
        await eventually(applied(client, 1), "first snapshot applied")

        # The snapshot: the rules in spec order with their own endpoints and timers, the
        # http block, and the certificates in order named by their DNS SANs.
        [app] = client.received[-1][0].snapshot["listeners"]
        rules = [
            (r["name"], r["match"], [e["address"] for e in r["backends"]["endpoints"]])
            for r in app["rules"]
        ]
        api_match = {"host": "app.example.com", "path": "/api", "pathType": "Prefix"}
        assert rules == [
            ("api", api_match, ["10.244.2.1", "10.244.2.2"]),
            ("ghost", {"host": None, "path": "/ghost", "pathType": "Prefix"}, []),
            ("api-again", {**api_match, "path": "/api/"}, ["10.244.2.1", "10.244.2.2"]),
        ]
        assert app["rules"][0]["idleTimeoutSeconds"] == 30
        assert [e["address"] for e in app["backends"]["endpoints"]] == ["10.244.1.5"]
        assert app["http"]["maxBodyBytes"] == 1048576
        certificates = app["tls"]["certificates"]
        assert [(c["certificatePem"], c["serverNames"]) for c in certificates] == [
            (app_pem, ["app.example.com"]),
            (chat_pem, ["*.chat.example.com"]),
        ]

        # The data plane chooses by SNI: the wildcard's certificate, else the first.
        assert await served_certificate(port, "a.chat.example.com") == der(chat_pem)
        assert await served_certificate(port, "app.example.com") == der(app_pem)
        assert await served_certificate(port, "unknown.example.org") == der(app_pem)

        # Status: programmed, with the missing Service and the shadowed rule named.
        async def programmed() -> dict[str, Any] | None:
            obj = await get(cluster, "listeners.wslb.io", "app", ns)
            if conditions(obj).get("Programmed") == ("True", 1):
                return obj
            return None

        obj = await eventually(programmed, "Listener with rules Programmed")
        by_type = {c["type"]: c for c in obj["status"]["conditions"]}
        assert (by_type["Accepted"]["status"], by_type["Accepted"]["reason"]) == (
            "True",
            "Accepted",
        )
        resolved = by_type["ResolvedRefs"]
        assert (resolved["status"], resolved["reason"]) == ("False", "ServiceNotFound")
        assert resolved["message"] == "rule ghost: Service ghost not found"
        conflicted = by_type["Conflicted"]
        assert (conflicted["status"], conflicted["reason"]) == ("True", "RuleShadowed")
        assert "rule api-again" in conflicted["message"] and "rule api " in conflicted["message"]
        assert obj["status"]["ruleCount"] == 3
        assert (obj["status"]["readyBackends"], obj["status"]["totalBackends"]) == (3, 3)

        # The printer columns, as kubectl shows them.
        table = await kubectl(cluster, "get", "listeners.wslb.io", "app", "-n", ns, "-o", "wide")
        header, row = table.splitlines()
        columns = dict(zip(header.split(), row.split(), strict=True))
        assert (columns["RULES"], columns["RESOLVEDREFS"], columns["CONFLICTED"]) == (
            "3",
            "False",
            "True",
        )

        # Rotating the second Secret reaches the data plane; the first is untouched.
        received = len(client.received)
        rotated, rotated_pem = tls_secret(ns, "chat-tls", "*.chat.example.com")
        await apply(cluster, rotated)
        await eventually(applied(client, received + 1), "snapshot after the rotation")
        [app] = client.received[-1][0].snapshot["listeners"]
        pems = [c["certificatePem"] for c in app["tls"]["certificates"]]
        assert pems == [app_pem, rotated_pem]

        async def rotated_served() -> bool:
            return await served_certificate(port, "b.chat.example.com") == der(rotated_pem)

        await eventually(rotated_served, "the rotated certificate served")

        # Creating the missing Service resolves the rule's reference.
        await apply(cluster, backend_service(ns, "ghost"), backend_slice(ns, "ghost", "10.244.3.1"))

        async def resolved_now() -> bool:
            obj = await get(cluster, "listeners.wslb.io", "app", ns)
            return conditions(obj).get("ResolvedRefs") == ("True", 1)

        await eventually(resolved_now, "ResolvedRefs after the Service appeared")
        [app] = client.received[-1][0].snapshot["listeners"]
        assert [e["address"] for e in app["rules"][1]["backends"]["endpoints"]] == ["10.244.3.1"]
    assert all(isinstance(reply, Ack) for _, reply in client.received)


async def test_stopping_controller_closes_data_planes_promptly(
    cluster: ControlPlane, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A controller stopping (SIGTERM in a pod) says 1001 to its data planes at once."""
    caplog.set_level(logging.INFO)
    ns = namespace
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    port = free_port()
    await apply(
        cluster,
        service(ns),
        endpoint_slice(ns, "10.244.1.5"),
        load_balancer(ns),
        listener(ns, port),
    )
    async with contextlib.AsyncExitStack() as stack:
        async with running_controller(tls_dir) as ctl:
            secret = await config_secret(cluster, ns)
            client = await stack.enter_async_context(
                data_plane(
                    tmp_path,
                    f"wss://127.0.0.1:{ctl.ports['config']}",
                    f"{ns}/lb",
                    secret_text(secret, "token"),
                    secret_text(secret, "ca.crt"),
                )
            )
            await eventually(applied(client, 1), "snapshot applied")
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
    closed_abnormally = [
        r.getMessage()
        for r in caplog.records
        if r.name == "wslb.config_client" and "1011" in r.getMessage()
    ]
    assert closed_abnormally == []
    assert stopped_in < 2.0


# ---------------------------------------------------------------------- leader election


def lightkube_client(cluster: ControlPlane) -> AsyncClient:
    """A lightkube client with the controller's own token (the chart's RBAC applies)."""
    return AsyncClient(config=KubeConfig.from_file(cluster.controller_kubeconfig))


def pod(name: str, release: str = "wslb") -> dict[str, Any]:
    """A Pod object standing for a controller replica of `release` (no kubelet runs it)."""
    labels = {"app.kubernetes.io/name": "wslb", "app.kubernetes.io/instance": release}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": RELEASE_NS, "labels": labels},
        "spec": {
            # No controller-manager creates the `default` ServiceAccount here.
            "serviceAccountName": "wslb-controller",
            "automountServiceAccountToken": False,
            "containers": [{"name": "c", "image": "wslb:integration"}],
        },
    }


def leader_label(cluster: ControlPlane, name: str) -> str | None:
    found = cluster.get("pod", name, RELEASE_NS)
    assert found is not None
    labels: dict[str, str] = found["metadata"].get("labels") or {}
    return labels.get("wslb.io/leader")


async def test_lease_election_with_the_chart_role(cluster: ControlPlane) -> None:
    """Two electors with the ServiceAccount's token on the Lease the chart's Role names:
    one wins, a release hands over at once, an abandoned Lease after its duration."""
    client = lightkube_client(cluster)
    try:
        leases = LightkubeLeases(client, RELEASE_NS, "wslb-controller")
        a, b = Elector(leases, "a", duration=2), Elector(leases, "b", duration=2)
        both = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(both) == [False, True]  # a race has one winner
        first, second = (a, b) if a.leading else (b, a)
        assert not await second.try_acquire_or_renew()
        await first.release()
        await asyncio.wait_for(second.acquire(), timeout=2)  # no wait for the duration
        # `second` now stops renewing without releasing (a crashed leader).
        started = time.monotonic()
        await asyncio.wait_for(first.acquire(), timeout=10)
        waited = time.monotonic() - started
        assert 1.5 <= waited < 10, waited  # it waited out the 2 s Lease, on its own clock
        lease = cluster.get("lease.coordination.k8s.io", "wslb-controller", RELEASE_NS)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == first.identity
        assert lease["spec"]["leaseTransitions"] >= 2
    finally:
        await client.close()


async def test_leader_label_moves_with_the_chart_role(cluster: ControlPlane) -> None:
    await apply(cluster, pod("label-a"), pod("label-b"), pod("other-leader", release="other"))
    client = lightkube_client(cluster)
    try:
        await PodLabel(client, RELEASE_NS, "other-leader").lead()  # another release's leader
        await PodLabel(client, RELEASE_NS, "label-a").lead()
        assert await asyncio.to_thread(leader_label, cluster, "label-a") == "true"
        await PodLabel(client, RELEASE_NS, "label-b").lead()  # a new leader unlabels the old
        assert await asyncio.to_thread(leader_label, cluster, "label-a") is None
        assert await asyncio.to_thread(leader_label, cluster, "label-b") == "true"
        # Each release keeps its own leader: the config Services select by release too.
        assert await asyncio.to_thread(leader_label, cluster, "other-leader") == "true"
        await PodLabel(client, RELEASE_NS, "label-b").stand_by()
        assert await asyncio.to_thread(leader_label, cluster, "label-b") is None
    finally:
        await client.close()


def elected_controller(tls_dir: Path, name: str, lease: str) -> ControllerThread:
    return ControllerThread(
        Settings(
            leader_election=True,
            lease_name=lease,
            lease_duration_seconds=2,
            namespace=RELEASE_NS,
            pod_name=name,
            config_tls_dir=str(tls_dir),
            config_host="127.0.0.1",
            config_port=0,
            http_port=free_port(),
            holdoff_seconds=0.02,
            max_delay_seconds=0.2,
            retry_seconds=0.5,
            image="wslb:integration",
        )
    )


async def metric(port: int, name: str) -> float | None:
    status, body = await http_get(port, "/metrics")
    if status != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_standby_takes_over_and_reconciles_the_scale_subresource(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """Two controllers with election: the standby serves no config channel and writes
    nothing; when the leader stops, it takes over, labels its pod, and answers a
    `kubectl scale` of a LoadBalancer (scale subresource) by resizing the Deployment."""
    ns = namespace
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    lease = "wslb-controller"  # the one name the chart's Role lets the controller renew
    first, second = f"{ns}-ctl-a", f"{ns}-ctl-b"
    await apply(cluster, pod(first), pod(second))
    await apply(cluster, load_balancer(ns))
    a = elected_controller(tls_dir, first, lease)
    a.start()
    b: ControllerThread | None = None
    try:
        await eventually(lambda: asyncio.sleep(0, len(a.ports) == 2), "a leads and listens")
        b = elected_controller(tls_dir, second, lease)
        b.start()
        b_http = b.settings.http_port

        async def b_standing_by() -> bool:
            return await metric(b_http, "wslb_controller_leader") == 0.0

        await eventually(b_standing_by, "b's /metrics says standby")
        assert (await http_get(b_http, "/readyz"))[0] == 200  # a standby is ready
        assert b.ports == {}  # no config channel on the standby

        async def deployment_replicas() -> int | None:
            found = await get(cluster, "deployment", "lb-wslb", ns)
            return found["spec"]["replicas"] if found is not None else None

        assert await eventually(deployment_replicas, "a creates the Deployment") == 1
        assert await asyncio.to_thread(leader_label, cluster, first) == "true"
        assert await asyncio.to_thread(leader_label, cluster, second) is None

        a.request_stop()  # a clean stop releases the Lease
        await asyncio.to_thread(a.join, 20)
        assert not a.is_alive() and a.error is None
        await eventually(lambda: asyncio.sleep(0, len(b.ports) == 2), "b leads", timeout=10)

        async def b_labelled() -> bool:
            return await asyncio.to_thread(leader_label, cluster, second) == "true"

        await eventually(b_labelled, "b's pod carries the leader label")
        assert await asyncio.to_thread(leader_label, cluster, first) is None

        await kubectl(cluster, "scale", "loadbalancer.wslb.io/lb", "--replicas=3", "-n", ns)
        scale_path = f"/apis/wslb.io/v1alpha1/namespaces/{ns}/loadbalancers/lb/scale"

        async def scaled() -> bool:
            scale = json.loads(await kubectl(cluster, "get", "--raw", scale_path))
            return (
                scale["spec"]["replicas"] == 3
                and scale["status"].get("replicas") == 3
                and await deployment_replicas() == 3
            )

        await eventually(scaled, "b scales the Deployment and reports the scale status")
        raw = await kubectl(cluster, "get", "--raw", scale_path)
        assert json.loads(raw)["status"]["selector"] == (
            "app.kubernetes.io/name=wslb-dataplane,wslb.io/load-balancer=lb"
        )
        budget = await get(cluster, "poddisruptionbudget", "lb-wslb", ns)
        assert budget is not None and budget["spec"]["maxUnavailable"] == 1
    finally:
        for controller in (a, b):
            if controller is None:
                continue
            controller.request_stop()
            await asyncio.to_thread(controller.join, 20)
            assert not controller.is_alive(), "controller did not stop"


# ---------------------------------------------------------------------- CRDs on the API server


EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"


def test_examples_pass_and_invalid_examples_fail_the_api_servers_validation(
    cluster: ControlPlane,
) -> None:
    """The CEL rules and schemas as the API server evaluates them (server-side dry run)."""
    cluster.kubectl("create", "namespace", "examples", check=False)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        result = cluster.kubectl(
            "apply", "--dry-run=server", "-n", "examples", "-f", str(path), check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
    for path in sorted((EXAMPLES / "invalid").glob("*.yaml")):
        (expect,) = re.findall(r"^# expect: (\S+)$", path.read_text(), flags=re.MULTILINE)
        result = cluster.kubectl(
            "create", "--dry-run=server", "-n", "examples", "-f", str(path), check=False
        )
        assert result.returncode != 0, f"{path.name} was accepted"
        assert expect in result.stderr, f"{path.name}: {result.stderr}"


def test_the_rendered_chart_passes_the_api_servers_validation(cluster: ControlPlane) -> None:
    """`helm template` output, the templated CRDs included, applied as a server-side dry
    run: what `helm install` and `helm upgrade` would send is valid for this Kubernetes."""
    rendered = subprocess.run(
        [str(binary("helm")), "template", "wslb", str(REPO / "helm" / "wslb"), "-n", RELEASE_NS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered) if doc]
    assert kinds.count("CustomResourceDefinition") == 2
    assert "PodDisruptionBudget" in kinds and "Role" in kinds
    assert "Pod" in kinds  # the `helm test` hook, run under the namespace's default account
    # No controller-manager here makes the namespace's default ServiceAccount.
    cluster.kubectl("create", "namespace", RELEASE_NS, check=False)
    cluster.kubectl("create", "serviceaccount", "default", "-n", RELEASE_NS, check=False)
    result = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-",
        input=rendered, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/loadbalancers.wslb.io" in result.stdout


async def test_chart_pull_secret_is_copied_to_the_load_balancer_namespace(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """The chart's pull Secret (release namespace) reaches the data-plane pods' namespace
    as `<lb>-wslb-pull`, read with the ServiceAccount's token, and the pods pull with it."""
    ns = namespace
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    auths = {"auths": {"registry.example": {"username": "u", "password": "p"}}}
    name = f"regcred-{ns}"
    regcred = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": RELEASE_NS},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(auths).encode()).decode()},
    }
    await apply(cluster, regcred, load_balancer(ns))
    async with running_controller(tls_dir, pull_secrets=(name,)):

        async def copied() -> dict[str, Any] | None:
            return await get(cluster, "secret", "lb-wslb-pull", ns)

        copy = await eventually(copied, "the pull Secret copy")
        assert copy["type"] == "kubernetes.io/dockerconfigjson"
        assert json.loads(base64.b64decode(copy["data"][".dockerconfigjson"])) == auths
        assert copy["metadata"]["ownerReferences"][0]["name"] == "lb"
        deployment = await eventually(
            lambda: get(cluster, "deployment", "lb-wslb", ns), "the data-plane Deployment"
        )
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["imagePullSecrets"] == [{"name": "lb-wslb-pull"}]
