"""Typed views of the Kubernetes objects the controller watches.

This module owns parsing: a raw object body (a plain mapping, as kopf or lightkube hand
it over) becomes a small frozen value. A LoadBalancer or Listener whose spec does not
parse still becomes a value, with `error` set, so that the builder can report it as an
`Accepted=False` condition; parsing never raises on a peer's bad object. It must not
import kopf, talk to the API server, or read files.

CR fields are camelCase; attributes are snake_case through pydantic aliases. Nested
Listener parts that have the same shape as the snapshot's (health check, keepalive,
limits, source ranges, forwarded headers, a rule's match, the http block) reuse the
`lbwire.snapshot` models, so the CRD and the snapshot cannot drift apart silently. The
parts that differ are Kubernetes references: backends name Services (resolved through
EndpointSlices by the builder) and certificates name Secrets.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from lbwire.snapshot import (
    DNS_LABEL,
    MIB,
    AccessLog,
    ForwardedHeaders,
    HashSource,
    HealthCheck,
    Http,
    Keepalive,
    Limits,
    Protocol,
    RuleMatch,
    Scheduler,
    SourceRanges,
    StickyMode,
)

GROUP = "wslb.io"
VERSION = "v1alpha1"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Keys of Secrets the builder reads; every other key is dropped on parse to keep
# memory small when every Secret of the cluster is watched.
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
TOKEN_KEY = "token"  # noqa: S105 - a key name
CA_KEY = "ca.crt"
STICKY_SECRET_KEY = "sticky-secret"  # noqa: S105 - a key name
SECRET_KEYS = frozenset({TLS_CERT_KEY, TLS_KEY_KEY, TOKEN_KEY, CA_KEY, STICKY_SECRET_KEY})


class Kind(StrEnum):
    """The five watched kinds; the reconciler builds nothing until all have listed."""

    LOAD_BALANCER = "LoadBalancer"
    LISTENER = "Listener"
    ENDPOINT_SLICE = "EndpointSlice"
    SERVICE = "Service"
    SECRET = "Secret"  # noqa: S105 - a kind


def key_of(namespace: str, name: str) -> str:
    """The index key of a namespaced object: `namespace/name`."""
    return f"{namespace}/{name}"


@dataclass(frozen=True)
class Meta:
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    creation_timestamp: str = ""  # RFC 3339 UTC, so it sorts as text
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return key_of(self.namespace, self.name)


def parse_meta(body: Mapping[str, Any]) -> Meta:
    metadata = body.get("metadata") or {}
    generation = metadata.get("generation")
    return Meta(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        generation=generation if isinstance(generation, int) else 0,
        creation_timestamp=str(metadata.get("creationTimestamp") or ""),
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
    )


# --------------------------------------------------------------------------- CR specs


class SpecModel(BaseModel):
    """CR spec parts: camelCase, unknown fields ignored (the API server prunes them)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Tier(StrEnum):
    S1_SMALL = "slb.s1.small"
    S2_SMALL = "slb.s2.small"
    S2_MEDIUM = "slb.s2.medium"
    S3_SMALL = "slb.s3.small"


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class TrafficPolicy(StrEnum):
    LOCAL = "Local"
    CLUSTER = "Cluster"


class IpFamilyPolicy(StrEnum):
    SINGLE_STACK = "SingleStack"
    PREFER_DUAL_STACK = "PreferDualStack"
    REQUIRE_DUAL_STACK = "RequireDualStack"


class ServiceSpec(SpecModel):
    type: ServiceType = ServiceType.LOAD_BALANCER
    annotations: dict[str, str] = {}
    external_traffic_policy: TrafficPolicy = TrafficPolicy.LOCAL
    load_balancer_class: str | None = None
    load_balancer_source_ranges: list[str] = []
    ip_family_policy: IpFamilyPolicy | None = None
    ip_families: list[Literal["IPv4", "IPv6"]] = []


MAX_WORKERS = 64


class DataPlaneSpec(SpecModel):
    """How the data-plane pods are shaped and scheduled. The Kubernetes-typed parts
    (resources, tolerations, affinity, spread) pass through as plain mappings: the API
    server validates them when the Deployment is applied."""

    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] = {}
    topology_spread_constraints: list[dict[str, Any]] | None = None
    pod_annotations: dict[str, str] = {}
    pod_labels: dict[str, str] = {}
    priority_class_name: str = ""


class LoadBalancerSpec(SpecModel):
    tier: Tier = Tier.S1_SMALL
    replicas: Annotated[int, Field(ge=1, le=50)] = 2
    service: ServiceSpec = ServiceSpec()
    data_plane: DataPlaneSpec = DataPlaneSpec()


DEFAULT_GROUP = "default"  # the name of spec.backends' group; no rule may take it


class LoadBalancerRef(SpecModel):
    name: Annotated[str, Field(min_length=1)]


