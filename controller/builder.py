"""The builder: store + LoadBalancer key + version -> snapshot and status, purely.

This module owns the mapping of docs/resources.md from watched objects onto one
`lbwire.snapshot.Snapshot` per LoadBalancer, and the Accepted / ResolvedRefs conditions
and backend counts of each Listener that names it. Same objects in, same snapshot out,
whatever order they arrived in (listeners by name, endpoints by address and port), so
the digest only moves when the content does. It must not import kopf, do I/O, or look
at data-plane sessions (Programmed is status.py's).

    Listener left out of the snapshot when:  spec invalid, port or nodePort taken by an
    older Listener, no certificate Secret of an HTTPS listener present and valid, sticky
    `insert` (on any group) without the LoadBalancer's sticky secret.
    Listener kept, with ResolvedRefs=False:  a backend Service (or its port) missing, in
    the default group or a rule; that group's endpoints are simply absent, so the data
    plane answers its requests with 503 and the other groups serve on. One of several
    certificate Secrets missing or invalid: the others are served.
    Listener kept, with Conflicted=True:  a rule with the same match as an earlier rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import ValidationError

from controller import rules as rule_checks
from controller import status as st
from controller.certificates import certificate_problem, server_names
from controller.models import (
    STICKY_SECRET_KEY,
    TLS_CERT_KEY,
    TLS_KEY_KEY,
    BackendRef,
    IpFamilyPolicy,
    Listener,
    ListenerSpec,
    ListenerTls,
    LoadBalancer,
    RuleSpec,
    Tier,
    key_of,
)
from controller.status import ACCEPTED, CONFLICTED, RESOLVED_REFS, UNKNOWN, Condition
from controller.store import Store, config_secret_name
from lbwire import snapshot as wire

TIER_LIMITS: dict[Tier, wire.LoadBalancerLimits] = {
    Tier.S1_SMALL: wire.LoadBalancerLimits(max_connections=5_000, new_connections_per_second=3_000),
    Tier.S2_SMALL: wire.LoadBalancerLimits(
        max_connections=50_000, new_connections_per_second=5_000
    ),
    Tier.S2_MEDIUM: wire.LoadBalancerLimits(
        max_connections=100_000, new_connections_per_second=10_000
    ),
    Tier.S3_SMALL: wire.LoadBalancerLimits(
        max_connections=200_000, new_connections_per_second=20_000
    ),
}
DEFAULT_DRAIN_SECONDS = 30


def _weight_ceiling() -> int:
    """The largest endpoint weight the snapshot accepts (its `le` bound)."""
    for item in wire.Endpoint.model_fields["weight"].metadata:
        bound = getattr(item, "le", None)
        if isinstance(bound, int):
            return bound
    return 100


MAX_ENDPOINT_WEIGHT = _weight_ceiling()


def share(limits: wire.LoadBalancerLimits, replicas: int) -> wire.LoadBalancerLimits:
    """One data plane's share of the tier: the tier is the LoadBalancer's total, and the
    Service spreads clients over `replicas` data planes (each splits it again across its
    workers). Rounded up, so the shares never add up to less than the tier."""
    replicas = max(1, replicas)
    return wire.LoadBalancerLimits(
        max_connections=math.ceil(limits.max_connections / replicas),
        new_connections_per_second=math.ceil(limits.new_connections_per_second / replicas),
    )


def spread_weights(
    groups: list[tuple[int, list[wire.Endpoint]]],
) -> list[wire.Endpoint]:
    """Endpoint weights such that each backend Service gets its `weight` share of new
    connections whatever its number of pods: an endpoint of a Service with weight W and n
    serving endpoints gets W / n (summed when it backs several Services), scaled so the
    heaviest gets MAX_ENDPOINT_WEIGHT and rounded, never below 1 for a nonzero share.

    `groups` is (Service weight, its endpoints) per backend entry. Endpoints that are not
    ready or draining keep their share out of the count, so the rest carry the Service's."""
    shares: dict[str, float] = {}
    merged: dict[str, wire.Endpoint] = {}
    for weight, endpoints in groups:
        serving = {e.key for e in endpoints if e.ready and not e.draining}
        count = len(serving) or len({e.key for e in endpoints}) or 1
        for endpoint in endpoints:
            before = merged.get(endpoint.key)
            if before is not None:
                endpoint = before.model_copy(
                    update={
                        "ready": before.ready or endpoint.ready,
                        "draining": before.draining and endpoint.draining,
                    }
                )
            merged[endpoint.key] = endpoint
            counted = endpoint.key in serving or not serving
            shares.setdefault(endpoint.key, 0.0)
            if counted:
                shares[endpoint.key] += weight / count
    heaviest = max(shares.values(), default=0.0)
    result = []
    for key, endpoint in merged.items():
        value = shares[key]
        if heaviest <= 0 or value <= 0:
            weight = 0
        else:
            weight = max(1, round(MAX_ENDPOINT_WEIGHT * value / heaviest))
        result.append(endpoint.model_copy(update={"weight": weight}))
    return sorted(result, key=lambda e: (e.address, e.port))


