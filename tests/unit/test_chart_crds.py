"""The chart ships the CRDs of crds/ unchanged, documents every value, and renders the
controller with least RBAC and a locked-down pod.

crds/ is the single source; helm/wslb/crds/ holds byte-identical copies because Helm does not
package files from outside the chart (a symlink would be dropped). After editing a CRD:
`cp crds/*.yaml helm/wslb/crds/`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "crds"
CHART = REPO / "helm" / "wslb"
COPIES = CHART / "crds"


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    sources = {path.name: path.read_bytes() for path in SOURCE.glob("*.yaml")}
    assert sources, "crds/ holds no CRD"
    assert not COPIES.is_symlink(), "helm package drops symlinks that leave the chart"
    copies = {path.name: path.read_bytes() for path in COPIES.iterdir()}
    assert sorted(copies) == sorted(sources), "run: cp crds/*.yaml helm/wslb/crds/"
    for name, content in sources.items():
        assert copies[name] == content, f"helm/wslb/crds/{name} differs from crds/{name}"


def test_chart_crds_hold_nothing_but_crds() -> None:
    """Helm installs every manifest under the chart's crds/, subdirectories included: the
    examples must stay out of it."""
    for path in COPIES.rglob("*"):
        assert path.is_file(), f"{path}: no subdirectories (examples live in crds/examples/)"
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] == "CustomResourceDefinition", path


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"]) == ("v2", "wslb")
    assert (chart["version"], str(chart["appVersion"])) == ("0.1.0", "0.1.0")


# --- values ------------------------------------------------------------------------------------


def undocumented_values(text: str) -> list[str]:
    """Keys of values.yaml with neither a `# --` comment of their own nor a documented parent
    (a documented mapping, such as `resources`, covers its default contents)."""
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or any(d for _, _, d in stack)
            is_leaf = not line.rstrip().endswith(":")
            if is_leaf and not documented:
                missing.append(".".join([k for _, k, _ in stack] + [key]))
            stack.append((indent, key, documented))
        if line.strip():
            previous = line
    return missing


def test_every_value_is_documented() -> None:
    assert undocumented_values((CHART / "values.yaml").read_text()) == []


def test_undocumented_value_is_found() -> None:
    text = (
        "# -- a\nimage:\n  # -- b\n  tag: x\nother:\n  # -- c\n  nested:\n    leaf: 1\n  bare: 2\n"
    )
    assert undocumented_values(text) == ["other.bare"]


def test_values_match_their_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    assert set(schema["properties"]) - {"global"} == set(values)
    bad = {**values, "image": {**values["image"], "pullpolicy": "Always"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# --- rendering ---------------------------------------------------------------------------------


def find_helm() -> str | None:
    if os.environ.get("WSLB_HELM"):
        return os.environ["WSLB_HELM"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wslb" / "helm"
    cached = sorted(cache.glob("*/helm"))
    return str(cached[-1]) if cached else shutil.which("helm")


HELM = find_helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary (make e2e-assets)")


def render(*values: str) -> list[dict[str, Any]]:
    assert HELM is not None
    command = [HELM, "template", "wslb", str(CHART), "-n", "wslb-system", *values]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


@needs_helm
def test_rbac_is_least_privilege() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    read = {"get", "list", "watch"}
    owned = {"create", "get", "patch", "update", "delete"}
    assert granted == {
        ("wslb.io", "loadbalancers"): read,
        ("wslb.io", "listeners"): read,
        ("wslb.io", "loadbalancers/status"): {"patch"},
        ("wslb.io", "listeners/status"): {"patch"},
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
        ("", "services"): read | owned,
        ("", "secrets"): read | owned,
        ("apps", "deployments"): owned,
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
    }


@needs_helm
def test_rbac_is_namespaced_when_namespaces_are_listed() -> None:
    documents = render("--set", "watchNamespaces={team-a,team-b}")
    assert by_kind(documents, "ClusterRoleBinding") == []
    bindings = by_kind(documents, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    (deployment,) = by_kind(documents, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WSLB_WATCH_NAMESPACES"] == "team-a,team-b"


@needs_helm
def test_controller_pod_is_locked_down_and_wired_to_the_config_channel() -> None:
    documents = render("--set", "image.tag=dev")
    (deployment,) = by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "localhost/wslb:dev"
    assert container["command"] == ["wslb-controller"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["WSLB_CONFIG_URL"]["value"] == "wss://wslb-config.wslb-system.svc:9443"
    assert env["WSLB_IMAGE"]["value"] == container["image"]
    assert env["WSLB_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"config": 9443, "metrics": 8080}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    tls_dir = env["WSLB_CONFIG_TLS_DIR"]["value"]
    assert volumes[mounts[tls_dir]]["secret"]["secretName"] == "wslb-config-tls"

    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    assert services["wslb-config"]["spec"]["ports"][0]["port"] == 9443
    assert services["wslb-config"]["spec"]["type"] == "ClusterIP"
    assert services["wslb-metrics"]["spec"]["ports"][0]["port"] == 8080
    (secret,) = by_kind(documents, "Secret")
    assert secret["metadata"]["name"] == "wslb-config-tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}


@needs_helm
def test_config_certificate_names_the_config_service() -> None:
    x509 = pytest.importorskip("cryptography.x509")

    (secret,) = by_kind(render("-n", "edge"), "Secret")
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == [
        "wslb-config",
        "wslb-config.edge",
        "wslb-config.edge.svc",
        "wslb-config.edge.svc.cluster.local",
    ]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    certificate.verify_directly_issued_by(ca)
