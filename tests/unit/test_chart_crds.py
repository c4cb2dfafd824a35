"""The chart ships the CRDs of crds/ unchanged as templates (so `helm upgrade` upgrades them),
documents every value, and renders the controller with least RBAC and a locked-down pod.

crds/ is the single source; helm/wslb/files/crds/ holds byte-identical copies because Helm does
not package files from outside the chart (a symlink would be dropped), and templates/crds.yaml
renders them. After editing a CRD: `cp crds/*.yaml helm/wslb/files/crds/`.
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

from tests.e2e.kind_cluster import CACHE, VERSIONS

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "crds"
CHART = REPO / "helm" / "wslb"
COPIES = CHART / "files" / "crds"


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    sources = {path.name: path.read_bytes() for path in SOURCE.glob("*.yaml")}
    assert sources, "crds/ holds no CRD"
    assert not COPIES.is_symlink(), "helm package drops symlinks that leave the chart"
    copies = {path.name: path.read_bytes() for path in COPIES.iterdir()}
    assert sorted(copies) == sorted(sources), "run: cp crds/*.yaml helm/wslb/files/crds/"
    for name, content in sources.items():
        assert copies[name] == content, f"helm/wslb/files/crds/{name} differs from crds/{name}"


def test_chart_has_no_helm_crds_directory() -> None:
    """Helm installs a chart's crds/ once and never upgrades it; the same CRDs there and in
    templates would also clash on install."""
    assert not (CHART / "crds").exists()
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
    """$WSLB_HELM, else the pinned helm that hack/e2e-assets.sh builds into the cache (the
    same cache path and version the scripts use), else one on PATH."""
    if os.environ.get("WSLB_HELM"):
        return os.environ["WSLB_HELM"]
    pinned = CACHE / "helm" / VERSIONS["HELM_VERSION"] / "helm"
    return str(pinned) if pinned.is_file() else shutil.which("helm")


HELM = find_helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary (make e2e-assets)")


def render(*values: str) -> list[dict[str, Any]]:
    assert HELM is not None
    command = [HELM, "template", "wslb", str(CHART), "-n", "wslb-system", *values]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def grants(role: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """(group, resource, resourceName or "") -> verbs."""
    granted: dict[tuple[str, str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [""]:
                    granted.setdefault((group, resource, name), set()).update(rule["verbs"])
    return granted


@needs_helm
def test_rbac_is_least_privilege() -> None:
    """Never delete (the garbage collector follows owner references), never update in place
    (server-side apply is a patch); writes only on kinds the controller owns."""
    (role,) = by_kind(render(), "ClusterRole")
    read = {"get", "list", "watch"}
    owned = {"get", "create", "patch"}
    assert grants(role) == {
        ("wslb.io", "loadbalancers", ""): read,
        ("wslb.io", "listeners", ""): read,
        ("wslb.io", "loadbalancers/status", ""): {"patch"},
        ("wslb.io", "listeners/status", ""): {"patch"},
        ("wslb.io", "loadbalancers/finalizers", ""): {"update"},
        ("discovery.k8s.io", "endpointslices", ""): {"list", "watch"},
        ("", "services", ""): read | owned,
        ("", "secrets", ""): read | owned,
        ("apps", "deployments", ""): owned,
        ("policy", "poddisruptionbudgets", ""): owned,
        ("", "events", ""): {"create", "patch"},
        ("events.k8s.io", "events", ""): {"create", "patch"},
    }


@needs_helm
def test_leader_election_rights_are_namespaced_to_the_release() -> None:
    documents = render()
    (role,) = by_kind(documents, "Role")
    assert role["metadata"]["namespace"] == "wslb-system"
    assert grants(role) == {
        ("coordination.k8s.io", "leases", "wslb-controller"): {"get", "update"},
        ("", "pods", ""): {"get", "list", "patch"},
    }
    (binding,) = [b for b in by_kind(documents, "RoleBinding") if b["roleRef"]["kind"] == "Role"]
    assert binding["metadata"]["namespace"] == "wslb-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (deployment,) = by_kind(documents, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WSLB_LEASE_NAME"] == "wslb-controller"
    assert env["WSLB_LEADER_ELECTION"] == "true"
    assert env["WSLB_LEASE_DURATION_SECONDS"] == "15"
    without = render(
        "--set", "controller.replicas=1", "--set", "controller.leaderElection.enabled=false"
    )
    assert by_kind(without, "Role") == []
    assert by_kind(without, "Lease") == []
    (lease,) = by_kind(documents, "Lease")  # the chart creates it: no create right needed
    assert (lease["metadata"]["name"], lease["metadata"]["namespace"]) == (
        "wslb-controller",
        "wslb-system",
    )
    assert lease["spec"] == {}  # the holder is the controller's to write, never Helm's


@needs_helm
def test_rbac_is_namespaced_when_namespaces_are_listed() -> None:
    documents = render("--set", "watchNamespaces={team-a,team-b}")
    assert by_kind(documents, "ClusterRoleBinding") == []
    bindings = [
        b for b in by_kind(documents, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"
    ]
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
def test_config_service_routes_data_planes_to_the_leader_only() -> None:
    documents = render()
    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    (deployment,) = by_kind(documents, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = services["wslb-config"]["spec"]["selector"]
    assert selector["wslb.io/leader"] == "true"  # set on its own pod by the leader alone
    assert "wslb.io/leader" not in pod_labels  # so no replica starts out selected
    rest = {k: v for k, v in selector.items() if k != "wslb.io/leader"}
    assert rest.items() <= pod_labels.items()
    # Metrics come from every replica (leader or standby).
    assert "wslb.io/leader" not in services["wslb-metrics"]["spec"]["selector"]


@needs_helm
def test_two_controller_replicas_roll_and_spread_with_a_budget() -> None:
    documents = render()
    (deployment,) = by_kind(documents, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (budget,) = by_kind(documents, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    single = render(
        "--set", "controller.replicas=1", "--set", "controller.leaderElection.enabled=false"
    )
    (deployment,) = by_kind(single, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert by_kind(single, "PodDisruptionBudget") == []


@needs_helm
def test_two_replicas_without_an_election_are_refused() -> None:
    assert HELM is not None
    command = [
        HELM,
        "template",
        "wslb",
        str(CHART),
        "--set",
        "controller.leaderElection.enabled=false",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "controller.replicas > 1 needs controller.leaderElection.enabled" in result.stderr


@needs_helm
def test_image_pull_secrets_reach_the_controller_and_the_data_planes() -> None:
    documents = render(
        "--set", "imagePullSecrets[0].name=regcred", "--set", "imagePullSecrets[1].name=mirror"
    )
    (deployment,) = by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["WSLB_IMAGE_PULL_SECRETS"] == "regcred,mirror"
    (reader,) = [
        r for r in by_kind(documents, "Role") if r["metadata"]["name"].endswith("-pull-secrets")
    ]
    assert grants(reader) == {
        ("", "secrets", "regcred"): {"get"},
        ("", "secrets", "mirror"): {"get"},
    }
    assert reader["metadata"]["namespace"] == "wslb-system"
    (deployment,) = by_kind(render(), "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WSLB_IMAGE_PULL_SECRETS"] == ""


# --- CRDs as templates ---------------------------------------------------------------------------


def source_crds() -> dict[str, dict[str, Any]]:
    result = {}
    for path in SOURCE.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        result[crd["metadata"]["name"]] = crd
    return result


@needs_helm
def test_crds_render_as_templates_equal_to_the_source_and_kept_on_uninstall() -> None:
    rendered = {c["metadata"]["name"]: c for c in by_kind(render(), "CustomResourceDefinition")}
    sources = source_crds()
    assert sorted(rendered) == sorted(sources) == ["listeners.wslb.io", "loadbalancers.wslb.io"]
    for name, crd in rendered.items():
        source = sources[name]
        assert crd["spec"] == source["spec"], name  # the schema survives the template unchanged
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        labels = crd["metadata"]["labels"]
        assert source["metadata"]["labels"].items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == "wslb"


@needs_helm
def test_crds_can_be_left_to_helm_uninstall_or_to_the_user() -> None:
    not_kept = by_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert len(not_kept) == 2
    assert all("annotations" not in c["metadata"] for c in not_kept)
    assert by_kind(render("--set", "crds.enabled=false"), "CustomResourceDefinition") == []


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


def commented_values(text: str) -> list[str]:
    """Dotted paths of the values.yaml keys that carry their own `# --` comment."""
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, key))
            if previous.lstrip().startswith("#"):
                paths.append(".".join(k for _, k in stack))
        stripped = line.lstrip()
        if stripped.startswith("# --") or (stripped and not stripped.startswith("#")):
            previous = line  # a continued comment keeps its `# --` line as the previous one
    return paths


def test_every_value_is_in_the_docs_table() -> None:
    documented = (REPO / "docs" / "chart.md").read_text()
    paths = commented_values((CHART / "values.yaml").read_text())
    assert "controller.leaderElection.enabled" in paths and "crds.keep" in paths
    missing = [path for path in paths if f"| `{path}` |" not in documented]
    assert missing == []


@needs_helm
def test_image_digest_pins_the_controller_and_the_data_planes() -> None:
    """With `image.digest` every pod runs repository@digest (the tag is ignored); without it,
    the tag, or the chart's appVersion, as `make image` tags it."""
    digest = "sha256:" + "ab" * 32
    pinned = by_kind(
        render("--set", f"image.digest={digest}", "--set", "image.tag=ignored"), "Deployment"
    )[0]
    container = pinned["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["image"] == f"localhost/wslb@{digest}"
    assert env["WSLB_IMAGE"] == f"localhost/wslb@{digest}"
    default = by_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert default["image"] == "localhost/wslb:0.1.0"


@needs_helm
def test_a_malformed_image_digest_is_refused() -> None:
    assert HELM is not None
    result = subprocess.run(
        [HELM, "template", "wslb", str(CHART), "--set", "image.digest=latest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "/image/digest" in result.stderr


@needs_helm
def test_without_leader_election_the_config_service_selects_the_single_replica() -> None:
    """No elector runs, so no pod ever carries the leader label: selecting it would leave the
    config Service without endpoints and every data plane without config."""
    documents = render(
        "--set", "controller.leaderElection.enabled=false", "--set", "controller.replicas=1"
    )
    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    (deployment,) = by_kind(documents, "Deployment")
    selector = services["wslb-config"]["spec"]["selector"]
    assert "wslb.io/leader" not in selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
