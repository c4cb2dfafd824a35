"""The snapshot: the whole desired state of one load balancer's data plane.

This module owns the schema that the controller pushes over the config channel and
that the standalone YAML file uses. It validates shape, ranges and cross-field rules,
and computes a canonical digest. It must not touch files, sockets or TLS libraries:
loading PEM from disk and building SSL contexts belong to the data plane.

Wire and file fields are camelCase; Python attributes are snake_case.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from lbwire.errors import ConfigError, FieldProblem

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
KIB = 1024
MIB = 1024 * KIB


class Model(BaseModel):
    """Base for every schema object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Protocol(StrEnum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


class Scheduler(StrEnum):
    WRR = "wrr"
    WLC = "wlc"
    RR = "rr"
    HASH = "hash"


class HashSource(StrEnum):
    SOURCE_IP = "sourceIP"
    HEADER = "header"
    QUERY = "query"


class StickyMode(StrEnum):
    NONE = "none"
    INSERT = "insert"
    SERVER = "server"


class HealthCheckType(StrEnum):
    NONE = "none"
    WEBSOCKET = "websocket"
    HTTP = "http"
    TCP = "tcp"


Port = Annotated[int, Field(ge=1, le=65535)]


class Endpoint(Model):
    """One backend address. `ready=False` gets no new connections; `draining=True`
    also drains its live ones (a terminating pod)."""

    address: str
    port: Port
    weight: Annotated[int, Field(ge=0, le=100)] = 100
    ready: bool = True
    draining: bool = False

    @field_validator("address")
    @classmethod
    def _ip_or_name(cls, value: str) -> str:
        if not value or len(value) > 253 or any(c.isspace() for c in value):
            raise ValueError("must be an IP address or host name")
        return value

    @property
    def key(self) -> str:
        """Stable identity of an endpoint across snapshots."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


class HashPolicy(Model):
    source: HashSource = HashSource.SOURCE_IP
    name: str | None = Field(default=None, description="header or query parameter name")

    @model_validator(mode="after")
    def _name_needed(self) -> HashPolicy:
        if self.source is not HashSource.SOURCE_IP and not self.name:
            raise ValueError(f"name is required when source is {self.source.value}")
        return self


class StickySession(Model):
    mode: StickyMode = StickyMode.NONE
    cookie_name: str = "WSLB_STICKY"
    max_age_seconds: Annotated[int, Field(ge=1, le=31_536_000)] = 3600
    secret: str | None = Field(
        default=None, description="HMAC key; every replica and worker must share it"
    )

    @model_validator(mode="after")
    def _secret_needed(self) -> StickySession:
        if self.mode is StickyMode.INSERT and not self.secret:
            raise ValueError("secret is required for mode insert")
        if not self.cookie_name.isascii() or any(c in self.cookie_name for c in ' =;,"\t'):
            raise ValueError("cookieName must be a cookie token")
        return self


class HealthCheck(Model):
    type: HealthCheckType = HealthCheckType.NONE
    path: str = "/"
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = [200]
    interval_seconds: Annotated[float, Field(gt=0, le=300)] = 5
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2
    healthy_threshold: Annotated[int, Field(ge=1, le=10)] = 2
    unhealthy_threshold: Annotated[int, Field(ge=1, le=10)] = 3

    @model_validator(mode="after")
    def _timeout_fits(self) -> HealthCheck:
        if self.timeout_seconds > self.interval_seconds:
            raise ValueError("timeoutSeconds must not exceed intervalSeconds")
        if not self.path.startswith("/"):
            raise ValueError("path must start with /")
        return self


class Backends(Model):
    """The backend group a listener routes to."""

    scheduler: Scheduler = Scheduler.WLC
    hash: HashPolicy = HashPolicy()
    sticky: StickySession = StickySession()
    health_check: HealthCheck = HealthCheck()
    endpoints: list[Endpoint] = []

    @model_validator(mode="after")
    def _unique_endpoints(self) -> Backends:
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.key in seen:
                raise ValueError(f"duplicate endpoint {endpoint.key}")
            seen.add(endpoint.key)
        return self


class Keepalive(Model):
    """Load-balancer pings toward both peers; off unless intervalSeconds > 0."""

    interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 0
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10

    @property
    def enabled(self) -> bool:
        return self.interval_seconds > 0


class Limits(Model):
    """Per-listener limits; each has a default sane for an internet-facing port."""

    max_connections: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    new_connections_per_second: Annotated[int, Field(ge=1, le=1_000_000)] = 5_000
    max_message_bytes: Annotated[int, Field(ge=125, le=1024 * MIB)] = 1 * MIB
    max_header_bytes: Annotated[int, Field(ge=1 * KIB, le=64 * KIB)] = 16 * KIB
    handshake_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5
    connect_retries: Annotated[int, Field(ge=0, le=10)] = 2


class SourceRanges(Model):
    """Source CIDR ACL. Deny wins; an empty allow list allows everyone."""

    allow: list[str] = []
    deny: list[str] = []

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR") from None
        return values


class ForwardedHeaders(Model):
    enabled: bool = True


class AccessLog(Model):
    """The listener's access-log switches: every connection by default, no query string
    (query strings often carry tokens); `sampleRate` thins very busy listeners."""

    enabled: bool = True
    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    include_query: bool = False


class Certificate(Model):
    """A PEM certificate chain and key; `serverNames` picks it by SNI (empty: the certificate's
    DNS SANs). The first certificate of a listener is the default."""

    certificate_pem: str
    private_key_pem: str
    server_names: list[str] = []

    @field_validator("certificate_pem")
    @classmethod
    def _looks_like_cert(cls, value: str) -> str:
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("must be a PEM certificate chain")
        return value

    @field_validator("private_key_pem")
    @classmethod
    def _looks_like_key(cls, value: str) -> str:
        if "PRIVATE KEY-----" not in value:
            raise ValueError("must be a PEM private key")
        return value


class Tls(Model):
    certificates: Annotated[list[Certificate], Field(min_length=1)]
    min_version: Literal["1.2", "1.3"] = "1.2"


class PathType(StrEnum):
    PREFIX = "Prefix"  # segment-aware: /api matches /api, /api/, /api/x, never /apix
    EXACT = "Exact"


# A host as a rule names it: exact (chat.example.com) or a leading wildcard (*.example.com).
_RULE_HOST = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class RuleMatch(Model):
    """What a request must carry to take a rule; every field given must match."""

    host: Annotated[str, Field(max_length=253, pattern=_RULE_HOST)] | None = None
    path: Annotated[str, Field(min_length=1, max_length=1024)] = "/"
    path_type: PathType = PathType.PREFIX

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
            raise ValueError("path must start with / and hold no space, ? or #")
        return value


class Rule(Model):
    """A forwarding rule: requests (and upgrades) that match go to its backend group,
    with its own WebSocket timers where given (None: the listener's)."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    match: RuleMatch = RuleMatch()
    backends: Backends = Backends()
    idle_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    keepalive: Keepalive | None = None
    drain_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] | None = None
    max_message_bytes: Annotated[int, Field(ge=125, le=1024 * MIB)] | None = None


class HttpsRedirect(Model):
    """Answer every request and upgrade on an HTTP listener with 308 to https://."""

    enabled: bool = False
    port: Port = 443  # the HTTPS port named in Location (omitted when 443)


class Http(Model):
    """Limits and switches for plain HTTP requests (docs/config.md: why each default)."""

    max_body_bytes: Annotated[int, Field(ge=0, le=1 << 50)] | None = None  # None: unlimited
    request_head_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10  # 408
    # the longest gap between two reads of a request body: 408, its backend dropped
    request_body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60
    response_head_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60  # 504
    keep_alive_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 60  # 0: no keep-alive
    max_requests_per_connection: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    redirect_to_https: HttpsRedirect = HttpsRedirect()


class Listener(Model):
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    protocol: Protocol = Protocol.HTTP
    address: str = "0.0.0.0"
    port: Port
    tls: Tls | None = None
    backends: Backends = Backends()  # the default group: requests no rule matches
    rules: Annotated[list[Rule], Field(max_length=256)] = []
    idle_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60
    keepalive: Keepalive = Keepalive()
    drain_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 30
    limits: Limits = Limits()
    http: Http = Http()
    source_ranges: SourceRanges = SourceRanges()
    allowed_origins: list[str] = []
    forwarded_headers: ForwardedHeaders = ForwardedHeaders()
    access_log: AccessLog = AccessLog()
    generation: Annotated[int, Field(ge=0)] = 0

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @model_validator(mode="after")
    def _tls_matches_protocol(self) -> Listener:
        if self.protocol is Protocol.HTTPS and self.tls is None:
            raise ValueError("tls is required when protocol is HTTPS")
        if self.protocol is Protocol.HTTP and self.tls is not None:
            raise ValueError("tls is only allowed when protocol is HTTPS")
        if self.protocol is Protocol.HTTPS and self.http.redirect_to_https.enabled:
            raise ValueError("http.redirectToHttps is only allowed when protocol is HTTP")
        names: set[str] = {"default"}
        for rule in self.rules:
            if rule.name in names:
                raise ValueError(f"rule name {rule.name!r} is used twice (or is 'default')")
            names.add(rule.name)
        return self

    @property
    def bind_key(self) -> tuple[str, int]:
        return (self.address, self.port)


class LoadBalancerLimits(Model):
    """Capacity of the whole instance (the spec tier), enforced before the upgrade."""

    max_connections: Annotated[int, Field(ge=1, le=10_000_000)] = 5_000
    new_connections_per_second: Annotated[int, Field(ge=1, le=1_000_000)] = 3_000


class LoadBalancerInfo(Model):
    name: str = "standalone"
    namespace: str = ""
    limits: LoadBalancerLimits = LoadBalancerLimits()


class Snapshot(Model):
    """Whole desired state. `version` is opaque and only compared for equality."""

    version: str = "0"
    load_balancer: LoadBalancerInfo = LoadBalancerInfo()
    listeners: list[Listener] = []

    @model_validator(mode="after")
    def _unique_listeners(self) -> Snapshot:
        names: set[str] = set()
        binds: dict[int, str] = {}
        for listener in self.listeners:
            if listener.name in names:
                raise ValueError(f"duplicate listener name {listener.name!r}")
            names.add(listener.name)
            if listener.port in binds:
                raise ValueError(
                    f"listeners {binds[listener.port]!r} and {listener.name!r} "
                    f"share port {listener.port}"
                )
            binds[listener.port] = listener.name
        return self

    def listener(self, name: str) -> Listener | None:
        return next((item for item in self.listeners if item.name == name), None)

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys."""
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Canonical sha256 of the content, `version` excluded: same content, same digest."""
        body = self.model_dump(mode="json", by_alias=True, exclude={"version"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def parse_snapshot(data: Any, source: str = "snapshot") -> Snapshot:
    """Validate a whole snapshot; raise ConfigError naming every bad field and the source."""
    try:
        return Snapshot.model_validate(data)
    except ValidationError as exc:
        problems = [
            FieldProblem(path=_path(error["loc"]), message=error["msg"]) for error in exc.errors()
        ]
        raise ConfigError(source, problems) from None


def _path(loc: tuple[int | str, ...]) -> str:
    """('listeners', 0, 'port') -> 'listeners[0].port'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"
