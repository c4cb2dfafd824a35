"""The CRDs in crds/ are structural, follow docs/resources.md, agree with lbwire/snapshot.py, and
every example in crds/examples/ uses only fields their schemas know.

The API server is the real judge of CEL rules (the e2e tier applies these files on kind); here a
small structural-schema walker checks what can be checked without one.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from lbwire import snapshot

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = sorted((CRD_DIR / "examples").glob("*.yaml"))
INVALID = sorted((CRD_DIR / "examples" / "invalid").glob("*.yaml"))
GROUP = "wslb.io"
VERSION = "v1alpha1"
PROGRAMMED_PATH = '.status.conditions[?(@.type=="Programmed")].status'

Schema = dict[str, Any]


def load_crd(plural: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((CRD_DIR / f"{plural}.{GROUP}.yaml").read_text())
    return crd


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    result: dict[str, Any] = version
    return result


def root_schema(kind: str) -> Schema:
    schema: Schema = version_of(CRDS[kind])["schema"]["openAPIV3Schema"]
    return schema


CRDS = {"LoadBalancer": load_crd("loadbalancers"), "Listener": load_crd("listeners")}


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path: properties as `.name`, array items as `[]`, map values
    as `{}`."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def node(kind: str, path: str) -> Schema:
    """The schema node at a dotted path such as `spec.backends[].weight`."""
    current = root_schema(kind)
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        current = current["items"] if part == "[]" else current["properties"][part]
    return current


# --- the CRDs themselves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural", "short_name"),
    [("LoadBalancer", "loadbalancers", "wlb"), ("Listener", "listeners", "wsl")],
)
def test_names_scope_and_category(kind: str, plural: str, short_name: str) -> None:
    crd = CRDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == (GROUP, "Namespaced")
    assert spec["names"]["kind"] == kind
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short_name]
    assert spec["names"]["categories"] == ["wslb"]
    version = version_of(crd)
    assert version["served"] is True
    assert version["storage"] is True


def test_short_names_do_not_shadow_the_category() -> None:
    categories = {c for crd in CRDS.values() for c in crd["spec"]["names"]["categories"]}
    short_names = {s for crd in CRDS.values() for s in crd["spec"]["names"]["shortNames"]}
    assert not categories & short_names


# Core types passed through to the data-plane pods as written; the API server validates them
# when the controller applies the Deployment (a schema copy of core/v1 Affinity would be
# hundreds of lines to keep in step with Kubernetes).
PASS_THROUGH = {("LoadBalancer", "spec.dataPlane.affinity")}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    """Every node has a type, objects list their properties, nothing preserves unknown fields
    but the one pass-through of a core type (PASS_THROUGH): the API server prunes what the
    schema does not name (kopf cannot hide state in status)."""
    for path, schema in walk(root_schema(kind)):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            assert (kind, path) in PASS_THROUGH, path
            assert schema["type"] == "object", path
            continue
        if schema.get("x-kubernetes-int-or-string"):  # resource quantities
            assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert schema.get("type") in {
            "object",
            "array",
            "string",
            "integer",
            "number",
            "boolean",
        }, path
        if schema["type"] == "array":
            assert "items" in schema, path
        if schema["type"] == "object" and path not in {"metadata"}:
            assert "properties" in schema or "additionalProperties" in schema, path
        for required in schema.get("required", []):
            assert required in schema.get("properties", {}), f"{path}: {required}"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_status_subresource_and_programmed_column(kind: str) -> None:
    version = version_of(CRDS[kind])
    assert version["subresources"]["status"] == {}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Programmed"]["jsonPath"] == PROGRAMMED_PATH
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    for column in columns.values():
        # every column reads a field the schema has (or metadata)
        path = column["jsonPath"].lstrip(".").split("[")[0]
        if not path.startswith("metadata."):
            node(kind, path)


def test_printer_columns_follow_the_contract() -> None:
    def default_columns(kind: str) -> list[str]:
        columns = version_of(CRDS[kind])["additionalPrinterColumns"]
        return [c["name"] for c in columns if c.get("priority", 0) == 0]

    assert default_columns("LoadBalancer") == ["Tier", "Replicas", "Address", "Programmed", "Age"]
    assert default_columns("Listener") == [
        "LoadBalancer", "Protocol", "Port", "Rules", "Ready", "Programmed", "Age",
    ]  # fmt: skip


def test_listener_wide_columns_show_missing_references_and_conflicting_rules() -> None:
    columns = {c["name"]: c for c in version_of(CRDS["Listener"])["additionalPrinterColumns"]}
    assert columns["Rules"]["jsonPath"] == ".status.ruleCount"
    for name in ("ResolvedRefs", "Conflicted"):
        assert columns[name]["jsonPath"] == f'.status.conditions[?(@.type=="{name}")].status'
        assert columns[name]["priority"] == 1


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_conditions_are_metav1_conditions_keyed_by_type(kind: str) -> None:
    conditions = node(kind, "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type", "status", "observedGeneration", "lastTransitionTime", "reason", "message",
    }  # fmt: skip
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert node(kind, "status.observedGeneration")["type"] == "integer"


@pytest.mark.parametrize(
    ("kind", "path", "default"),
    [
        ("LoadBalancer", "spec.tier", "slb.s1.small"),
        ("LoadBalancer", "spec.replicas", 2),
        ("LoadBalancer", "spec.service.type", "LoadBalancer"),
        ("Listener", "spec.idleTimeoutSeconds", 60),
        ("Listener", "spec.drainTimeoutSeconds", 30),
        ("Listener", "spec.scheduler", "wlc"),
        ("Listener", "spec.backends[].weight", 100),
        ("Listener", "spec.hash.source", "sourceIP"),
        ("Listener", "spec.stickySession.mode", "none"),
        ("Listener", "spec.stickySession.cookieName", "WSLB_STICKY"),
        ("Listener", "spec.stickySession.maxAgeSeconds", 3600),
        ("Listener", "spec.healthCheck.type", "none"),
        ("Listener", "spec.healthCheck.path", "/"),
        ("Listener", "spec.healthCheck.expectedStatuses", [200]),
        ("Listener", "spec.healthCheck.intervalSeconds", 5),
        ("Listener", "spec.healthCheck.timeoutSeconds", 2),
        ("Listener", "spec.healthCheck.healthyThreshold", 2),
        ("Listener", "spec.healthCheck.unhealthyThreshold", 3),
        ("Listener", "spec.keepalive.intervalSeconds", 0),
        ("Listener", "spec.keepalive.timeoutSeconds", 10),
        ("Listener", "spec.limits.maxConnections", 10_000),
        ("Listener", "spec.limits.newConnectionsPerSecond", 5_000),
        ("Listener", "spec.limits.maxMessageBytes", 1_048_576),
        ("Listener", "spec.limits.maxHeaderBytes", 16_384),
        ("Listener", "spec.limits.handshakeTimeoutSeconds", 10),
        ("Listener", "spec.limits.connectTimeoutSeconds", 5),
        ("Listener", "spec.limits.connectRetries", 2),
        ("Listener", "spec.tls.minVersion", "1.2"),
        ("Listener", "spec.forwardedHeaders.enabled", True),
        ("Listener", "spec.rules", []),
        ("Listener", "spec.rules[].match.path", "/"),
        ("Listener", "spec.rules[].match.pathType", "Prefix"),
        ("Listener", "spec.rules[].scheduler", "wlc"),
        ("Listener", "spec.rules[].backends[].weight", 100),
        ("Listener", "spec.rules[].stickySession.mode", "none"),
        ("Listener", "spec.rules[].healthCheck.type", "none"),
        ("Listener", "spec.http.requestHeadTimeoutSeconds", 10),
        ("Listener", "spec.http.requestBodyTimeoutSeconds", 60),
        ("Listener", "spec.http.responseHeadTimeoutSeconds", 60),
        ("Listener", "spec.http.keepAliveTimeoutSeconds", 60),
        ("Listener", "spec.http.maxRequestsPerConnection", 1000),
        ("Listener", "spec.http.redirectToHttps.enabled", False),
        ("Listener", "spec.http.redirectToHttps.port", 443),
    ],
)
def test_defaults_of_the_contract(kind: str, path: str, default: object) -> None:
    assert node(kind, path)["default"] == default


# Objects whose absence means something: a rule without keepalive takes the listener's.
INHERITED = {"spec.rules[].keepalive"}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_defaulted_object_gets_its_nested_defaults(kind: str) -> None:
    """A nested default applies only when its parent object exists, so optional objects with
    defaulted fields default to {}: `kubectl get -o yaml` then shows every effective value."""
    for path, schema in walk(root_schema(kind)):
        if not path.startswith("spec.") or schema.get("type") != "object" or path == "spec.tls":
            continue
        if path in INHERITED:
            assert "default" not in schema, path
            continue
        if path.endswith("[]"):  # a list item exists whenever it is written
            continue
        if any("default" in child for child in schema.get("properties", {}).values()):
            parent, _, name = path.rpartition(".")
            parent_required = name in node(kind, parent).get("required", [])
            assert parent_required or schema.get("default") == {}, path


@pytest.mark.parametrize(
    ("kind", "path", "minimum", "maximum"),
    [
        ("LoadBalancer", "spec.replicas", 1, 50),
        ("Listener", "spec.port", 1, 65535),
        ("Listener", "spec.nodePort", 30000, 32767),
        ("Listener", "spec.idleTimeoutSeconds", 1, 3600),
        ("Listener", "spec.drainTimeoutSeconds", 0, 3600),
        ("Listener", "spec.backends[].weight", 0, 100),
    ],
)
def test_ranges_of_the_contract(kind: str, path: str, minimum: int, maximum: int) -> None:
    schema = node(kind, path)
    assert (schema["minimum"], schema["maximum"]) == (minimum, maximum)


def test_backends_are_one_to_sixteen_unique_service_ports() -> None:
    backends = node("Listener", "spec.backends")
    assert (backends["minItems"], backends["maxItems"]) == (1, 16)
    assert backends["x-kubernetes-list-type"] == "map"
    assert backends["x-kubernetes-list-map-keys"] == ["serviceName", "port"]
    assert set(backends["items"]["required"]) >= {"serviceName", "port"}


def rules(kind: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (path, rule)
        for path, schema in walk(root_schema(kind))
        for rule in schema.get("x-kubernetes-validations", [])
    ]


def test_cel_rules_cover_the_cross_field_checks() -> None:
    by_path: dict[str, list[str]] = {}
    for path, rule in rules("Listener"):
        by_path.setdefault(path, []).append(" ".join(rule["rule"].split()))
    assert any("'HTTPS'" in r and "has(self.tls)" in r for r in by_path["spec"])
    assert any("self.name" in r and "sourceIP" in r for r in by_path["spec.hash"])
    assert any("timeoutSeconds <= self.intervalSeconds" in r for r in by_path["spec.healthCheck"])
    assert by_path["spec.sourceRanges.allow[]"] == ["isCIDR(self)"]
    assert by_path["spec.sourceRanges.deny[]"] == ["isCIDR(self)"]
    assert any("redirectToHttps.enabled" in r and "'HTTP'" in r for r in by_path["spec"])
    assert by_path["spec.tls"] == ["has(self.secretName) != has(self.certificates)"]
    assert by_path["spec.rules[]"] == ["self.name != 'default'"]
    assert any("self.name" in r and "sourceIP" in r for r in by_path["spec.rules[].hash"])
    rules_list = node("Listener", "spec.rules")
    assert rules_list["x-kubernetes-list-type"] == "map"  # unique names, checked by admission
    assert rules_list["x-kubernetes-list-map-keys"] == ["name"]
    certificates = node("Listener", "spec.tls.certificates")
    assert certificates["x-kubernetes-list-map-keys"] == ["secretName"]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_cel_messages_name_their_field(kind: str) -> None:
    for path, rule in rules(kind):
        fields = re.findall(r"\b(?:spec|metadata)\.[A-Za-z.]+[A-Za-z]", rule["message"])
        assert fields, f"{path}: {rule['message']!r} names no field"
        for field in fields:
            node(kind, field)  # the named field exists
        if "fieldPath" in rule:
            node(kind, f"{path}{rule['fieldPath']}")


# --- agreement with lbwire/snapshot.py ----------------------------------------------------------

# (CRD path, snapshot model, {CRD property: model field} where the names differ, model fields
# that the controller fills from elsewhere or that have a different shape in the CRD)
PAIRS: list[tuple[str, type[BaseModel], dict[str, str], set[str]]] = [
    (
        "spec",
        snapshot.Listener,
        {},
        {"name", "address", "tls", "backends", "generation"},
    ),
    ("spec.rules[]", snapshot.Rule, {}, {"backends"}),
    ("spec.rules[]", snapshot.Backends, {"stickySession": "sticky"}, {"endpoints"}),
    ("spec.rules[].match", snapshot.RuleMatch, {}, set()),
    ("spec.rules[].backends[]", snapshot.Endpoint, {}, {"address", "ready", "draining"}),
    ("spec.rules[].hash", snapshot.HashPolicy, {}, set()),
    ("spec.rules[].stickySession", snapshot.StickySession, {}, {"secret"}),
    ("spec.rules[].healthCheck", snapshot.HealthCheck, {}, set()),
    ("spec.rules[].keepalive", snapshot.Keepalive, {}, set()),
    ("spec.http", snapshot.Http, {}, set()),
    ("spec.http.redirectToHttps", snapshot.HttpsRedirect, {}, set()),
    (
        "spec",
        snapshot.Backends,
        {"stickySession": "sticky"},
        {"endpoints"},
    ),
    ("spec.backends[]", snapshot.Endpoint, {}, {"address", "ready", "draining"}),
    ("spec.hash", snapshot.HashPolicy, {}, set()),
    ("spec.stickySession", snapshot.StickySession, {}, {"secret"}),
    ("spec.healthCheck", snapshot.HealthCheck, {}, set()),
    ("spec.keepalive", snapshot.Keepalive, {}, set()),
    ("spec.limits", snapshot.Limits, {}, set()),
    ("spec.sourceRanges", snapshot.SourceRanges, {}, set()),
    ("spec.forwardedHeaders", snapshot.ForwardedHeaders, {}, set()),
    ("spec.accessLog", snapshot.AccessLog, {}, set()),
    ("spec.tls", snapshot.Tls, {}, set()),
]


def pairs() -> Iterator[tuple[str, str, FieldInfo, Any]]:
    """(CRD path, model field name, its FieldInfo, its annotation) for every mapped field."""
    for base, model, renamed, skipped in PAIRS:
        properties = node("Listener", base)["properties"]
        field_to_property = {v: k for k, v in renamed.items()}
        for name, info in model.model_fields.items():
            if name in skipped:
                continue
            prop = field_to_property.get(name, info.alias or name)
            assert prop in properties, f"{model.__name__}.{name} has no CRD field {base}.{prop}"
            yield f"{base}.{prop}", name, info, info.annotation


def bounds(metadata: list[Any]) -> tuple[float | None, float | None]:
    """The smallest and largest integer the constraints allow."""
    low: float | None = None
    high: float | None = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Gt):
            low = math.floor(item.gt) + 1  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.Le):
            high = item.le  # type: ignore[assignment]
        elif isinstance(item, annotated_types.Lt):
            high = math.ceil(item.lt) - 1  # type: ignore[arg-type]
    return low, high


def item_metadata(annotation: Any) -> list[Any]:
    """Constraints on the items of `list[Annotated[int, Field(...)]]`."""
    (item,) = typing.get_args(annotation)
    metadata: list[Any] = []
    for extra in getattr(item, "__metadata__", ()):
        metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return metadata


def test_every_snapshot_listener_field_has_its_crd_field() -> None:
    mapped = list(pairs())
    assert len(mapped) > 30


def optional_bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """The bounds of an `Annotated[int, Field(...)] | None` field (a rule's timers)."""
    (inner, _) = typing.get_args(model.model_fields[name].annotation)
    metadata: list[Any] = []
    for extra in getattr(inner, "__metadata__", ()):
        metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return bounds(metadata)


@pytest.mark.parametrize(
    ("path", "model", "name"),
    [
        ("spec.rules[].idleTimeoutSeconds", snapshot.Rule, "idle_timeout_seconds"),
        ("spec.rules[].drainTimeoutSeconds", snapshot.Rule, "drain_timeout_seconds"),
        ("spec.rules[].maxMessageBytes", snapshot.Rule, "max_message_bytes"),
        ("spec.http.maxBodyBytes", snapshot.Http, "max_body_bytes"),
    ],
)
def test_optional_fields_have_the_snapshot_range_and_no_default(
    path: str, model: type[BaseModel], name: str
) -> None:
    """Unset means the listener's value (a rule's timers) or unlimited (maxBodyBytes), so the
    CRD must not fill in a default; its range is the snapshot's."""
    schema = node("Listener", path)
    assert "default" not in schema
    assert (schema["minimum"], schema["maximum"]) == optional_bounds(model, name)


RULE_GROUP = ["backends", "scheduler", "hash", "stickySession", "healthCheck"]


def without_prose(schema: Any) -> Any:
    """A schema without descriptions and CEL messages (they name their own path)."""
    if isinstance(schema, dict):
        return {
            key: without_prose(value)
            for key, value in schema.items()
            if key not in {"description", "message"}
        }
    if isinstance(schema, list):
        return [without_prose(item) for item in schema]
    return schema


@pytest.mark.parametrize("name", RULE_GROUP)
def test_a_rule_group_has_the_schema_of_the_default_group(name: str) -> None:
    """A rule's backend group accepts and defaults exactly what spec's does."""
    rule = node("Listener", f"spec.rules[].{name}")
    assert without_prose(rule) == without_prose(node("Listener", f"spec.{name}"))


def test_rule_host_pattern_is_the_snapshot_pattern() -> None:
    (inner, _) = typing.get_args(snapshot.RuleMatch.model_fields["host"].annotation)
    (field,) = [m for m in inner.__metadata__ if isinstance(m, FieldInfo)]
    patterns = [m.pattern for m in field.metadata if hasattr(m, "pattern")]
    assert node("Listener", "spec.rules[].match.host")["pattern"] in patterns


@pytest.mark.parametrize(
    ("path", "valid"),
    [("/", True), ("/api", True), ("/api/v1/", True), ("/socket.io", True),
     ("api", False), ("", False), ("/a b", False), ("/a?b", False), ("/a#b", False)],
)  # fmt: skip
def test_rule_path_pattern_agrees_with_the_snapshot(path: str, valid: bool) -> None:
    schema = node("Listener", "spec.rules[].match.path")
    admitted = check(path, schema, "path") == []
    try:
        snapshot.RuleMatch(path=path)
        parsed = True
    except ValueError:
        parsed = False
    assert (admitted, parsed) == (valid, valid)


@pytest.mark.parametrize(
    ("path", "field", "info", "annotation"), list(pairs()), ids=[p[0] for p in pairs()]
)
def test_crd_agrees_with_snapshot(path: str, field: str, info: FieldInfo, annotation: Any) -> None:
    """Ranges, defaults and enums: what the API server accepts, the data plane accepts, and
    an unset field means the same on both sides."""
    schema = node("Listener", path)
    low, high = bounds(info.metadata)
    if schema.get("type") == "number":
        # A fraction: an exclusive bound is the CRD's exclusiveMinimum, not the next integer.
        for item in info.metadata:
            if isinstance(item, annotated_types.Gt):
                assert schema.get("exclusiveMinimum") is True, path
                low = item.gt  # type: ignore[assignment]
    if schema["type"] == "array" and typing.get_origin(annotation) is list:
        low, high = bounds(item_metadata(annotation))
        schema = schema["items"]
    if low is not None:
        assert schema.get("minimum") == low, f"{path} minimum vs {field} {info.metadata}"
    if high is not None:
        assert schema.get("maximum") == high, f"{path} maximum vs {field} {info.metadata}"
    if schema.get("type") == "integer":
        assert "minimum" in schema, f"{path}: an integer without a range"
        assert "maximum" in schema, f"{path}: an integer without a range"

    choices: list[str] | None = None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        choices = [member.value for member in annotation]
    elif typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
    if choices is not None:
        assert sorted(schema["enum"]) == sorted(choices), path

    default = node("Listener", path).get("default")
    if info.default is PydanticUndefined or isinstance(info.default, BaseModel):
        return
    if info.default is None:
        assert default in (None, ""), path
    elif path == "spec.protocol":
        assert path.rsplit(".", 1)[-1] in node("Listener", "spec")["required"]
    else:
        expected = info.default.value if isinstance(info.default, enum.Enum) else info.default
        assert default == expected, f"{path} default {default!r} vs {field}={expected!r}"


# Tier name -> (maxConnections, newConnectionsPerSecond), from docs/resources.md.
TIERS = {
    "slb.s1.small": (5_000, 3_000),
    "slb.s2.small": (50_000, 5_000),
    "slb.s2.medium": (100_000, 10_000),
    "slb.s3.small": (200_000, 20_000),
}


def test_tiers_fit_the_snapshot_load_balancer_limits() -> None:
    assert node("LoadBalancer", "spec.tier")["enum"] == list(TIERS)
    limits = snapshot.LoadBalancerLimits.model_fields
    for connections, rate in TIERS.values():
        snapshot.LoadBalancerLimits(max_connections=connections, new_connections_per_second=rate)
    default = TIERS[node("LoadBalancer", "spec.tier")["default"]]
    assert default == (
        limits["max_connections"].default,
        limits["new_connections_per_second"].default,
    )


def test_listener_names_are_snapshot_names_and_service_port_names() -> None:
    schema = node("Listener", "metadata.name")
    pattern = re.compile(schema["pattern"])
    for good in ["ws", "wss", "chat-1", "1a", "a-b-c", "x" * 15]:
        assert pattern.fullmatch(good) and len(good) <= schema["maxLength"], good
        assert re.fullmatch(snapshot.DNS_LABEL, good)
    for bad in ["80", "a--b", "-ab", "ab-", "Ws", "a.b", ""]:
        assert not pattern.fullmatch(bad), bad
    assert schema["maxLength"] == 15


# --- examples -----------------------------------------------------------------------------------

TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict, "array": list, "string": str, "integer": int, "boolean": bool,
}  # fmt: skip