@dataclass(frozen=True)
class ListenerResult:
    """What the builder decided about one Listener naming this LoadBalancer."""

    key: str
    name: str
    generation: int
    accepted: Condition
    resolved_refs: Condition
    conflicted: Condition
    in_snapshot: bool = False
    why_not: str = ""  # why it is not in the snapshot (for Programmed=False Pending)
    ready_backends: int = 0  # distinct endpoints across the default group and the rules
    total_backends: int = 0
    rule_count: int = 0


@dataclass(frozen=True)
class ServicePortSpec:
    """One port of the owned data-plane Service: an accepted Listener."""

    name: str
    port: int
    node_port: int | None = None


@dataclass(frozen=True)
class Build:
    """One LoadBalancer's build. `snapshot` is None when the LoadBalancer is missing or
    invalid: then nothing is published and only Listener statuses are written."""

    load_balancer: str
    found: bool
    accepted: Condition | None = None
    snapshot: wire.Snapshot | None = None
    listeners: tuple[ListenerResult, ...] = ()
    ports: tuple[ServicePortSpec, ...] = ()
    max_drain_seconds: int = DEFAULT_DRAIN_SECONDS


def build(store: Store, load_balancer: str, version: str) -> Build:
    """Build the snapshot of `load_balancer` (`ns/name`) and the status of its Listeners."""
    namespace, _, name = load_balancer.partition("/")
    listeners = sorted(
        store.listeners_of(load_balancer),
        key=lambda item: (item.meta.creation_timestamp, item.meta.name),
    )
    lb = store.load_balancers.get(load_balancer)
    if lb is None or lb.spec is None:
        reason = st.REASON_LOAD_BALANCER_NOT_FOUND
        message = f"LoadBalancer {name} not found in namespace {namespace}"
        if lb is not None:
            reason, message = st.REASON_INVALID, f"LoadBalancer {name} is invalid: {lb.error}"
        results = tuple(
            _refused(item, reason, message) if item.spec is not None else _invalid(item)
            for item in listeners
        )
        accepted = None
        if lb is not None:
            accepted = Condition.of(
                ACCEPTED, False, st.REASON_INVALID, lb.error or "invalid", lb.meta.generation
            )
        return Build(load_balancer, found=lb is not None, accepted=accepted, listeners=results)

    results_list: list[ListenerResult] = []
    built: list[wire.Listener] = []
    ports: list[ServicePortSpec] = []
    taken_ports: dict[int, str] = {}
    taken_node_ports: dict[int, str] = {}
    sticky_secret = _sticky_secret(store, lb)
    address = listen_address(lb)
    for item in listeners:
        if item.spec is None:
            results_list.append(_invalid(item))
            continue
        spec = item.spec
        holder = taken_ports.get(spec.port)
        if holder is None and spec.node_port is not None:
            holder = taken_node_ports.get(spec.node_port)
        if holder is not None:
            message = f"port {spec.port} or nodePort of this Listener is taken by Listener {holder}"
            results_list.append(_refused(item, st.REASON_PORT_CONFLICT, message))
            continue
        result, listener = _listener(store, item, sticky_secret, address)
        if result.accepted.status == "True":
            taken_ports[spec.port] = item.meta.name
            if spec.node_port is not None:
                taken_node_ports[spec.node_port] = item.meta.name
            ports.append(ServicePortSpec(item.meta.name, spec.port, spec.node_port))
        if listener is not None:
            built.append(listener)
        results_list.append(result)

    assert lb.spec is not None
    snapshot = wire.Snapshot(
        version=version,
        load_balancer=wire.LoadBalancerInfo(
            name=lb.meta.name,
            namespace=lb.meta.namespace,
            limits=share(TIER_LIMITS[lb.spec.tier], lb.spec.replicas),
        ),
        listeners=sorted(built, key=lambda item: item.name),
    )
    drains = [
        item.spec.drain_timeout_seconds
        for item in listeners
        if item.spec is not None and item.meta.name in {port.name for port in ports}
    ]
    return Build(
        load_balancer,
        found=True,
        accepted=Condition.of(ACCEPTED, True, st.REASON_ACCEPTED, "", lb.meta.generation),
        snapshot=snapshot,
        listeners=tuple(sorted(results_list, key=lambda item: item.name)),
        ports=tuple(sorted(ports, key=lambda port: port.name)),
        max_drain_seconds=max(drains, default=DEFAULT_DRAIN_SECONDS),
    )


