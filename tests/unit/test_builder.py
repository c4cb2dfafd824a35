"""The builder: objects in, the exact snapshot and Listener status out."""

from __future__ import annotations

import random
from typing import Any

import pytest

from controller import builder
from controller.builder import Build, ListenerResult, build
from controller.models import parse
from controller.status import FALSE, TRUE
from controller.store import Store
from lbwire.snapshot import AccessLog, Http, Snapshot, parse_snapshot
from tests.unit import kubeobjects as k

LB = "default/lb"


def result(out: Build, name: str) -> ListenerResult:
    return next(item for item in out.listeners if item.name == name)


def test_http_listener_becomes_the_exact_snapshot() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener("web", port=80),
        k.service("echo"),
        k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.2"), k.endpoint("10.0.0.1")]),
    )
    out = build(store, LB, "1700000000000")
    assert out.snapshot == parse_snapshot(
        {
            "version": "1700000000000",
            "loadBalancer": {
                "name": "lb",
                "namespace": "default",
                # slb.s1.small split across the default 2 replicas
                "limits": {"maxConnections": 2500, "newConnectionsPerSecond": 1500},
            },
            "listeners": [
                {
                    "name": "web",
                    "protocol": "HTTP",
                    "address": "0.0.0.0",
                    "port": 80,
                    "generation": 1,
                    "backends": {
                        "scheduler": "wlc",
                        "endpoints": [
                            {"address": "10.0.0.1", "port": 9000, "weight": 100},
                            {"address": "10.0.0.2", "port": 9000, "weight": 100},
                        ],
                    },
                }
            ],
        }
    )
    web = result(out, "web")
    assert (web.accepted.status, web.accepted.reason) == (TRUE, "Accepted")
    assert (web.resolved_refs.status, web.resolved_refs.reason) == (TRUE, "ResolvedRefs")
    assert (web.in_snapshot, web.ready_backends, web.total_backends) == (True, 2, 2)
    assert web.accepted.observed_generation == 1
    assert [port.name for port in out.ports] == ["web"]


def test_ready_serve_terminating_drain_and_unready_wait() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(),
        k.service(),
        k.endpoint_slice(
            "echo-a",
            endpoints=[
                k.endpoint("10.0.0.1", ready=True),
                k.endpoint("10.0.0.2", ready=False, terminating=True),
                k.endpoint("10.0.0.3", ready=False, terminating=False),
                k.endpoint("10.0.0.4", ready=None, terminating=None),  # nil ready means ready
            ],
        ),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    endpoints = out.snapshot.listeners[0].backends.endpoints
    assert [(e.address, e.ready, e.draining) for e in endpoints] == [
        ("10.0.0.1", True, False),
        ("10.0.0.2", False, True),
        ("10.0.0.3", False, False),
        ("10.0.0.4", True, False),
    ]
    web = result(out, "web")
    assert (web.ready_backends, web.total_backends) == (2, 4)


def test_port_is_matched_through_the_service_port_name() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(backends=[{"serviceName": "echo", "port": 8443}]),
        k.service("echo", ports=[("http", 8080), ("ws", 8443)]),
        k.endpoint_slice(
            "echo-a", endpoints=[k.endpoint("10.0.0.1")], ports=[("http", 9000), ("ws", 9443)]
        ),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    assert [e.port for e in out.snapshot.listeners[0].backends.endpoints] == [9443]


def test_weights_across_two_services() -> None:
    """Backend weights are per Service: blue's 80 is shared by its two pods, green's 20
    goes to its one pod, so blue still gets 80% of new connections."""
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            backends=[
                {"serviceName": "blue", "port": 8080, "weight": 80},
                {"serviceName": "green", "port": 8080, "weight": 20},
            ]
        ),
        k.service("blue"),
        k.service("green"),
        k.endpoint_slice("blue-1", "blue", [k.endpoint("10.0.1.1"), k.endpoint("10.0.1.2")]),
        k.endpoint_slice("green-1", "green", [k.endpoint("10.0.2.1")]),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    endpoints = out.snapshot.listeners[0].backends.endpoints
    assert [(e.address, e.weight) for e in endpoints] == [
        ("10.0.1.1", 100),
        ("10.0.1.2", 100),
        ("10.0.2.1", 50),
    ]


