"""Our image runs as real pods: the demo echo backend behind a Service, reached over
WebSocket from the host through a NodePort on 127.0.0.1 and from a pod through the Service's
DNS name; readiness, replacement and garbage collection behave."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.e2e.kind_cluster import Cluster
from tests.e2e.manifests import (
    ECHO_PORT,
    WSLB_UID,
    client_pod,
    dump,
    echo_deployment,
    service,
)

pytestmark = pytest.mark.e2e

ECHO = "echo"
ECHO_NODE_PORT = 30080


@pytest.fixture(scope="module")
def echo(cluster: Cluster, namespace: str) -> str:
    """Two echo pods from our image behind a NodePort Service (removed with the namespace);
    returns the namespace."""
    cluster.apply(dump(echo_deployment(ECHO), service(ECHO, ECHO_NODE_PORT)), namespace)
    cluster.rollout(ECHO, namespace)
    return namespace


def pod_names(cluster: Cluster, namespace: str, app: str) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.ready_pods(namespace, f"app={app}")}


def ready_addresses(cluster: Cluster, namespace: str, svc: str) -> dict[str, bool]:
    """Endpoint address -> ready, over the Service's EndpointSlices."""
    slices = cluster.get(
        "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={svc}"
    )["items"]
    out: dict[str, bool] = {}
    for s in slices:
        for ep in s.get("endpoints") or []:
            for address in ep["addresses"]:
                out[address] = bool(ep.get("conditions", {}).get("ready"))
    return out


def test_echo_deployment_has_two_ready_non_root_read_only_pods(cluster: Cluster, echo: str) -> None:
    pods = cluster.ready_pods(echo, f"app={ECHO}")
    assert len(pods) == 2
    for pod in pods:
        name = pod["metadata"]["name"]
        uid = cluster.kubectl("exec", "-n", echo, name, "--", "id", "-u").stdout.strip()
        assert uid == str(WSLB_UID)
        write = cluster.kubectl(
            "exec", "-n", echo, name, "--", "python", "-c", "open('/probe', 'w')", check=False
        )
        assert write.returncode != 0
        assert "Read-only file system" in write.stderr
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] is True
        assert status["restartCount"] == 0


def test_service_endpointslice_lists_both_pods(cluster: Cluster, echo: str) -> None:
    pod_ips = {p["status"]["podIP"] for p in cluster.ready_pods(echo, f"app={ECHO}")}
    assert len(pod_ips) == 2
    cluster.wait_for(
        lambda: ready_addresses(cluster, echo, ECHO) == dict.fromkeys(pod_ips, True),
        what=f"EndpointSlice of {ECHO} to list {sorted(pod_ips)} as ready",
    )


def whoami(url: str) -> str:
    """One WebSocket connection: check the echo, return the backend's name."""
    with connect(url, open_timeout=5, close_timeout=2) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send("whoami")
        answer = ws.recv(timeout=5)
        assert isinstance(answer, str)
        return answer


def test_websocket_through_nodeport_on_loopback_reaches_both_pods(
    cluster: Cluster, echo: str
) -> None:
    url = cluster.url(ECHO_NODE_PORT)
    assert url.startswith("ws://127.0.0.1:")
    expected = pod_names(cluster, echo, ECHO)
    seen: set[str] = set()

    def both_seen() -> bool:
        seen.add(whoami(url))
        return seen >= expected

    # new connections are spread at random by kube-proxy; poll until both pods answered
    cluster.wait_for(both_seen, timeout=60, interval=0.05, what=f"answers from {expected}")
    assert seen == expected


CLIENT_SCRIPT = """
import json, sys
from websockets.sync.client import connect
url = sys.argv[1] if len(sys.argv) > 1 else "ws://{host}:{port}/"
names = set()
for _ in range(20):
    with connect(url, open_timeout=5) as ws:
        ws.send("hello from a pod")
        assert ws.recv(timeout=5) == "hello from a pod"
        ws.send("whoami")
        names.add(ws.recv(timeout=5))
print("RESULT " + json.dumps(sorted(names)))
"""