def listen_address(lb: LoadBalancer) -> str:
    """Where the data plane binds its listeners: `::` (both families on a dual-stack
    socket) when the Service asks for IPv6, else `0.0.0.0`. Only when asked: a pod in an
    IPv4-only cluster may have IPv6 disabled, and binding `::` would then fail."""
    assert lb.spec is not None
    service = lb.spec.service
    wants_v6 = "IPv6" in service.ip_families or (
        service.ip_family_policy is IpFamilyPolicy.REQUIRE_DUAL_STACK
    )
    return "::" if wants_v6 else "0.0.0.0"


def _refused(item: Listener, reason: str, message: str) -> ListenerResult:
    generation = item.meta.generation
    return ListenerResult(
        key=item.meta.key,
        name=item.meta.name,
        generation=generation,
        accepted=Condition.of(ACCEPTED, False, reason, message, generation),
        resolved_refs=Condition(RESOLVED_REFS, UNKNOWN, reason, "not accepted", generation),
        conflicted=Condition(CONFLICTED, UNKNOWN, reason, "not accepted", generation),
        why_not=f"not accepted: {message}",
        rule_count=len(item.spec.rules) if item.spec is not None else 0,
    )


def _invalid(item: Listener) -> ListenerResult:
    return _refused(item, st.REASON_INVALID, item.error or "invalid spec")


def _sticky_secret(store: Store, lb: LoadBalancer) -> str | None:
    secret = store.secrets.get(key_of(lb.meta.namespace, config_secret_name(lb.meta.name)))
    return secret.text(STICKY_SECRET_KEY) if secret is not None else None


def _listener(
    store: Store, item: Listener, sticky_secret: str | None, address: str = "0.0.0.0"
) -> tuple[ListenerResult, wire.Listener | None]:
    """Resolve one accepted-so-far Listener into its snapshot form."""
    spec = item.spec
    assert spec is not None
    namespace, generation = item.meta.namespace, item.meta.generation
    problems: list[tuple[str, str]] = []  # (reason, message)

    default, blocking = _group(store, namespace, spec, sticky_secret, item.ref, problems, "")
    rules: list[wire.Rule] = []
    for rule in spec.rules:
        backends, rule_blocks = _group(
            store, namespace, rule, sticky_secret, item.ref, problems, f"rule {rule.name}: "
        )
        blocking = blocking or rule_blocks
        rules.append(
            wire.Rule(
                name=rule.name,
                match=rule.match,
                backends=backends,
                idle_timeout_seconds=rule.idle_timeout_seconds,
                keepalive=rule.keepalive,
                drain_timeout_seconds=rule.drain_timeout_seconds,
                max_message_bytes=rule.max_message_bytes,
            )
        )

    tls: wire.Tls | None = None
    if spec.tls is not None:
        certificates = _certificates(store, namespace, spec.tls, problems)
        if certificates:
            tls = wire.Tls(certificates=certificates, min_version=spec.tls.min_version)
        else:
            blocking = True

    if problems:
        reason = problems[0][0]
        message = "; ".join(message for _, message in problems)
        resolved = Condition.of(RESOLVED_REFS, False, reason, message, generation)
    else:
        resolved = Condition.of(RESOLVED_REFS, True, st.REASON_RESOLVED_REFS, "", generation)
    conflicted = _conflicted(spec, generation)
    endpoints = [*default.endpoints, *(e for rule in rules for e in rule.backends.endpoints)]
    counts = {
        "ready_backends": len({e.key for e in endpoints if e.ready}),
        "total_backends": len({e.key for e in endpoints}),
        "rule_count": len(spec.rules),
    }
    accepted = Condition.of(ACCEPTED, True, st.REASON_ACCEPTED, "", generation)
    name = item.meta.name
    if blocking:
        why = f"unresolved references: {resolved.message}"
        result = ListenerResult(
            item.meta.key, name, generation, accepted, resolved, conflicted, False, why, **counts
        )
        return result, None
    try:
        listener = wire.Listener(
            name=name,
            address=address,
            protocol=spec.protocol,
            port=spec.port,
            tls=tls,
            backends=default,
            rules=rules,
            idle_timeout_seconds=spec.idle_timeout_seconds,
            keepalive=spec.keepalive,
            drain_timeout_seconds=spec.drain_timeout_seconds,
            limits=spec.limits,
            http=spec.http,
            source_ranges=spec.source_ranges,
            allowed_origins=sorted(spec.allowed_origins),
            forwarded_headers=spec.forwarded_headers,
            access_log=spec.access_log,
            generation=generation,
        )
    except ValidationError as exc:
        message = "; ".join(
            ".".join(str(p) for p in ("spec", *e["loc"])) + f": {e['msg']}" for e in exc.errors()
        )
        return _refused(item, st.REASON_INVALID, message), None
    result = ListenerResult(
        item.meta.key, name, generation, accepted, resolved, conflicted, True, "", **counts
    )
    return result, listener