def canary_share(stable_pods: int, canary_pods: int, unready_canary: int = 0) -> float:
    """The canary's share of the endpoint weights of a 90/10 split."""
    canary = [k.endpoint(f"10.0.2.{i}") for i in range(canary_pods)]
    canary += [k.endpoint(f"10.0.3.{i}", ready=False) for i in range(unready_canary)]
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            backends=[
                {"serviceName": "stable", "port": 8080, "weight": 90},
                {"serviceName": "canary", "port": 8080, "weight": 10},
            ]
        ),
        k.service("stable"),
        k.service("canary"),
        k.endpoint_slice(
            "stable-1", "stable", [k.endpoint(f"10.0.1.{i}") for i in range(stable_pods)]
        ),
        k.endpoint_slice("canary-1", "canary", canary),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    endpoints = out.snapshot.listeners[0].backends.endpoints
    serving = [e for e in endpoints if e.ready and not e.draining]
    total = sum(e.weight for e in serving)
    return sum(e.weight for e in serving if e.address.startswith("10.0.2.")) / total


@pytest.mark.parametrize(
    ("stable_pods", "canary_pods"), [(1, 1), (9, 1), (1, 3), (2, 7), (4, 4), (10, 2)]
)
def test_a_canary_split_stays_ninety_ten_whatever_the_pod_counts(
    stable_pods: int, canary_pods: int
) -> None:
    # Rounding to the snapshot's integer weights (at most 100) costs under one point here.
    assert canary_share(stable_pods, canary_pods) == pytest.approx(0.10, abs=0.01)


def test_unready_pods_leave_their_service_share_to_the_ready_ones() -> None:
    assert canary_share(3, 1, unready_canary=3) == pytest.approx(0.10, abs=0.01)


def test_endpoint_weight_ceiling_is_read_from_the_snapshot_model() -> None:
    assert builder.MAX_ENDPOINT_WEIGHT == 100  # lbwire Endpoint.weight's upper bound


def test_missing_service_keeps_listener_without_its_endpoints() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            backends=[
                {"serviceName": "echo", "port": 8080},
                {"serviceName": "ghost", "port": 8080},
            ]
        ),
        k.service("echo"),
        k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1")]),
    )
    out = build(store, LB, "1")
    web = result(out, "web")
    assert web.resolved_refs.status == FALSE
    assert web.resolved_refs.reason == "ServiceNotFound"
    assert "Service ghost not found" in web.resolved_refs.message
    assert web.accepted.status == TRUE and web.in_snapshot
    assert out.snapshot is not None
    assert [e.address for e in out.snapshot.listeners[0].backends.endpoints] == ["10.0.0.1"]


def test_missing_service_port_is_named() -> None:
    store = k.store_of(
        k.load_balancer(), k.listener(backends=[{"serviceName": "echo", "port": 1234}]), k.service()
    )
    web = result(build(store, LB, "1"), "web")
    assert web.resolved_refs.reason == "ServiceNotFound"
    assert "Service echo has no port 1234" in web.resolved_refs.message


def test_https_certificate_comes_from_its_secret() -> None:
    cert, key = k.certificate()
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            "secure", port=443, protocol="HTTPS", tls={"secretName": "cert", "minVersion": "1.3"}
        ),
        k.service(),
        k.secret("cert", {"tls.crt": cert, "tls.key": key}, "kubernetes.io/tls"),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    tls = out.snapshot.listeners[0].tls
    assert tls is not None and tls.min_version == "1.3"
    assert [(c.certificate_pem, c.private_key_pem) for c in tls.certificates] == [(cert, key)]
    assert result(out, "secure").resolved_refs.status == TRUE


def test_missing_secret_leaves_https_listener_out() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener("secure", port=443, protocol="HTTPS", tls={"secretName": "nope"}),
        k.listener("web", port=80),
        k.service(),
    )
    out = build(store, LB, "1")
    secure = result(out, "secure")
    assert (secure.resolved_refs.status, secure.resolved_refs.reason) == (FALSE, "SecretNotFound")
    assert "Secret nope not found" in secure.resolved_refs.message
    assert not secure.in_snapshot and "nope" in secure.why_not
    assert out.snapshot is not None
    assert [item.name for item in out.snapshot.listeners] == ["web"]
    # Still accepted, so its Service port (and nodePort) stays while the Secret is missing.
    assert [port.name for port in out.ports] == ["secure", "web"]


