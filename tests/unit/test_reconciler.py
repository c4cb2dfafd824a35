"""The reconciler's gate, debounce, owned objects and status writes, with in-memory fakes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.holdoff import Holdoff
from controller.models import Kind, parse
from controller.owned import DataPlaneParams
from controller.pull_secrets import PullSecrets
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
        self.refuse: dict[str, str] = {}  # kind -> the API server's message
        self.secrets_to_read: dict[tuple[str, str], dict[str, str]] = {}

    async def ensure_config_secret(self, manifest: dict[str, Any]) -> bool:
        self.secrets.append(manifest)
        return True

    async def refresh_ca(self, namespace: str, name: str, ca_pem: str) -> None:
        raise AssertionError("not expected")

    async def apply(self, manifest: dict[str, Any]) -> None:
        if manifest["kind"] in self.refuse:
            raise RuntimeError(self.refuse[manifest["kind"]])
        self.applied.append(manifest)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets_to_read.get((namespace, name))

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


class FakeTime:
    """A monotonic clock that only moves when the reconciler sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def settle(turns: int = 20) -> None:
    """Let every ready task run (no wall time passes; nothing here waits on a timer)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
def parts() -> tuple[Store, Reconciler, FakeServer, FakeCluster]:
    """A reconciler whose rounds the test runs itself (no loop, no timers)."""
    store, server, cluster = Store(), FakeServer(), FakeCluster()
    reconciler = Reconciler(store, cluster, PARAMS, server=server, retry=3600)
    return store, reconciler, server, cluster


@pytest.fixture
async def looping() -> AsyncIterator[tuple[Store, Reconciler, FakeServer, FakeTime]]:
    """A reconciler running its loop on a fake clock: holdoffs pass instantly."""
    store, server, cluster, fake = Store(), FakeServer(), FakeCluster(), FakeTime()
    reconciler = Reconciler(
        store,
        cluster,
        PARAMS,
        server=server,
        holdoff=0.25,
        max_delay=5.0,
        retry=3600,
        monotonic=fake.monotonic,
        sleep=fake.sleep,
    )
    task = asyncio.create_task(reconciler.run())
    yield store, reconciler, server, fake
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
    looping: tuple[Store, Reconciler, FakeServer, FakeTime],
) -> None:
    store, reconciler, server, fake = looping
    feed(store, reconciler, *BODIES)
    for kind in list(Kind)[:-1]:
        store.mark_listed(kind)
        reconciler.mark_dirty([LB])
        fake.now += 10  # far past any holdoff
        await settle()
        assert server.published == []
    assert reconciler.rounds == 0
    reconciler.mark_synced()
    await settle()
    assert len(server.published) == 1
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
    await reconciler.round()
    assert sorted(key for key, _ in server.published) == ["default/a", "default/b"]


async def test_a_burst_of_changes_becomes_one_build_after_the_holdoff(
    looping: tuple[Store, Reconciler, FakeServer, FakeTime],
) -> None:
    store, reconciler, server, fake = looping
    feed(store, reconciler, *BODIES)
    reconciler.mark_synced()
    await settle()
    assert len(server.published) == 1
    rounds, fake.sleeps = reconciler.rounds, []
    for i in range(2, 22):  # endpoints arriving one by one, 2 ms apart
        fake.now += 0.002
        feed(
            store, reconciler, k.endpoint_slice(f"echo-{i}", endpoints=[k.endpoint(f"10.0.1.{i}")])
        )
    await settle()
    assert reconciler.rounds == rounds + 1
    assert len(server.published) == 2
    assert len(server.published[1][1].listeners[0].backends.endpoints) == 21
    # It waited the holdoff after the last change, no longer.
    assert sum(fake.sleeps) == pytest.approx(0.25)


def test_holdoff_waits_for_quiet_but_never_past_the_max_delay() -> None:
    now = [0.0]
    holdoff = Holdoff(0.1, 1.0, clock=lambda: now[0])
    assert not holdoff.pending and holdoff.delay() == 0
    holdoff.mark()
    assert holdoff.delay() == pytest.approx(0.1)
    for _ in range(30):  # a change every 50 ms: never quiet for 100 ms
        now[0] += 0.05
        holdoff.mark()
    assert holdoff.delay() == 0  # 1.5 s after the first change: past the max delay
    holdoff.fired()
    assert not holdoff.pending
    now[0] += 0.05
    holdoff.mark()
    assert holdoff.delay() == pytest.approx(0.1)  # the next burst starts afresh


async def test_versions_strictly_increase_even_when_the_clock_does_not() -> None:
    reconciler = Reconciler(Store(), FakeCluster(), PARAMS, clock=lambda: 1000.0)
    versions = [int(reconciler.next_version()) for _ in range(5)]
    assert versions == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004]


async def synced_round(store: Store, reconciler: Reconciler, *bodies: dict[str, Any]) -> None:
    feed(store, reconciler, *bodies)
    reconciler.mark_synced()
    await reconciler.round()


async def test_unchanged_content_is_not_published_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    await synced_round(store, reconciler, *BODIES)
    assert len(server.published) == 1
    applied = len(cluster.applied)
    feed(store, reconciler, k.service())  # same content again (a resync)
    await reconciler.round()
    assert len(server.published) == 1
    assert len(cluster.applied) == applied  # owned objects unchanged: no apply either


async def test_owned_objects_are_applied_and_the_secret_created_once(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    await synced_round(store, reconciler, *BODIES)
    assert [(m["kind"], m["metadata"]["name"]) for m in cluster.applied] == [
        ("Deployment", "lb-wslb"),
        ("Service", "lb-wslb-metrics"),
        ("PodDisruptionBudget", "lb-wslb"),
        ("Service", "lb-wslb"),
    ]
    assert len(cluster.secrets) == 1
    token = reconciler.token_for(LB)
    assert token is not None and len(token) >= 43
    feed(store, reconciler, k.listener(generation=2, idleTimeoutSeconds=30))
    await reconciler.round()
    assert len(server.published) == 2
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
    await synced_round(store, reconciler, k.load_balancer(replicas=1), *BODIES[1:])
    status = cluster.last_status(Kind.LISTENER, "web")
    assert [c["type"] for c in status["conditions"]] == [
        "Accepted", "ResolvedRefs", "Conflicted", "Programmed",
    ]  # fmt: skip
    assert status["conditions"][3]["reason"] == "Pending"
    assert (status["conditions"][2]["status"], status["conditions"][2]["reason"]) == (
        "False",
        "NoConflicts",
    )
    assert (status["readyBackends"], status["totalBackends"], status["observedGeneration"]) == (
        1,
        1,
        1,
    )
    assert status["ruleCount"] == 0
    assert session.in_flight is not None
    session.on_ack(Ack(version=session.in_flight[1].version, nonce="n1"))
    reconciler.sessions_changed(LB)  # what the config server's on_change does
    await reconciler.round()
    assert cluster.last_status(Kind.LISTENER, "web")["conditions"][3]["status"] == "True"
    lb_status = cluster.last_status(Kind.LOAD_BALANCER, "lb")
    assert lb_status["dataPlanes"] == {"desired": 1, "connected": 1, "acked": 1}
    assert lb_status["appliedVersion"] == session.applied_version
    assert [c["status"] for c in lb_status["conditions"]] == ["True", "True"]
    observed = reconciler.metrics.registry.get_sample_value(
        "wslb_controller_propagation_seconds_count",
        {"namespace": "default", "load_balancer": "lb"},
    )
    assert observed == 1


def programmed_series(reconciler: Reconciler) -> dict[tuple[str, ...], float]:
    """wslb_controller_listener_programmed as {(namespace, lb, listener, reason): value}."""
    (family,) = [
        f
        for f in reconciler.metrics.registry.collect()
        if f.name == "wslb_controller_listener_programmed"
    ]
    keys = ("namespace", "load_balancer", "listener", "reason")
    return {tuple(s.labels[key] for key in keys): s.value for s in family.samples}


async def test_listener_programmed_gauge_follows_the_condition_with_one_series_per_listener(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    """The alert WslbListenerNotProgrammed reads `== 0`: a reason that changed must not
    leave its old series behind, and a deleted Listener takes its series with it."""
    store, reconciler, server, _ = parts
    session = PushSession("pod-a", LB, nonce_factory=lambda: "n1")
    server.peers[LB] = [session]
    await synced_round(store, reconciler, k.load_balancer(replicas=1), *BODIES[1:])
    assert programmed_series(reconciler) == {("default", "lb", "web", "Pending"): 0}
    assert session.in_flight is not None
    session.on_ack(Ack(version=session.in_flight[1].version, nonce="n1"))
    reconciler.sessions_changed(LB)
    await reconciler.round()
    assert programmed_series(reconciler) == {("default", "lb", "web", "Programmed"): 1}
    reconciler.mark_dirty(store.delete(Kind.LISTENER, "default", "web"))
    await reconciler.round()
    assert programmed_series(reconciler) == {}


async def test_programmed_waits_for_desired_data_planes_that_never_connected(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    """Two replicas wanted, one connected and acked: not Programmed, and it says why."""
    store, reconciler, server, cluster = parts
    session = PushSession("pod-a", LB, nonce_factory=lambda: "n1")
    server.peers[LB] = [session]
    await synced_round(store, reconciler, *BODIES)  # replicas: 2 (the default)
    assert session.in_flight is not None
    session.on_ack(Ack(version=session.in_flight[1].version, nonce="n1"))
    reconciler.sessions_changed(LB)
    await reconciler.round()
    for kind, name in ((Kind.LISTENER, "web"), (Kind.LOAD_BALANCER, "lb")):
        programmed = cluster.last_status(kind, name)["conditions"][-1]
        assert (programmed["status"], programmed["reason"]) == ("False", "Pending")
        assert programmed["message"] == "1 of 2 desired data planes not connected"


async def test_load_balancer_status_carries_scale_and_capacity_share(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    body = k.load_balancer(tier="slb.s2.small", replicas=3, dataPlane={"workers": 2})
    await synced_round(store, reconciler, body, *BODIES[1:])
    status = cluster.last_status(Kind.LOAD_BALANCER, "lb")
    assert status["replicas"] == 3
    assert status["selector"] == "app.kubernetes.io/name=wslb-dataplane,wslb.io/load-balancer=lb"
    assert status["capacity"] == {
        "maxConnections": 50_000,
        "newConnectionsPerSecond": 5_000,
        "perDataPlane": {"maxConnections": 16_667, "newConnectionsPerSecond": 1_667},
        "workersPerDataPlane": 2,
    }


async def test_failed_status_patch_is_retried(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    reconciler.retry = 0  # the retry is due at the next turn of the loop
    cluster.fail_status = 2  # the first round's two patches (Listener, LoadBalancer) fail
    await synced_round(store, reconciler, *BODIES)
    assert cluster.statuses == []
    await settle()  # the retry marks the LoadBalancer dirty again
    await reconciler.round()
    assert {s[0] for s in cluster.statuses} == {Kind.LISTENER, Kind.LOAD_BALANCER}
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
    await synced_round(store, reconciler, *BODIES)
    assert len(server.published) == 1
    reconciler.mark_dirty(store.delete(Kind.LOAD_BALANCER, "default", "lb"))
    await reconciler.round()
    assert server.forgotten == [LB]
    reason = cluster.last_status(Kind.LISTENER, "web")["conditions"][0]["reason"]
    assert reason == "LoadBalancerNotFound"


async def test_unchanged_status_is_not_patched_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    await synced_round(store, reconciler, *BODIES)
    assert len(cluster.statuses) == 2
    reconciler.sessions_changed(LB)
    await reconciler.round()
    assert len(cluster.statuses) == 2


async def test_deleted_config_secret_is_created_again(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, _, cluster = parts
    await synced_round(store, reconciler, *BODIES)
    assert len(cluster.secrets) == 1
    feed(store, reconciler, k.secret("lb-wslb-config", {"token": "seen", "ca.crt": "CA"}))
    await reconciler.round()
    assert len(cluster.secrets) == 1 and reconciler.token_for(LB) == "seen"
    reconciler.mark_dirty(store.delete(Kind.SECRET, "default", "lb-wslb-config"))
    await reconciler.round()
    assert len(cluster.secrets) == 2
    assert reconciler.token_for(LB) not in (None, "seen")


async def test_load_balancer_without_listeners_gets_no_portless_service(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    store, reconciler, server, cluster = parts
    await synced_round(store, reconciler, k.load_balancer())
    assert len(server.published) == 1
    assert [(m["kind"], m["metadata"]["name"]) for m in cluster.applied] == [
        ("Deployment", "lb-wslb"),
        ("Service", "lb-wslb-metrics"),
        ("PodDisruptionBudget", "lb-wslb"),
    ]
    assert server.published[0][1].listeners == []


async def test_a_refused_owned_object_reaches_the_load_balancer_status(
    parts: tuple[Store, Reconciler, FakeServer, FakeCluster],
) -> None:
    """An affinity the CRD passes through unchecked, refused by the API server: the
    LoadBalancer says so, and stops saying so once the Deployment applies."""
    store, reconciler, _, cluster = parts
    message = 'Deployment.apps "lb-wslb" is invalid: spec.template.spec.affinity: bad'
    cluster.refuse["Deployment"] = message + "\nsecond line"
    await synced_round(store, reconciler, *BODIES)
    programmed = cluster.last_status(Kind.LOAD_BALANCER, "lb")["conditions"][1]
    assert (programmed["status"], programmed["reason"]) == ("False", "ApplyFailed")
    assert programmed["message"] == f"Deployment lb-wslb: {message}"
    assert {m["kind"] for m in cluster.applied} == {"Service", "PodDisruptionBudget"}
    cluster.refuse.clear()
    reconciler.mark_dirty([LB])
    await reconciler.round()
    programmed = cluster.last_status(Kind.LOAD_BALANCER, "lb")["conditions"][1]
    assert programmed["reason"] != "ApplyFailed"
    assert "Deployment" in {m["kind"] for m in cluster.applied}


def docker_config(registry: str, user: str) -> dict[str, str]:
    config = {"auths": {registry: {"username": user, "password": "pw"}}}
    return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}


def pulled_registries(cluster: FakeCluster) -> dict[str, Any]:
    (copy,) = [m for m in cluster.applied if m["metadata"]["name"] == "lb-wslb-pull"][-1:]
    result: dict[str, Any] = json.loads(base64.b64decode(copy["data"][".dockerconfigjson"]))
    return result["auths"]


async def test_chart_pull_secrets_are_copied_into_the_load_balancer_namespace() -> None:
    store, server, cluster, fake = Store(), FakeServer(), FakeCluster(), FakeTime()
    cluster.secrets_to_read[("wslb-system", "regcred")] = docker_config("r.example", "a")
    cluster.secrets_to_read[("wslb-system", "mirror")] = docker_config("m.example", "b")
    pull = PullSecrets(("regcred", "mirror", "absent"), "wslb-system", clock=fake.monotonic)
    reconciler = Reconciler(
        store, cluster, PARAMS, server=server, monotonic=fake.monotonic, sleep=fake.sleep,
        pull_secrets=pull,
    )  # fmt: skip
    task = asyncio.create_task(reconciler.run())
    try:
        feed(store, reconciler, *BODIES)
        reconciler.mark_synced()
        await settle()
        assert sorted(pulled_registries(cluster)) == ["m.example", "r.example"]
        # The source changes: within the refresh period every copy follows.
        cluster.secrets_to_read[("wslb-system", "mirror")] = docker_config("n.example", "c")
        fake.now += pull.refresh_seconds
        await settle(60)
        assert sorted(pulled_registries(cluster)) == ["n.example", "r.example"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
