"""The controller's kopf handlers against a loopback fake API server.

A tiny aiohttp server answers discovery, lists and watches for the five watched kinds,
so the real kopf machinery (login, index pre-population, event handlers) drives the
store and the reconciler. No cluster: the point is the listing gate end to end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controller import handlers, main
from controller.metrics import ControllerMetrics
from controller.models import Kind
from controller.owned import DataPlaneParams
from controller.reconciler import Reconciler
from controller.settings import Settings
from controller.store import Store
from lbwire.messages import SUBPROTOCOL, Ack, Hello, SnapshotMessage, decode, encode
from tests.unit import kubeobjects as k
from tests.unit.test_reconciler import FakeCluster, FakeServer, until

PLURALS = {
    "loadbalancers": ("wslb.io/v1alpha1", "LoadBalancer"),
    "listeners": ("wslb.io/v1alpha1", "Listener"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "services": ("v1", "Service"),
    "secrets": ("v1", "Secret"),
}
VERBS = ["get", "list", "watch", "patch"]
# What kopf's backbone waits for in discovery, besides the watched kinds.
BACKBONE = {
    "v1": [("namespaces", "Namespace", False), ("events", "Event", True)],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", False)],
}


class FakeApi:
    """Discovery, list and watch; lists of one kind can be held back to test the gate."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {plural: [] for plural in PLURALS}
        self.watchers: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {p: [] for p in PLURALS}
        self.held: dict[str, asyncio.Event] = {}
        self.listed: set[str] = set()
        self.unexpected: list[str] = []
        self.writes: list[tuple[str, str, dict[str, Any]]] = []  # method, path+query, body

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/version", self.version)
        app.router.add_get("/api", self.core)
        app.router.add_get("/apis", self.groups)
        app.router.add_get("/api/v1", self.resources)
        app.router.add_get("/apis/{group}/{version}", self.resources)
        app.router.add_get("/api/v1/{plural}", self.collection)
        app.router.add_get("/apis/{group}/{version}/{plural}", self.collection)
        for method in ("POST", "PATCH", "PUT"):
            app.router.add_route(method, "/{tail:.*}", self.write)
        app.router.add_route("*", "/{tail:.*}", self.other)
        return app

    async def core(self, _: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1"]})

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0"})

    async def groups(self, _: web.Request) -> web.Response:
        groups = [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
            for group, version in (
                ("wslb.io", "v1alpha1"),
                ("discovery.k8s.io", "v1"),
                ("apiextensions.k8s.io", "v1"),
            )
        ]
        return web.json_response({"groups": groups})

    async def resources(self, request: web.Request) -> web.Response:
        group = request.match_info.get("group")
        version = request.match_info.get("version", "v1")
        api_version = f"{group}/{version}" if group else version
        resources = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "kind": kind,
                "namespaced": True,
                "verbs": VERBS,
            }
            for plural, (av, kind) in PLURALS.items()
            if av == api_version
        ]
        resources += [
            {
                "name": plural,
                "singularName": kind.lower(),
                "kind": kind,
                "namespaced": namespaced,
                "verbs": VERBS,
            }
            for plural, kind, namespaced in BACKBONE.get(api_version, [])
        ]
        return web.json_response({"groupVersion": api_version, "resources": resources})

    async def collection(self, request: web.Request) -> web.StreamResponse:
        plural = request.match_info["plural"]
        if plural not in PLURALS:
            return await self.other(request)
        if request.query.get("watch") == "true":
            return await self.watch(request, plural)
        held = self.held.get(plural)
        if held is not None:
            await held.wait()
        self.listed.add(plural)
        api_version, kind = PLURALS[plural]
        return web.json_response(
            {
                "apiVersion": api_version,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": "1"},
                "items": self.objects[plural],
            }
        )

    async def watch(self, request: web.Request, plural: str) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.watchers[plural].append(queue)
        try:
            while True:
                event = await queue.get()
                await response.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watchers[plural].remove(queue)

    async def write(self, request: web.Request) -> web.Response:
        """Record a create, apply or patch and answer with its body as the object."""
        body = json.loads(await request.read() or b"{}")
        self.writes.append((request.method, request.path_qs, body))
        obj = body.get("status") if request.path.endswith("/status") else None
        if obj is not None:
            parts = request.path.split("/")
            group_version = "/".join(parts[2:4])
            kind = {"loadbalancers": "LoadBalancer", "listeners": "Listener"}[parts[-3]]
            meta_ = {"name": parts[-2], "namespace": parts[-4]}
            body = {"apiVersion": group_version, "kind": kind, "metadata": meta_, "status": obj}
        return web.json_response(body, status=201 if request.method == "POST" else 200)

    def written(self, method: str, fragment: str) -> list[tuple[str, dict[str, Any]]]:
        return [(path, body) for m, path, body in self.writes if m == method and fragment in path]

    async def other(self, request: web.Request) -> web.Response:
        self.unexpected.append(f"{request.method} {request.path}")
        return web.json_response({"kind": "Status", "code": 404}, status=404)

    def emit(self, plural: str, type_: str, body: dict[str, Any]) -> None:
        for queue in self.watchers[plural]:
            queue.put_nowait({"type": type_, "object": body})


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "t"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield fake
    await runner.cleanup()