def test_mismatched_key_is_an_invalid_certificate() -> None:
    cert, _ = k.certificate()
    _, other_key = k.certificate()
    store = k.store_of(
        k.load_balancer(),
        k.listener("secure", port=443, protocol="HTTPS", tls={"secretName": "cert"}),
        k.service(),
        k.secret("cert", {"tls.crt": cert, "tls.key": other_key}, "kubernetes.io/tls"),
    )
    secure = result(build(store, LB, "1"), "secure")
    assert secure.resolved_refs.reason == "InvalidCertificate"
    assert "does not match" in secure.resolved_refs.message
    assert not secure.in_snapshot


def test_port_conflict_refuses_the_later_listener() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener("older", port=80, created="2026-01-01T00:00:00Z"),
        k.listener("newer", port=80, created="2026-01-02T00:00:00Z"),
        k.listener("b-same-time", port=81, created="2026-01-03T00:00:00Z"),
        k.listener("a-same-time", port=81, created="2026-01-03T00:00:00Z"),
        k.service(),
    )
    out = build(store, LB, "1")
    newer = result(out, "newer")
    assert (newer.accepted.status, newer.accepted.reason) == (FALSE, "PortConflict")
    assert "older" in newer.accepted.message and not newer.in_snapshot
    assert result(out, "b-same-time").accepted.reason == "PortConflict"
    assert result(out, "a-same-time").accepted.status == TRUE
    assert out.snapshot is not None
    assert [item.name for item in out.snapshot.listeners] == ["a-same-time", "older"]


@pytest.mark.parametrize(
    ("tier", "connections", "rate"),
    [
        ("slb.s1.small", 5_000, 3_000),
        ("slb.s2.small", 50_000, 5_000),
        ("slb.s2.medium", 100_000, 10_000),
        ("slb.s3.small", 200_000, 20_000),
    ],
)
def test_tier_sets_load_balancer_limits(tier: str, connections: int, rate: int) -> None:
    out = build(k.store_of(k.load_balancer(tier=tier, replicas=1)), LB, "1")
    assert out.snapshot is not None
    limits = out.snapshot.load_balancer.limits
    assert (limits.max_connections, limits.new_connections_per_second) == (connections, rate)


@pytest.mark.parametrize(
    ("replicas", "connections", "rate"), [(1, 50_000, 5_000), (3, 16_667, 1_667), (50, 1_000, 100)]
)
def test_tier_is_the_total_split_across_replicas(
    replicas: int, connections: int, rate: int
) -> None:
    """Each data plane gets its share of slb.s2.small (50,000 / 5,000), rounded up."""
    out = build(k.store_of(k.load_balancer(tier="slb.s2.small", replicas=replicas)), LB, "1")
    assert out.snapshot is not None
    limits = out.snapshot.load_balancer.limits
    assert (limits.max_connections, limits.new_connections_per_second) == (connections, rate)
    assert limits.max_connections * replicas >= 50_000


def test_sticky_insert_takes_the_load_balancer_secret() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(stickySession={"mode": "insert", "cookieName": "S"}),
        k.service(),
        k.secret("lb-wslb-config", {"token": "t", "sticky-secret": "hmac-key"}),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    sticky = out.snapshot.listeners[0].backends.sticky
    assert (sticky.mode.value, sticky.cookie_name, sticky.secret) == ("insert", "S", "hmac-key")


def test_access_log_switches_reach_the_snapshot() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(accessLog={"enabled": False, "sampleRate": 0.25, "includeQuery": True}),
        k.listener("other", port=81),
        k.service(),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    switches = {item.name: item.access_log for item in out.snapshot.listeners}
    assert switches["web"] == AccessLog(enabled=False, sample_rate=0.25, include_query=True)
    assert switches["other"] == AccessLog(enabled=True, sample_rate=1.0, include_query=False)


