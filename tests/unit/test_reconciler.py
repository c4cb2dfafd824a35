"""The reconciler's gate, debounce, owned objects and status writes, with in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.models import Kind, parse
from controller.owned import DataPlaneParams
from controller.reconciler import Reconciler
from controller.store import Store
from lbwire.messages import Ack
from lbwire.session import PushSession
from lbwire.snapshot import Snapshot
from tests.unit import kubeobjects as k

LB = "default/lb"
PARAMS = DataPlaneParams(image="wslb:test", config_url="wss://config:9443", ca_pem="CA")


class FakeServer:
    """The config server's reconciler-facing methods, with sessions driven by the test."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Snapshot]] = []
        self.forgotten: list[str] = []
        self.peers: dict[str, list[PushSession]] = {}

    def publish(self, load_balancer: str, snapshot: Snapshot) -> None:
        self.published.append((load_balancer, snapshot))
        for session in self.peers.get(load_balancer, []):
            session.offer(snapshot)

    def forget(self, load_balancer: str) -> None:
        self.forgotten.append(load_balancer)

    def sessions(self, load_balancer: str) -> list[PushSession]:
        return self.peers.get(load_balancer, [])


class FakeCluster:
    def __init__(self) -> None:
        self.secrets: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []
        self.statuses: list[tuple[Kind, str, str, dict[str, Any]]] = []
        self.fail_status = 0

    async def ensure_config_secret(self, manifest: dict[str, Any]) -> bool:
        self.secrets.append(manifest)
        return True

    async def refresh_ca(self, namespace: str, name: str, ca_pem: str) -> None:
        raise AssertionError("not expected")

    async def apply(self, manifest: dict[str, Any]) -> None:
        self.applied.append(manifest)

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        if self.fail_status:
            self.fail_status -= 1
            raise RuntimeError("apiserver says no")
        self.statuses.append((kind, namespace, name, status))

    def last_status(self, kind: Kind, name: str) -> dict[str, Any]:
        return [s for s in self.statuses if s[0] is kind and s[2] == name][-1][3]


def feed(store: Store, reconciler: Reconciler, *bodies: dict[str, Any]) -> None:
    """What an index handler does."""
    for body in bodies:
        reconciler.mark_dirty(store.put(parse(k.KINDS[body["kind"]], body)))


async def until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Store, Reconciler, FakeServer, FakeCluster]]:
    store, server, cluster = Store(), FakeServer(), FakeCluster()
    reconciler = Reconciler(
        store, cluster, PARAMS, server=server, holdoff=0.03, max_delay=0.3, retry=0.05
    )
    task = asyncio.create_task(reconciler.run())
    yield store, reconciler, server, cluster
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


BODIES = (
    k.load_balancer(),
    k.listener(),
    k.service(),
    k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1")]),
)