@contextlib.asynccontextmanager
async def controller(
    api: FakeApi,
) -> AsyncIterator[tuple[Store, Reconciler, FakeServer]]:
    store, server = Store(), FakeServer()
    reconciler = Reconciler(
        store,
        FakeCluster(),
        DataPlaneParams(image="wslb:test", config_url="wss://config:9443"),
        server=server,
        holdoff=0.02,
        max_delay=0.2,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, store, reconciler, ControllerMetrics())
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(reconciler.run())
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry, settings=settings, standalone=True, clusterwide=True, stop_flag=stop
        )
    )
    try:
        yield store, reconciler, server
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(operator, 10)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task


async def test_first_snapshot_waits_for_every_kind_and_is_complete(api: FakeApi) -> None:
    """Slices list last; the first published snapshot already has their endpoints."""
    api.objects["loadbalancers"] = [k.load_balancer()]
    api.objects["listeners"] = [k.listener()]
    api.objects["services"] = [k.service()]
    api.objects["endpointslices"] = [
        k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1"), k.endpoint("10.0.0.2")])
    ]
    api.held["endpointslices"] = asyncio.Event()
    async with controller(api) as (store, reconciler, server):
        await until(lambda: {"loadbalancers", "listeners", "services", "secrets"} <= api.listed)
        await asyncio.sleep(0.3)  # many holdoffs: a premature build would have happened
        assert server.published == []
        assert not reconciler.synced and not store.listed(Kind.LISTENER)
        api.held["endpointslices"].set()
        await until(lambda: len(server.published) == 1, timeout=10)
        snapshot = server.published[0][1]
        endpoints = snapshot.listeners[0].backends.endpoints
        assert [e.address for e in endpoints] == ["10.0.0.1", "10.0.0.2"]
        assert reconciler.synced


async def test_watch_events_update_and_delete(api: FakeApi) -> None:
    api.objects["loadbalancers"] = [k.load_balancer()]
    api.objects["listeners"] = [k.listener()]
    api.objects["services"] = [k.service()]
    async with controller(api) as (store, _, server):
        await until(lambda: len(server.published) == 1, timeout=10)
        assert server.published[0][1].listeners[0].backends.endpoints == []
        await until(lambda: len(api.watchers["endpointslices"]) == 1)
        body = k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.9")])
        api.emit("endpointslices", "ADDED", body)
        await until(lambda: len(server.published) == 2)
        assert [e.address for e in server.published[1][1].listeners[0].backends.endpoints] == [
            "10.0.0.9"
        ]
        api.emit("endpointslices", "DELETED", body)
        await until(lambda: len(server.published) == 3)
        assert server.published[2][1].listeners[0].backends.endpoints == []
        assert "default/echo-a" not in store.endpoint_slices
        api.emit("loadbalancers", "DELETED", k.load_balancer())
        await until(lambda: server.forgotten == ["default/lb"])
    assert not any("status" in path for path in api.unexpected), api.unexpected


