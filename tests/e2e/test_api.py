"""The API server takes, serves and deletes our objects: a ConfigMap and the project's CRDs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.kind_cluster import REPO, Cluster
from tests.e2e.manifests import dump

pytestmark = pytest.mark.e2e

CRDS = sorted((REPO / "crds").glob("*.yaml"))


def test_configmap_apply_get_delete(cluster: Cluster, namespace: str) -> None:
    manifest = dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "smoke"},
            "data": {"greeting": "hello from wslb"},
        }
    )
    assert "configmap/smoke created" in cluster.apply(manifest, namespace)
    got = cluster.get("configmap", "smoke", "-n", namespace)
    assert got["data"] == {"greeting": "hello from wslb"}

    cluster.delete(manifest, namespace)
    gone = cluster.kubectl("get", "configmap", "smoke", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def _crd_names(path: Path) -> list[str]:
    return [
        doc["metadata"]["name"]
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


@pytest.mark.skipif(not CRDS, reason="crds/ holds no *.yaml yet: no CRD to apply")
@pytest.mark.parametrize("crd_file", CRDS, ids=[p.name for p in CRDS])
def test_crd_apply_get_delete(cluster: Cluster, crd_file: Path) -> None:
    names = _crd_names(crd_file)
    assert names, f"{crd_file} defines no CustomResourceDefinition"
    manifest = crd_file.read_text()
    cluster.apply(manifest)
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        crd = cluster.get("crd", name)
        assert crd["metadata"]["name"] == name
        # the new resource is served: listing it works (and is empty)
        plural = crd["spec"]["names"]["plural"]
        group = crd["spec"]["group"]
        assert cluster.get(f"{plural}.{group}", "-A")["items"] == []

    cluster.delete(manifest)
    for name in names:
        assert cluster.kubectl("get", "crd", name, check=False).returncode != 0