async def test_nothing_is_built_until_every_kind_has_listed(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    feed(store, reconciler, *BODIES)
    for kind in list(Kind)[:-1]:
        store.mark_listed(kind)
        reconciler.mark_dirty([LB])
        await asyncio.sleep(0.1)  # several holdoffs: a build would have happened by now
        assert server.published == [] and cluster.applied == [] and cluster.statuses == []
    assert reconciler.rounds == 0
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    key, snapshot = server.published[0]
    assert key == LB
    assert [e.address for e in snapshot.listeners[0].backends.endpoints] == ["10.0.0.1"]


async def test_mark_synced_builds_every_known_load_balancer(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, _ = parts
    for body in (k.load_balancer("a"), k.load_balancer("b")):
        store.put(parse(Kind.LOAD_BALANCER, body))  # no dirty marks at all
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 2)
    assert sorted(key for key, _ in server.published) == ["default/a", "default/b"]


async def test_a_burst_of_changes_becomes_one_build(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, _ = parts
    reconciler.holdoff, reconciler.max_delay = 0.25, 5.0  # wide margins for a busy CI
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    rounds = reconciler.rounds
    for i in range(2, 22):  # endpoints arriving one by one, faster than the holdoff
        feed(
            store, reconciler, k.endpoint_slice(f"echo-{i}", endpoints=[k.endpoint(f"10.0.1.{i}")])
        )
        await asyncio.sleep(0.002)
    await until(lambda: len(server.published) == 2)
    await asyncio.sleep(0.3)
    assert reconciler.rounds == rounds + 1
    assert len(server.published) == 2
    assert len(server.published[1][1].listeners[0].backends.endpoints) == 21


async def test_endless_changes_still_build_within_the_max_delay(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, _ = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    for i in itertools.count(2):  # a change every 10 ms, never quiet for the 30 ms holdoff
        feed(
            store, reconciler, k.endpoint_slice(f"echo-{i}", endpoints=[k.endpoint(f"10.0.1.{i}")])
        )
        await asyncio.sleep(0.01)
        if len(server.published) > 1:
            break
        assert i < 200, "no build despite max_delay"


async def test_versions_strictly_increase_even_when_the_clock_does_not() -> None:
    reconciler = Reconciler(Store(), FakeCluster(), PARAMS, clock=lambda: 1000.0)
    versions = [int(reconciler.next_version()) for _ in range(5)]
    assert versions == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004]


async def test_unchanged_content_is_not_published_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    applied = len(cluster.applied)
    feed(store, reconciler, k.service())  # same content again (a resync)
    rounds = reconciler.rounds
    await until(lambda: reconciler.rounds > rounds)
    assert len(server.published) == 1
    assert len(cluster.applied) == applied  # owned objects unchanged: no apply either


async def test_owned_objects_are_applied_and_the_secret_created_once(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(cluster.applied) == 3)
    assert [(m["kind"], m["metadata"]["name"]) for m in cluster.applied] == [
        ("Deployment", "lb-wslb"),
        ("Service", "lb-wslb"),
        ("Service", "lb-wslb-metrics"),
    ]
    assert len(cluster.secrets) == 1
    token = reconciler.token_for(LB)
    assert token is not None and len(token) >= 43
    feed(store, reconciler, k.listener(generation=2, idleTimeoutSeconds=30))
    await until(lambda: len(server.published) == 2)
    assert len(cluster.secrets) == 1  # never recreated, so the token stays
    # Once the watch shows the Secret, its token is the one served.
    feed(store, reconciler, k.secret("lb-wslb-config", {"token": "from-secret", "ca.crt": "CA"}))
    assert reconciler.token_for(LB) == "from-secret"
    assert reconciler.token_for("default/other") is None


async def test_listener_status_reports_programmed_from_sessions(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    session = PushSession("pod-a", LB, nonce_factory=lambda: "n1")
    server.peers[LB] = [session]
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: any(s[0] is Kind.LISTENER for s in cluster.statuses))
    status = cluster.last_status(Kind.LISTENER, "web")
    assert [c["type"] for c in status["conditions"]] == ["Accepted", "ResolvedRefs", "Programmed"]
    assert status["conditions"][2]["reason"] == "Pending"
    assert (status["readyBackends"], status["totalBackends"], status["observedGeneration"]) == (
        1,
        1,
        1,
    )
    assert session.in_flight is not None
    session.on_ack(Ack(version=session.in_flight[1].version, nonce="n1"))
    reconciler.sessions_changed(LB)  # what the config server's on_change does
    await until(
        lambda: cluster.last_status(Kind.LISTENER, "web")["conditions"][2]["status"] == "True"
    )
    await until(lambda: cluster.last_status(Kind.LOAD_BALANCER, "lb")["dataPlanes"]["acked"] == 1)
    lb_status = cluster.last_status(Kind.LOAD_BALANCER, "lb")
    assert lb_status["dataPlanes"] == {"desired": 2, "connected": 1, "acked": 1}
    assert lb_status["appliedVersion"] == session.applied_version
    assert [c["status"] for c in lb_status["conditions"]] == ["True", "True"]
    observed = reconciler.metrics.registry.get_sample_value(
        "wslb_controller_propagation_seconds_count", {"load_balancer": LB}
    )
    assert observed == 1


async def test_failed_status_patch_is_retried(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    cluster.fail_status = 2  # the first round's two patches (Listener, LoadBalancer) fail
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: {s[0] for s in cluster.statuses} == {Kind.LISTENER, Kind.LOAD_BALANCER})
    registry = reconciler.metrics.registry
    for kind in ("Listener", "LoadBalancer"):
        errors = registry.get_sample_value(
            "wslb_controller_status_patch_errors_total", {"kind": kind}
        )
        assert errors == 1


async def test_deleted_load_balancer_is_forgotten_and_listeners_refused(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    reconciler.mark_dirty(store.delete(Kind.LOAD_BALANCER, "default", "lb"))
    await until(lambda: server.forgotten == [LB])
    await until(
        lambda: (
            cluster.last_status(Kind.LISTENER, "web")["conditions"][0]["reason"]
            == "LoadBalancerNotFound"
        )
    )


async def test_unchanged_status_is_not_patched_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(cluster.statuses) == 2)
    rounds = reconciler.rounds
    reconciler.sessions_changed(LB)
    await until(lambda: reconciler.rounds > rounds)
    assert len(cluster.statuses) == 2


async def test_deleted_config_secret_is_created_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await until(lambda: len(cluster.secrets) == 1)
    feed(store, reconciler, k.secret("lb-wslb-config", {"token": "seen", "ca.crt": "CA"}))
    rounds = reconciler.rounds
    await until(lambda: reconciler.rounds > rounds)
    assert len(cluster.secrets) == 1 and reconciler.token_for(LB) == "seen"
    reconciler.mark_dirty(store.delete(Kind.SECRET, "default", "lb-wslb-config"))
    await until(lambda: len(cluster.secrets) == 2)
    assert reconciler.token_for(LB) not in (None, "seen")


async def test_load_balancer_without_listeners_gets_no_portless_service(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    feed(store, reconciler, k.load_balancer())
    reconciler.mark_synced()
    await until(lambda: len(server.published) == 1)
    await until(lambda: len(cluster.applied) == 2)
    assert [m["metadata"]["name"] for m in cluster.applied] == ["lb-wslb", "lb-wslb-metrics"]
    assert server.published[0][1].listeners == []