class CertificateRef(SpecModel):
    secret_name: Annotated[str, Field(min_length=1)]


class ListenerTls(SpecModel):
    """One certificate (`secretName`) or several (`certificates`, the first the default);
    exactly one of the two forms."""

    secret_name: Annotated[str, Field(min_length=1)] | None = None
    certificates: Annotated[list[CertificateRef], Field(max_length=32)] = []
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _one_form(self) -> ListenerTls:
        if (self.secret_name is None) == (not self.certificates):
            raise ValueError("exactly one of tls.secretName and tls.certificates is required")
        names = self.secret_names
        if len(set(names)) != len(names):
            raise ValueError("tls.certificates names a Secret twice")
        return self

    @property
    def secret_names(self) -> list[str]:
        """The certificate Secrets in order; the first is the default certificate."""
        if self.secret_name is not None:
            return [self.secret_name]
        return [item.secret_name for item in self.certificates]


class BackendRef(SpecModel):
    service_name: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)]
    weight: Annotated[int, Field(ge=0, le=100)] = 100


class HashSpec(SpecModel):
    source: HashSource = HashSource.SOURCE_IP
    name: str = ""


class StickySpec(SpecModel):
    """The CR's sticky session; the HMAC secret comes from the LoadBalancer's Secret."""

    mode: StickyMode = StickyMode.NONE
    cookie_name: str = "WSLB_STICKY"
    max_age_seconds: Annotated[int, Field(ge=1, le=31_536_000)] = 3600


class RuleSpec(SpecModel):
    """A forwarding rule: its match and its own backend group. The group's scheduler,
    hash, sticky session and health check default like the listener's (they are not
    inherited); the WebSocket timers left unset are the listener's."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    match: RuleMatch = RuleMatch()
    backends: Annotated[list[BackendRef], Field(min_length=1, max_length=16)]
    scheduler: Scheduler = Scheduler.WLC
    hash: HashSpec = HashSpec()
    sticky_session: StickySpec = StickySpec()
    health_check: HealthCheck = HealthCheck()
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] | None = None
    keepalive: Keepalive | None = None
    drain_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] | None = None
    max_message_bytes: Annotated[int, Field(ge=125, le=1024 * MIB)] | None = None


class ListenerSpec(SpecModel):
    load_balancer_ref: LoadBalancerRef
    protocol: Protocol
    port: Annotated[int, Field(ge=1, le=65535)]
    node_port: Annotated[int, Field(ge=30000, le=32767)] | None = None
    tls: ListenerTls | None = None
    backends: Annotated[list[BackendRef], Field(min_length=1, max_length=16)]
    scheduler: Scheduler = Scheduler.WLC
    hash: HashSpec = HashSpec()
    sticky_session: StickySpec = StickySpec()
    health_check: HealthCheck = HealthCheck()
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    keepalive: Keepalive = Keepalive()
    drain_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    limits: Limits = Limits()
    source_ranges: SourceRanges = SourceRanges()
    allowed_origins: list[str] = []
    forwarded_headers: ForwardedHeaders = ForwardedHeaders()
    access_log: AccessLog = AccessLog()
    rules: Annotated[list[RuleSpec], Field(max_length=256)] = []
    http: Http = Http()

    @model_validator(mode="after")
    def _rule_names(self) -> ListenerSpec:
        names = {DEFAULT_GROUP}
        for rule in self.rules:
            if rule.name in names:
                raise ValueError(f"rule name {rule.name!r} is used twice (or is 'default')")
            names.add(rule.name)
        return self

    def service_names(self) -> set[str]:
        """Every Service the default group and the rules name."""
        refs = [*self.backends, *(ref for rule in self.rules for ref in rule.backends)]
        return {ref.service_name for ref in refs}

    def secret_names(self) -> list[str]:
        """The certificate Secrets, in order (empty for HTTP)."""
        return self.tls.secret_names if self.tls is not None else []


def describe(error: ValidationError) -> str:
    """A one-line message naming each bad field, e.g. `spec.port: Input should be ...`."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in ("spec", *problem["loc"]))
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class LoadBalancer:
    meta: Meta
    spec: LoadBalancerSpec | None
    error: str | None = None  # why the spec did not parse
    status: Mapping[str, Any] = field(default_factory=dict)  # as last seen, for merging


@dataclass(frozen=True)
class Listener:
    meta: Meta
    spec: ListenerSpec | None
    error: str | None = None
    ref: str = ""  # the name in spec.loadBalancerRef, kept even when the rest is invalid
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def load_balancer_key(self) -> str:
        return key_of(self.meta.namespace, self.ref) if self.ref else ""


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    meta: Meta
    type: str = "ClusterIP"
    cluster_ip: str = ""
    ports: tuple[ServicePort, ...] = ()
    ingress: tuple[str, ...] = ()  # status.loadBalancer.ingress ip or hostname

    def port(self, number: int) -> ServicePort | None:
        return next((item for item in self.ports if item.port == number), None)


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    terminating: bool