def _group(
    store: Store,
    namespace: str,
    spec: ListenerSpec | RuleSpec,
    sticky_secret: str | None,
    load_balancer: str,
    problems: list[tuple[str, str]],
    label: str,
) -> tuple[wire.Backends, bool]:
    """One backend group (the listener's default or a rule's) with its endpoints resolved
    through EndpointSlices; adds what is missing to `problems` (each message prefixed with
    `label`) and says whether that keeps the listener out of the snapshot."""
    groups: list[tuple[int, list[wire.Endpoint]]] = []
    for ref in spec.backends:
        found, problem = _endpoints(store, namespace, ref)
        if problem is not None:
            problems.append((st.REASON_SERVICE_NOT_FOUND, label + problem))
        groups.append((ref.weight, found))
    sticky = spec.sticky_session
    blocking = False
    if sticky.mode is wire.StickyMode.INSERT and not sticky_secret:
        name = config_secret_name(load_balancer)
        problems.append(
            (
                st.REASON_SECRET_NOT_FOUND,
                f"{label}Secret {name} (key {STICKY_SECRET_KEY}) not found",
            )
        )
        blocking = True
    backends = wire.Backends(
        scheduler=spec.scheduler,
        hash=wire.HashPolicy(source=spec.hash.source, name=spec.hash.name or None),
        sticky=wire.StickySession(
            # when blocking, the listener is left out; NONE keeps the model valid meanwhile
            mode=wire.StickyMode.NONE if blocking else sticky.mode,
            cookie_name=sticky.cookie_name,
            max_age_seconds=sticky.max_age_seconds,
            secret=sticky_secret if sticky.mode is wire.StickyMode.INSERT else None,
        ),
        health_check=spec.health_check,
        endpoints=spread_weights(groups),
    )
    return backends, blocking


def _certificates(
    store: Store, namespace: str, tls: ListenerTls, problems: list[tuple[str, str]]
) -> list[wire.Certificate]:
    """The certificates of `tls` in spec order (the first is the default), each named by
    the DNS names of its subjectAltName. A Secret that is missing or invalid is left out
    and added to `problems`; so is a later certificate without DNS names, which SNI could
    never choose."""
    found: list[wire.Certificate] = []
    for index, secret_name in enumerate(tls.secret_names):
        secret = store.secrets.get(key_of(namespace, secret_name))
        if secret is None:
            problems.append((st.REASON_SECRET_NOT_FOUND, f"Secret {secret_name} not found"))
            continue
        cert, key = secret.text(TLS_CERT_KEY), secret.text(TLS_KEY_KEY)
        error = certificate_problem(cert or "", key or "")
        if error is not None or cert is None or key is None:
            problems.append((st.REASON_INVALID_CERTIFICATE, f"Secret {secret_name}: {error}"))
            continue
        names = list(server_names(cert))
        if index > 0 and not names:
            message = f"Secret {secret_name}: the certificate has no DNS name for SNI to choose"
            problems.append((st.REASON_INVALID_CERTIFICATE, message))
            continue
        found.append(
            wire.Certificate(certificate_pem=cert, private_key_pem=key, server_names=names)
        )
    return found


def _conflicted(spec: ListenerSpec, generation: int) -> Condition:
    found = rule_checks.shadowed(spec.rules)
    if found:
        message = rule_checks.describe(found)
        return Condition.of(CONFLICTED, True, st.REASON_RULE_SHADOWED, message, generation)
    return Condition.of(CONFLICTED, False, st.REASON_NO_CONFLICTS, "", generation)


def _endpoints(
    store: Store, namespace: str, ref: BackendRef
) -> tuple[list[wire.Endpoint], str | None]:
    """The endpoints of one backend entry, through the Service port's name."""
    service = store.services.get(key_of(namespace, ref.service_name))
    if service is None:
        return [], f"Service {ref.service_name} not found"
    service_port = service.port(ref.port)
    if service_port is None:
        return [], f"Service {ref.service_name} has no port {ref.port}"
    found = []
    for item in store.slices_of(service.meta.key):
        number = item.port(service_port.name)
        if number is None:
            continue
        for endpoint in item.endpoints:
            for address in endpoint.addresses:
                found.append(
                    wire.Endpoint(
                        address=address,
                        port=number,
                        weight=ref.weight,
                        ready=endpoint.ready,
                        draining=endpoint.terminating and not endpoint.ready,
                    )
                )
    return found, None
