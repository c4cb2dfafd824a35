"""helm installs, upgrades and uninstalls a chart on the cluster (a small test chart that runs
our image), as the controller's chart will be."""

from __future__ import annotations

import json

import pytest

from tests.e2e.kind_cluster import REPO, WSLB_IMAGE, Cluster

pytestmark = pytest.mark.e2e

CHART = REPO / "tests" / "e2e" / "charts" / "smoke"
RELEASE = "smoke"


def image_values() -> list[str]:
    repository, _, tag = WSLB_IMAGE.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def release_status(cluster: Cluster, namespace: str) -> dict[str, object]:
    out = cluster.helm("status", RELEASE, "-n", namespace, "-o", "json").stdout
    status: dict[str, object] = json.loads(out)
    return status


def test_helm_install_upgrade_uninstall(cluster: Cluster, namespace: str) -> None:
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        *image_values(),
        "--wait",
        "--timeout",
        "180s",
    )
    status = release_status(cluster, namespace)
    assert status["version"] == 1
    assert status["info"]["status"] == "deployed"  # type: ignore[index]
    config = cluster.get("configmap", f"{RELEASE}-config", "-n", namespace)
    assert config["data"] == {"message": "first", "revision": "1"}
    assert len(cluster.ready_pods(namespace, f"app.kubernetes.io/instance={RELEASE}")) == 1

    cluster.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        namespace,
        *image_values(),
        "--set",
        "message=second",
        "--set",
        "replicas=2",
        "--wait",
        "--timeout",
        "180s",
    )
    status = release_status(cluster, namespace)
    assert status["version"] == 2
    config = cluster.get("configmap", f"{RELEASE}-config", "-n", namespace)
    assert config["data"] == {"message": "second", "revision": "2"}
    assert len(cluster.ready_pods(namespace, f"app.kubernetes.io/instance={RELEASE}")) == 2

    cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "180s")
    assert (
        cluster.kubectl(
            "get", "configmap", f"{RELEASE}-config", "-n", namespace, check=False
        ).returncode
        != 0
    )
    assert RELEASE not in cluster.helm("list", "-n", namespace, "-q").stdout.split()
    cluster.wait_for(
        lambda: (
            not cluster.get("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={RELEASE}")[
                "items"
            ]
        ),
        what="the release's pods to be gone",
    )