def test_sticky_insert_without_the_secret_waits() -> None:
    store = k.store_of(k.load_balancer(), k.listener(stickySession={"mode": "insert"}), k.service())
    web = result(build(store, LB, "1"), "web")
    assert web.resolved_refs.reason == "SecretNotFound"
    assert "lb-wslb-config" in web.resolved_refs.message and not web.in_snapshot


def test_sticky_secret_is_not_sent_to_listeners_without_insert() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(),
        k.service(),
        k.secret("lb-wslb-config", {"sticky-secret": "hmac-key"}),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None and out.snapshot.listeners[0].backends.sticky.secret is None


def test_missing_load_balancer_refuses_its_listeners() -> None:
    out = build(k.store_of(k.listener()), LB, "1")
    assert not out.found and out.snapshot is None
    web = result(out, "web")
    assert (web.accepted.status, web.accepted.reason) == (FALSE, "LoadBalancerNotFound")


def test_invalid_listener_spec_names_the_field() -> None:
    store = k.store_of(k.load_balancer(), k.listener(idleTimeoutSeconds=0), k.service())
    out = build(store, LB, "1")
    web = result(out, "web")
    assert (web.accepted.status, web.accepted.reason) == (FALSE, "Invalid")
    assert "spec.idleTimeoutSeconds" in web.accepted.message
    assert out.snapshot is not None and out.snapshot.listeners == []


def test_https_without_tls_is_invalid() -> None:
    store = k.store_of(k.load_balancer(), k.listener(protocol="HTTPS"), k.service())
    web = result(build(store, LB, "1"), "web")
    assert web.accepted.reason == "Invalid" and "spec.tls" in web.accepted.message


def test_same_objects_in_any_order_give_the_same_digest() -> None:
    cert, key = k.certificate()
    bodies = [
        k.load_balancer(),
        k.listener(
            "web",
            port=80,
            backends=[
                {"serviceName": "echo", "port": 8080},
                {"serviceName": "other", "port": 8080, "weight": 5},
            ],
            allowedOrigins=["https://b.example", "https://a.example"],
        ),
        k.listener("secure", port=443, protocol="HTTPS", tls={"secretName": "cert"}),
        k.service("echo"),
        k.service("other"),
        k.secret("cert", {"tls.crt": cert, "tls.key": key}),
        k.endpoint_slice("echo-a", endpoints=[k.endpoint(f"10.0.0.{i}") for i in range(9, 0, -1)]),
        k.endpoint_slice("echo-b", endpoints=[k.endpoint("10.0.1.1"), k.endpoint("10.0.0.5")]),
        k.endpoint_slice("other-a", "other", [k.endpoint("10.0.2.1", ready=False)]),
    ]
    digests = set()
    for seed in range(5):
        shuffled = list(bodies)
        random.Random(seed).shuffle(shuffled)
        out = build(k.store_of(*shuffled), LB, str(seed))
        assert out.snapshot is not None
        digests.add(out.snapshot.digest())
    assert len(digests) == 1


def test_endpoint_in_two_slices_is_listed_once_ready_if_either_says_so() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(),
        k.service(),
        k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1", ready=False)]),
        k.endpoint_slice("echo-b", endpoints=[k.endpoint("10.0.0.1", ready=True)]),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    endpoints = out.snapshot.listeners[0].backends.endpoints
    assert [(e.address, e.ready) for e in endpoints] == [("10.0.0.1", True)]


def test_snapshot_round_trips_through_the_wire_schema() -> None:
    store = k.store_of(k.load_balancer(), k.listener(), k.service())
    out = build(store, LB, "42")
    assert out.snapshot is not None
    assert parse_snapshot(out.snapshot.to_wire()) == out.snapshot
    assert isinstance(out.snapshot, Snapshot)


def test_grace_follows_the_longest_drain() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener("a", port=80, drainTimeoutSeconds=120),
        k.listener("b", port=81, drainTimeoutSeconds=5),
        k.service(),
    )
    assert build(store, LB, "1").max_drain_seconds == 120