def check(value: Any, schema: Schema, path: str) -> list[str]:
    """Problems of `value` against a structural schema: unknown fields, types, enums, ranges,
    lengths, patterns, required fields and list-map keys. CEL rules are the API server's."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return [] if isinstance(value, dict) else [f"{path}: expected object"]
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{path}: expected integer or string"]
        if isinstance(value, str) and not re.search(schema["pattern"], value):
            return [f"{path}: {value!r} is not a quantity"]
        return []
    expected = TYPES[schema["type"]]
    if not isinstance(value, expected) or (schema["type"] == "integer" and value is True):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: {value} below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{path}: {value} above {schema['maximum']}")
    if isinstance(value, str | list | dict):
        size = len(value)
        for key, ok in [("minLength", size >= schema.get("minLength", 0)),
                        ("maxLength", size <= schema.get("maxLength", size)),
                        ("minItems", size >= schema.get("minItems", 0)),
                        ("maxItems", size <= schema.get("maxItems", size)),
                        ("maxProperties", size <= schema.get("maxProperties", size))]:  # fmt: skip
            if not ok:
                problems.append(f"{path}: {key} {schema[key]}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        keys = schema.get("x-kubernetes-list-map-keys")
        seen: set[Any] = set()
        for index, item in enumerate(value):
            problems += check(item, schema["items"], f"{path}[{index}]")
            key = tuple(item.get(k) for k in keys) if keys else item
            if schema.get("x-kubernetes-list-type") in {"map", "set"}:
                if key in seen:
                    problems.append(f"{path}[{index}]: duplicate {key}")
                seen.add(key)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{path}.{name}: required" if path else f"{name}: required")
        for name, item in value.items():
            child = f"{path}.{name}" if path else name
            if name in properties:
                problems += check(item, properties[name], child)
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += check(item, schema["additionalProperties"], child)
            else:
                problems.append(f"{child}: unknown field")
    return problems


def check_object(document: dict[str, Any]) -> list[str]:
    assert document["apiVersion"] == f"{GROUP}/{VERSION}"
    schema = root_schema(document["kind"])
    metadata = document.pop("metadata")
    problems = check(document, schema, "")
    problems += check(
        metadata.get("name", ""), node(document["kind"], "metadata.name"), "metadata.name"
    )
    return problems


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_walker_finds_unknown_fields_and_bad_values() -> None:
    """The walker itself can fail: a typo, a wrong type and an out-of-range value."""
    problems = check_object({
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Listener",
        "metadata": {"name": "ws"},
        "spec": {"loadBalancerRef": {"name": "demo"}, "protocol": "WS", "port": "80",
                 "idleTimeout": 5, "backends": [{"serviceName": "echo", "port": 8080}] * 2},
    })  # fmt: skip
    assert sorted(problems) == [
        "spec.backends[1]: duplicate ('echo', 8080)",
        "spec.idleTimeout: unknown field",
        "spec.port: expected integer, got str",
        "spec.protocol: 'WS' not in ['HTTP', 'HTTPS']",
    ]


def test_examples_cover_each_kind_and_protocol() -> None:
    docs = [doc for path in EXAMPLES for doc in documents(path)]
    assert {doc["kind"] for doc in docs} == {"LoadBalancer", "Listener"}
    listeners = [doc["spec"] for doc in docs if doc["kind"] == "Listener"]
    assert {spec["protocol"] for spec in listeners} == {"HTTP", "HTTPS"}
    assert any(len({b["serviceName"] for b in spec["backends"]}) == 2 for spec in listeners)
    assert all("tls" in spec for spec in listeners if spec["protocol"] == "HTTPS")
    assert any(len(spec.get("rules", [])) >= 2 for spec in listeners)
    assert any(len(spec.get("tls", {}).get("certificates", [])) == 2 for spec in listeners)
    assert any(spec.get("http", {}).get("redirectToHttps", {}).get("enabled") for spec in listeners)
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "LoadBalancer"}
    assert all(spec["loadBalancerRef"]["name"] in names for spec in listeners)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    for document in documents(path):
        assert check_object(document) == []


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_example_breaks_only_the_rule_it_names(path: Path) -> None:
    """Each invalid example says which rule rejects it and which field the API server's message
    names (`# expect: <field>`); it has no unknown field, so nothing else can reject it."""
    text = path.read_text()
    assert text.startswith("# Rejected by "), path
    (expect,) = re.findall(r"^# expect: (\S+)$", text, flags=re.MULTILINE)
    (document,) = documents(path)
    kind = document["kind"]
    node(kind, re.sub(r"\[\d+\]", "[]", expect))  # the field exists
    problems = check_object(document)
    assert not [p for p in problems if "unknown field" in p], problems
    if problems:  # a structural rule the walker evaluates too: it names the same field
        assert all(p.startswith(expect) for p in problems), problems
    else:  # a rule only the API server evaluates
        assert "CEL" in text or "list-map-keys" in text, path


def test_invalid_examples_cover_the_rules_of_the_brief() -> None:
    expected = {path.name: re.findall(r"^# expect: (\S+)$", path.read_text(), re.M)[0]
                for path in INVALID}  # fmt: skip
    assert set(expected.values()) >= {
        "spec.tls", "spec.port", "spec.idleTimeoutSeconds", "spec.hash.name",
        "spec.healthCheck.timeoutSeconds", "spec.nodePort", "spec.backends[1]",
        "spec.rules[0].name", "spec.rules[1]", "spec.rules[0].match.path",
        "spec.rules[0].match.host", "spec.http.redirectToHttps.enabled",
    }  # fmt: skip
    assert sum(value == "spec.tls" for value in expected.values()) >= 3


def test_load_balancer_scale_subresource_reads_replicas_and_selector() -> None:
    """`kubectl scale` and an HPA write spec.replicas and read the status the controller
    writes (controller/status_writer.py)."""
    assert version_of(CRDS["LoadBalancer"])["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert node("LoadBalancer", "status.replicas")["type"] == "integer"
    assert node("LoadBalancer", "status.selector")["type"] == "string"
    assert "scale" not in version_of(CRDS["Listener"])["subresources"]


def test_load_balancer_data_plane_and_service_knobs() -> None:
    plane = node("LoadBalancer", "spec.dataPlane")
    assert plane["default"] == {}
    assert set(plane["properties"]) == {
        "workers",
        "resources",
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "podAnnotations",
        "podLabels",
        "priorityClassName",
    }
    assert node("LoadBalancer", "spec.dataPlane.workers")["default"] == 1
    service = node("LoadBalancer", "spec.service")
    assert {
        "externalTrafficPolicy",
        "loadBalancerClass",
        "loadBalancerSourceRanges",
        "ipFamilyPolicy",
        "ipFamilies",
    } <= set(service["properties"])
    assert node("LoadBalancer", "spec.service.externalTrafficPolicy")["default"] == "Local"
    service_rules = [r["rule"] for r in service["x-kubernetes-validations"]]
    assert any("loadBalancerClass" in r and "'LoadBalancer'" in r for r in service_rules)
    ranges = node("LoadBalancer", "spec.service.loadBalancerSourceRanges[]")
    assert [r["rule"] for r in ranges["x-kubernetes-validations"]] == ["isCIDR(self)"]


def test_quantities_accept_integers_and_suffixed_strings() -> None:
    schema = node("LoadBalancer", "spec.dataPlane.resources.requests")["additionalProperties"]
    requests = {"type": "object", "additionalProperties": schema}
    assert check({"cpu": 2, "memory": "1Gi"}, requests, "") == []
    assert check("500m", schema, "cpu") == []
    assert check("1.5Gi", schema, "memory") == []
    assert check("lots", schema, "cpu") != []


# --- standalone examples ------------------------------------------------------------------------

STANDALONE_RULES = REPO / "examples" / "standalone-rules.yaml"


def test_standalone_rules_example_is_a_valid_snapshot() -> None:
    """examples/standalone-rules.yaml parses with the one schema, with its rules in order."""
    parsed = snapshot.parse_snapshot(yaml.safe_load(STANDALONE_RULES.read_text()))
    (listener,) = parsed.listeners
    assert [rule.name for rule in listener.rules] == ["ws", "api", "admin"]
    assert listener.rules[0].idle_timeout_seconds == 3600
    assert listener.http.max_body_bytes == 10 * 1024 * 1024