def test_websocket_from_a_pod_through_service_dns(cluster: Cluster, echo: str) -> None:
    host = f"{ECHO}.{echo}.svc.cluster.local"
    name = f"ws-client-{secrets.token_hex(2)}"
    script = CLIENT_SCRIPT.format(host=host, port=ECHO_PORT)
    cluster.apply(dump(client_pod(name, script)), echo)

    def finished() -> str | None:
        phase = cluster.get("pod", name, "-n", echo)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = cluster.wait_for(finished, timeout=120, what=f"pod {name} to finish")
    logs = cluster.kubectl("logs", "-n", echo, name).stdout
    assert phase == "Succeeded", logs
    result_line = next(line for line in logs.splitlines() if line.startswith("RESULT "))
    names = set(json.loads(result_line.removeprefix("RESULT ")))
    assert names
    assert names <= pod_names(cluster, echo, ECHO)


def test_failing_readiness_probe_takes_pod_out_of_ready_endpoints(
    cluster: Cluster, namespace: str
) -> None:
    app = "flaky"
    # ready while /tmp/unready does not exist: the test flips one pod by creating the file
    probe: dict[str, Any] = {
        "exec": {"command": ["sh", "-c", "test ! -e /tmp/unready"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
        "successThreshold": 1,
    }
    cluster.apply(dump(echo_deployment(app, readiness=probe), service(app)), namespace)
    cluster.rollout(app, namespace)
    pods = {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in cluster.ready_pods(namespace, f"app={app}")
    }
    assert len(pods) == 2
    cluster.wait_for(
        lambda: ready_addresses(cluster, namespace, app) == dict.fromkeys(pods.values(), True),
        what="both flaky pods ready in the EndpointSlice",
    )
    victim, survivor = sorted(pods)
    cluster.kubectl("exec", "-n", namespace, victim, "--", "touch", "/tmp/unready")

    cluster.wait_for(
        lambda: (
            ready_addresses(cluster, namespace, app) == {pods[victim]: False, pods[survivor]: True}
        ),
        what=f"{victim} to be not ready in the EndpointSlice",
    )
    assert pod_names(cluster, namespace, app) == {survivor}

    cluster.kubectl("exec", "-n", namespace, victim, "--", "rm", "/tmp/unready")
    cluster.wait_for(
        lambda: ready_addresses(cluster, namespace, app) == dict.fromkeys(pods.values(), True),
        what=f"{victim} to be ready again",
    )


def test_deleting_a_pod_yields_a_replacement(cluster: Cluster, echo: str) -> None:
    before = pod_names(cluster, echo, ECHO)
    assert len(before) == 2
    victim = sorted(before)[0]
    cluster.kubectl("delete", "pod", "-n", echo, victim, "--wait=false")

    def replaced() -> set[str] | None:
        now = pod_names(cluster, echo, ECHO)
        return now if len(now) == 2 and victim not in now else None

    after = cluster.wait_for(replaced, timeout=120, what=f"a replacement for {victim}")
    assert before - {victim} <= after
    assert len(after - before) == 1


def test_deleting_the_deployment_garbage_collects_its_pods(
    cluster: Cluster, namespace: str
) -> None:
    app = "doomed"
    cluster.apply(dump(echo_deployment(app)), namespace)
    cluster.rollout(app, namespace)
    assert len(pod_names(cluster, namespace, app)) == 2

    cluster.kubectl("delete", "deployment", app, "-n", namespace, "--wait=false")

    def no_pods() -> bool:
        pods = cluster.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
        replicasets = cluster.get("replicasets", "-n", namespace, "-l", f"app={app}")["items"]
        return not pods and not replicasets

    cluster.wait_for(no_pods, timeout=120, what=f"the pods of {app} to be garbage-collected")