@dataclass(frozen=True)
class EndpointSlice:
    meta: Meta
    service_name: str
    ports: tuple[tuple[str, int], ...] = ()  # (name, port); name "" for an unnamed port
    endpoints: tuple[SliceEndpoint, ...] = ()

    @property
    def service_key(self) -> str:
        return key_of(self.meta.namespace, self.service_name)

    def port(self, name: str) -> int | None:
        return next((number for item, number in self.ports if item == name), None)


@dataclass(frozen=True)
class Secret:
    meta: Meta
    type: str = "Opaque"
    data: Mapping[str, bytes] = field(default_factory=dict)

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None


KubeObject = LoadBalancer | Listener | Service | EndpointSlice | Secret


def _spec(body: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = body.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    status = body.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def parse_load_balancer(body: Mapping[str, Any]) -> LoadBalancer:
    meta = parse_meta(body)
    try:
        spec = LoadBalancerSpec.model_validate(dict(_spec(body)))
    except ValidationError as exc:
        return LoadBalancer(meta, None, describe(exc), _status(body))
    return LoadBalancer(meta, spec, None, _status(body))


def parse_listener(body: Mapping[str, Any]) -> Listener:
    meta = parse_meta(body)
    raw = _spec(body)
    ref_body = raw.get("loadBalancerRef")
    ref = ref_body.get("name") if isinstance(ref_body, Mapping) else None
    ref = ref if isinstance(ref, str) else ""
    try:
        spec = ListenerSpec.model_validate(dict(raw))
    except ValidationError as exc:
        return Listener(meta, None, describe(exc), ref, _status(body))
    if spec.protocol is Protocol.HTTPS and spec.tls is None:
        return Listener(meta, None, "spec.tls: required when protocol is HTTPS", ref, _status(body))
    return Listener(meta, spec, None, ref, _status(body))


def parse_service(body: Mapping[str, Any]) -> Service:
    spec = _spec(body)
    ports = []
    for item in spec.get("ports") or []:
        if isinstance(item, Mapping) and isinstance(item.get("port"), int):
            node_port = item.get("nodePort")
            ports.append(
                ServicePort(
                    name=str(item.get("name") or ""),
                    port=item["port"],
                    node_port=node_port if isinstance(node_port, int) else None,
                )
            )
    ingress = []
    for item in ((_status(body).get("loadBalancer") or {}).get("ingress")) or []:
        if isinstance(item, Mapping) and (item.get("ip") or item.get("hostname")):
            ingress.append(str(item.get("ip") or item.get("hostname")))
    return Service(
        meta=parse_meta(body),
        type=str(spec.get("type") or "ClusterIP"),
        cluster_ip=str(spec.get("clusterIP") or ""),
        ports=tuple(ports),
        ingress=tuple(ingress),
    )


def parse_endpoint_slice(body: Mapping[str, Any]) -> EndpointSlice:
    meta = parse_meta(body)
    ports = []
    for item in body.get("ports") or []:
        if isinstance(item, Mapping) and isinstance(item.get("port"), int):
            ports.append((str(item.get("name") or ""), int(item["port"])))
    endpoints = []
    for item in body.get("endpoints") or []:
        if not isinstance(item, Mapping):
            continue
        conditions = item.get("conditions") or {}
        # Kubernetes: a nil `ready` means ready; a nil `terminating` means not terminating.
        ready = conditions.get("ready")
        endpoints.append(
            SliceEndpoint(
                addresses=tuple(str(a) for a in item.get("addresses") or [] if a),
                ready=ready is not False,
                terminating=conditions.get("terminating") is True,
            )
        )
    return EndpointSlice(
        meta=meta,
        service_name=meta.labels.get(SERVICE_NAME_LABEL, ""),
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def parse_secret(body: Mapping[str, Any]) -> Secret:
    data: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        if key in SECRET_KEYS and isinstance(value, str):
            try:
                data[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
    for key, value in (body.get("stringData") or {}).items():
        if key in SECRET_KEYS and isinstance(value, str):
            data[key] = value.encode()
    return Secret(meta=parse_meta(body), type=str(body.get("type") or "Opaque"), data=data)


PARSERS = {
    Kind.LOAD_BALANCER: parse_load_balancer,
    Kind.LISTENER: parse_listener,
    Kind.SERVICE: parse_service,
    Kind.ENDPOINT_SLICE: parse_endpoint_slice,
    Kind.SECRET: parse_secret,
}


def parse(kind: Kind, body: Mapping[str, Any]) -> KubeObject:
    """Parse any watched kind; never raises on a malformed body."""
    parser: Any = PARSERS[kind]
    result: KubeObject = parser(body)
    return result