@pytest.mark.parametrize(
    ("service", "address"),
    [
        ({}, "0.0.0.0"),
        ({"ipFamilies": ["IPv4"]}, "0.0.0.0"),
        ({"ipFamilyPolicy": "PreferDualStack"}, "0.0.0.0"),  # may be an IPv4-only cluster
        ({"ipFamilyPolicy": "RequireDualStack"}, "::"),
        ({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}, "::"),
        ({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}, "::"),
    ],
)
def test_listeners_bind_both_families_when_the_service_asks_for_ipv6(
    service: dict[str, object], address: str
) -> None:
    store = k.store_of(
        k.load_balancer(service=service),
        k.listener(),
        k.service(),
        k.endpoint_slice("echo-a", endpoints=[k.endpoint("10.0.0.1")]),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    assert [item.address for item in out.snapshot.listeners] == [address]


# ---------------------------------------------------------------- rules, certificates, http


def rule(name: str, path: str, service: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "match": {"path": path, **extra.pop("match", {})},  # type: ignore[dict-item]
        "backends": [{"serviceName": service, "port": 8080}],
        **extra,
    }


def test_rules_become_snapshot_rules_with_their_own_endpoints_and_timers() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.secret("lb-wslb-config", {"sticky-secret": "s3cret"}),
        k.listener(
            idleTimeoutSeconds=60,
            rules=[
                rule("api", "/api", "api", match={"host": "app.example.com"}, scheduler="rr"),
                rule(
                    "ws",
                    "/ws",
                    "chat",
                    match={"pathType": "Exact"},
                    stickySession={"mode": "insert"},
                    idleTimeoutSeconds=3600,
                    keepalive={"intervalSeconds": 25},
                    maxMessageBytes=65536,
                ),
            ],
        ),
        k.service("echo"),
        k.service("api"),
        k.service("chat"),
        k.endpoint_slice("echo-a", "echo", [k.endpoint("10.0.0.1")]),
        k.endpoint_slice("api-a", "api", [k.endpoint("10.0.1.1"), k.endpoint("10.0.1.2")]),
        k.endpoint_slice("chat-a", "chat", [k.endpoint("10.0.2.1", ready=False)]),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    (listener,) = out.snapshot.listeners
    assert [e.address for e in listener.backends.endpoints] == ["10.0.0.1"]
    wire = out.snapshot.to_wire()["listeners"][0]["rules"]
    assert wire == [
        {
            "name": "api",
            "match": {"host": "app.example.com", "path": "/api", "pathType": "Prefix"},
            "backends": {
                "scheduler": "rr",
                "hash": {"source": "sourceIP", "name": None},
                "sticky": {"mode": "none", "cookieName": "WSLB_STICKY", "maxAgeSeconds": 3600,
                           "secret": None},
                "healthCheck": wire[0]["backends"]["healthCheck"],
                "endpoints": [
                    {"address": "10.0.1.1", "port": 9000, "weight": 100, "ready": True,
                     "draining": False},
                    {"address": "10.0.1.2", "port": 9000, "weight": 100, "ready": True,
                     "draining": False},
                ],
            },
            "idleTimeoutSeconds": None,
            "keepalive": None,
            "drainTimeoutSeconds": None,
            "maxMessageBytes": None,
        },
        {
            "name": "ws",
            "match": {"host": None, "path": "/ws", "pathType": "Exact"},
            "backends": {
                "scheduler": "wlc",
                "hash": {"source": "sourceIP", "name": None},
                "sticky": {"mode": "insert", "cookieName": "WSLB_STICKY", "maxAgeSeconds": 3600,
                           "secret": "s3cret"},
                "healthCheck": wire[1]["backends"]["healthCheck"],
                "endpoints": [
                    {"address": "10.0.2.1", "port": 9000, "weight": 100, "ready": False,
                     "draining": False},
                ],
            },
            "idleTimeoutSeconds": 3600.0,
            "keepalive": {"intervalSeconds": 25.0, "timeoutSeconds": 10.0},
            "drainTimeoutSeconds": None,
            "maxMessageBytes": 65536,
        },
    ]  # fmt: skip
    assert wire[0]["backends"]["healthCheck"]["type"] == "none"
    web = result(out, "web")
    assert (web.ready_backends, web.total_backends, web.rule_count) == (3, 4, 2)
    assert (web.resolved_refs.status, web.conflicted.status) == (TRUE, FALSE)
    assert web.conflicted.reason == "NoConflicts"


def test_a_rule_with_a_missing_service_serves_nothing_and_the_rest_serves_on() -> None:
    """The rule stays with no endpoints (its requests get 503 from the data plane); the
    listener and its other groups are programmed, and ResolvedRefs names the rule."""
    store = k.store_of(
        k.load_balancer(),
        k.listener(rules=[rule("api", "/api", "ghost"), rule("ws", "/ws", "echo")]),
        k.service("echo"),
        k.endpoint_slice("echo-a", "echo", [k.endpoint("10.0.0.1")]),
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    (listener,) = out.snapshot.listeners
    assert [(r.name, len(r.backends.endpoints)) for r in listener.rules] == [("api", 0), ("ws", 1)]
    assert len(listener.backends.endpoints) == 1
    web = result(out, "web")
    assert web.in_snapshot
    assert (web.resolved_refs.status, web.resolved_refs.reason) == (FALSE, "ServiceNotFound")
    assert web.resolved_refs.message == "rule api: Service ghost not found"


def test_rules_with_the_same_match_are_conflicted_and_the_later_one_is_named() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            rules=[
                rule("api", "/api", "echo", match={"host": "a.example.com"}),
                rule("api2", "/api/", "echo", match={"host": "a.example.com"}),  # same prefix
                rule("exact", "/api", "echo", match={"host": "a.example.com", "pathType": "Exact"}),
                rule("other", "/api", "echo", match={"host": "b.example.com"}),
            ]
        ),
        k.service("echo"),
    )
    web = result(build(store, LB, "1"), "web")
    assert (web.conflicted.status, web.conflicted.reason) == (TRUE, "RuleShadowed")
    assert web.conflicted.message == (
        "rule api2 has the same host, path and pathType as the earlier rule api and never matches"
    )
    assert web.in_snapshot  # a conflict is reported, not refused: the earlier rule serves