def write_tls(directory: Path) -> Path:
    """A self-signed serving certificate for 127.0.0.1, also used as the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wslb-config")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "tls.crt").write_bytes(pem)
    (directory / "ca.crt").write_bytes(pem)
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "ca.crt"


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_controller_process_serves_data_planes_and_writes_status(
    api: FakeApi, tmp_path: Path
) -> None:
    """main.run end to end against the fake API server: readiness gate, config Secret,
    owned objects by server-side apply, a data plane's hello/snapshot/ack, status."""
    ca = write_tls(tmp_path)
    api.objects["loadbalancers"] = [k.load_balancer()]
    api.objects["listeners"] = [k.listener()]
    api.objects["services"] = [k.service()]
    api.objects["endpointslices"] = [k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1")])]
    api.held["endpointslices"] = asyncio.Event()
    settings = Settings(
        config_tls_dir=str(tmp_path),
        config_host="127.0.0.1",
        config_port=0,
        http_port=0,
        holdoff_seconds=0.02,
        image="wslb:e2e",
    )
    ports: dict[str, int] = {}
    stop = asyncio.Event()
    task = asyncio.create_task(
        main.run(settings, stop, started=lambda c, h: ports.update(config=c, http=h))
    )
    try:
        await until(lambda: len(ports) == 2, timeout=10)
        assert await http_get(ports["http"], "/healthz") == (200, "ok\n")
        await until(lambda: "services" in api.listed)
        status, _ = await http_get(ports["http"], "/readyz")
        assert status == 503
        api.held["endpointslices"].set()
        for _ in range(500):
            if (await http_get(ports["http"], "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("never ready")

        await until(lambda: bool(api.written("POST", "/secrets")), timeout=10)
        [(_, secret)] = api.written("POST", "/api/v1/namespaces/default/secrets")
        assert secret["metadata"]["name"] == "lb-wslb-config"
        token = base64.b64decode(secret["data"]["token"]).decode()
        await until(lambda: len(api.written("PATCH", "force=true")) >= 3)
        applied = {path.split("?")[0] for path, _ in api.written("PATCH", "force=true")}
        assert applied == {
            "/apis/apps/v1/namespaces/default/deployments/lb-wslb",
            "/api/v1/namespaces/default/services/lb-wslb",
            "/api/v1/namespaces/default/services/lb-wslb-metrics",
        }

        context = ssl.create_default_context(cafile=str(ca))
        url = f"wss://127.0.0.1:{ports['config']}/v1/loadbalancers/default/lb"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                url,
                ssl=context,
                subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                additional_headers={"Authorization": "Bearer wrong"},
            ):
                pass
        assert refused.value.response.status_code == 403
        async with connect(
            url,
            ssl=context,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {token}"},
        ) as ws:
            await ws.send(encode(Hello(node="pod-a", load_balancer="default/lb")))
            message = decode(await asyncio.wait_for(ws.recv(), 10))
            assert isinstance(message, SnapshotMessage)
            endpoints = message.snapshot["listeners"][0]["backends"]["endpoints"]
            assert [e["address"] for e in endpoints] == ["10.0.0.1"]
            await ws.send(encode(Ack(version=message.version, nonce=message.nonce)))

            def programmed() -> bool:
                patches = api.written("PATCH", "/listeners/web/status")
                if not patches:
                    return False
                conditions = patches[-1][1]["status"]["conditions"]
                return [c["status"] for c in conditions] == ["True", "True", "True"]

            def last_lb_status() -> dict[str, Any]:
                patches = api.written("PATCH", "/loadbalancers/lb/status")
                status: dict[str, Any] = patches[-1][1]["status"]
                return status

            await until(programmed, timeout=10)
            await until(lambda: last_lb_status()["dataPlanes"]["acked"] == 1)
            lb_status = last_lb_status()
            assert lb_status["dataPlanes"] == {"desired": 2, "connected": 1, "acked": 1}
            assert lb_status["appliedVersion"] == message.version
        _, metrics = await http_get(ports["http"], "/metrics")
        assert 'wslb_controller_acks_total{load_balancer="default/lb"} 1.0' in metrics
        assert "wslb_controller_builds_total 1.0" in metrics
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_empty_cluster_is_ready_before_kopf_has_listed(api: FakeApi, tmp_path: Path) -> None:
    """With no LoadBalancer at all nothing can be pushed prematurely, so readiness does
    not wait for an object to signal the end of kopf's listing (builds still do)."""
    write_tls(tmp_path)
    api.held["services"] = asyncio.Event()  # kopf's listing never completes here
    settings = Settings(
        config_tls_dir=str(tmp_path), config_host="127.0.0.1", config_port=0, http_port=0
    )
    ports: dict[str, int] = {}
    stop = asyncio.Event()
    task = asyncio.create_task(
        main.run(settings, stop, started=lambda c, h: ports.update(config=c, http=h))
    )
    try:
        await until(lambda: len(ports) == 2, timeout=10)
        for _ in range(500):
            if (await http_get(ports["http"], "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("never ready")
        assert "services" not in api.listed
    finally:
        api.held["services"].set()
        stop.set()
        await asyncio.wait_for(task, 15)