def test_a_rule_named_default_is_invalid() -> None:
    store = k.store_of(k.load_balancer(), k.listener(rules=[rule("default", "/x", "echo")]))
    web = result(build(store, LB, "1"), "web")
    assert (web.accepted.status, web.accepted.reason) == (FALSE, "Invalid")
    assert "default" in web.accepted.message


def test_sticky_insert_on_a_rule_without_the_secret_waits() -> None:
    store = k.store_of(
        k.load_balancer(),
        k.listener(rules=[rule("ws", "/ws", "echo", stickySession={"mode": "insert"})]),
        k.service(),
    )
    web = result(build(store, LB, "1"), "web")
    assert not web.in_snapshot
    assert (
        web.resolved_refs.message == "rule ws: Secret lb-wslb-config (key sticky-secret) not found"
    )


def tls_store(*secrets: dict[str, Any], names: list[str]) -> Store:
    return k.store_of(
        k.load_balancer(),
        k.listener(
            "secure",
            port=443,
            protocol="HTTPS",
            tls={"certificates": [{"secretName": name} for name in names]},
        ),
        k.service(),
        *secrets,
    )


def tls_secret(name: str, cert: str, key: str) -> dict[str, Any]:
    return k.secret(name, {"tls.crt": cert, "tls.key": key}, "kubernetes.io/tls")


def test_certificates_come_in_order_named_by_their_dns_sans() -> None:
    app = k.certificate("app.example.com", "www.example.com", "127.0.0.1")
    chat = k.certificate("*.Chat.example.com")
    store = tls_store(
        tls_secret("chat-tls", *chat), tls_secret("app-tls", *app), names=["app-tls", "chat-tls"]
    )
    out = build(store, LB, "1")
    assert out.snapshot is not None
    tls = out.snapshot.listeners[0].tls
    assert tls is not None
    assert [(c.certificate_pem, c.server_names) for c in tls.certificates] == [
        (app[0], ["app.example.com", "www.example.com"]),  # the IP SAN is no SNI name
        (chat[0], ["*.chat.example.com"]),
    ]
    assert result(out, "secure").resolved_refs.status == TRUE


def test_a_missing_second_certificate_leaves_the_first_serving() -> None:
    app = k.certificate("app.example.com")
    out = build(tls_store(tls_secret("app-tls", *app), names=["app-tls", "chat-tls"]), LB, "1")
    assert out.snapshot is not None
    tls = out.snapshot.listeners[0].tls
    assert tls is not None and [c.certificate_pem for c in tls.certificates] == [app[0]]
    secure = result(out, "secure")
    assert secure.in_snapshot
    assert (secure.resolved_refs.status, secure.resolved_refs.reason) == (FALSE, "SecretNotFound")
    assert secure.resolved_refs.message == "Secret chat-tls not found"


def test_no_certificate_at_all_leaves_the_listener_out() -> None:
    out = build(tls_store(names=["app-tls", "chat-tls"]), LB, "1")
    secure = result(out, "secure")
    assert not secure.in_snapshot
    assert secure.resolved_refs.message == "Secret app-tls not found; Secret chat-tls not found"


def test_a_later_certificate_without_dns_names_is_refused() -> None:
    app = k.certificate("app.example.com")
    bare = k.certificate("10.0.0.1")  # an IP SAN only: SNI can never choose it
    out = build(
        tls_store(
            tls_secret("app-tls", *app), tls_secret("ip-tls", *bare), names=["app-tls", "ip-tls"]
        ),
        LB,
        "1",
    )
    secure = result(out, "secure")
    assert secure.in_snapshot and secure.resolved_refs.reason == "InvalidCertificate"
    assert (
        "ip-tls" in secure.resolved_refs.message and "no DNS name" in secure.resolved_refs.message
    )


def test_tls_takes_exactly_one_form() -> None:
    both = {"secretName": "a", "certificates": [{"secretName": "b"}]}
    for tls in (both, {}, {"certificates": [{"secretName": "a"}, {"secretName": "a"}]}):
        store = k.store_of(
            k.load_balancer(), k.listener("secure", port=443, protocol="HTTPS", tls=tls)
        )
        secure = result(build(store, LB, "1"), "secure")
        assert (secure.accepted.status, secure.accepted.reason) == (FALSE, "Invalid"), tls


def test_http_block_reaches_the_snapshot() -> None:
    http = {
        "maxBodyBytes": 1024,
        "requestHeadTimeoutSeconds": 5,
        "requestBodyTimeoutSeconds": 20,
        "responseHeadTimeoutSeconds": 30,
        "keepAliveTimeoutSeconds": 0,
        "maxRequestsPerConnection": 10,
        "redirectToHttps": {"enabled": True, "port": 8443},
    }
    store = k.store_of(k.load_balancer(), k.listener(http=http), k.service())
    out = build(store, LB, "1")
    assert out.snapshot is not None
    assert out.snapshot.to_wire()["listeners"][0]["http"] == {
        "maxBodyBytes": 1024,
        "requestHeadTimeoutSeconds": 5.0,
        "requestBodyTimeoutSeconds": 20.0,
        "responseHeadTimeoutSeconds": 30.0,
        "keepAliveTimeoutSeconds": 0.0,
        "maxRequestsPerConnection": 10,
        "redirectToHttps": {"enabled": True, "port": 8443},
    }


def test_http_defaults_are_the_snapshot_defaults() -> None:
    store = k.store_of(k.load_balancer(), k.listener(), k.service())
    out = build(store, LB, "1")
    assert out.snapshot is not None
    assert out.snapshot.listeners[0].http == Http()
    assert out.snapshot.listeners[0].rules == []


def test_rule_services_and_certificate_secrets_trigger_a_rebuild() -> None:
    """The store's index: a change to any Service a rule names, or to any certificate Secret,
    touches the LoadBalancer (so rotation of every Secret is picked up)."""
    store = k.store_of(
        k.load_balancer(),
        k.listener(
            "secure",
            port=443,
            protocol="HTTPS",
            tls={"certificates": [{"secretName": "app-tls"}, {"secretName": "chat-tls"}]},
            rules=[rule("api", "/api", "api")],
        ),
    )
    for body in (
        k.service("api"),
        k.endpoint_slice("api-a", "api"),
        k.secret("app-tls", {}),
        k.secret("chat-tls", {}),
    ):
        assert store.put(parse(k.KINDS[body["kind"]], body)) == {LB}, body["metadata"]
    assert store.put(parse(k.KINDS["Secret"], k.secret("unrelated", {}))) == set()
