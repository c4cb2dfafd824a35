"""The e2e tier's cluster: a kind cluster (or an existing one) and the helpers tests use on it.

It owns creating and deleting kind clusters, loading our image into them, and running
kubectl/helm against them; it must not hold test logic. A cluster is one control plane and
two workers (``WSLB_E2E_WORKERS``), so that what only several nodes show (replicas spread,
node drains) is tested. Everything a test reaches is on 127.0.0.1: the API server
(`apiServerAddress`) and, from every node, a block of NodePorts mapped to host ports
(`extraPortMappings` with `listenAddress: 127.0.0.1`), so test traffic stays on loopback and
test clients connect as external clients would. Every node's ports are mapped, not one
node's: a Service with `externalTrafficPolicy: Local` (the data plane's) answers only on the
nodes that run one of its pods, and a test picks those nodes as an external load balancer
health-checking the nodes would.

With our node image (no kindnet), each node's bridge CNI gets its own pod subnet (a
conflist mounted over the image's) and every node routes the other nodes' subnets to them.

Environment:
- ``WSLB_KIND_NODE_IMAGE``: node image to use instead of the one built here (on a machine with
  a registry, the official ``kindest/node``); the settings only our node image needs
  (bridge CNI instead of kindnet, CoreDNS tag) are then left out.
- ``WSLB_E2E_CLUSTER=existing``: use the current kubeconfig instead of creating a cluster;
  ``WSLB_E2E_NODE_PORTS`` (``30080=41234,...``) says where its NodePorts are reachable on
  127.0.0.1 (default: the file ``hack/cluster.sh up`` writes, else the same numbers).
- ``WSLB_IMAGE``: our image (default ``localhost/wslb:dev``).
- ``WSLB_E2E_WORKERS``: worker nodes (default 2; 0 gives the old single-node cluster).

Run as a script (``python -m tests.e2e.kind_cluster up|down``) it is what
``make cluster-up`` / ``make cluster-down`` call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


# Pinned versions, read from the one place the build scripts read them.
def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (REPO / "hack" / "versions.sh").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper() and key.isidentifier() and not value.startswith("("):
            out[key] = value.strip().strip('"')
    return out


VERSIONS = _versions()
K8S_VERSION = VERSIONS["K8S_VERSION"]
COREDNS_TAG = VERSIONS["COREDNS_VERSION"]
CACHE = Path(
    os.environ.get("WSLB_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wslb"
)

#: Our image, as pods name it.
WSLB_IMAGE = os.environ.get("WSLB_IMAGE", "localhost/wslb:dev")
#: The node image built by hack/node-image.sh (same variable as hack/lib.sh).
LOCAL_NODE_IMAGE = (
    os.environ.get("WSLB_NODE_IMAGE_BUILD") or f"localhost/wslb-kind-node:{K8S_VERSION}"
)
#: NodePorts reserved for tests, each mapped (from every node) to a free host port on 127.0.0.1.
NODE_PORTS = tuple(range(30080, 30090))
#: Worker nodes beside the control plane.
WORKERS = int(os.environ.get("WSLB_E2E_WORKERS", "2"))
#: kind's default pod subnet; node i of our node image takes 10.244.i.0/24 of it.
POD_SUBNET_PREFIX = "10.244"
#: Where `hack/cluster.sh up` records the cluster it made, for WSLB_E2E_CLUSTER=existing.
STATE_FILE = CACHE / "cluster-up.json"


class ClusterError(RuntimeError):
    """A command against the cluster failed; carries the command and its output."""

    def __init__(self, command: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(command)} exited {returncode}:\n{output[-4000:]}")
        self.command = list(command)
        self.returncode = returncode
        self.output = output


def tool(name: str) -> str:
    """Path of kind/kubectl/helm: $WSLB_<NAME>, then the build cache, then PATH."""
    env = os.environ.get(f"WSLB_{name.upper()}")
    if env:
        return env
    cached = {
        "kind": CACHE / "kind" / VERSIONS["KIND_VERSION"] / "kind",
        "kubectl": CACHE / "k8s" / K8S_VERSION / "kubectl",
        "helm": CACHE / "helm" / VERSIONS["HELM_VERSION"] / "helm",
    }.get(name)
    if cached is not None and cached.exists():
        return str(cached)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (run `make e2e-assets` or put it on PATH)")
    return found


def run(
    command: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, raise ClusterError on a non-zero exit."""
    result = subprocess.run(
        list(command),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise ClusterError(command, result.returncode, result.stdout + result.stderr)
    return result


def provider() -> str:
    """The kind node provider: KIND_EXPERIMENTAL_PROVIDER, else docker if its engine answers."""
    chosen = os.environ.get("KIND_EXPERIMENTAL_PROVIDER")
    if chosen:
        return chosen
    if shutil.which("docker"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if run(["docker", "info"], check=False, timeout=20).returncode == 0:
                return "docker"
    return "podman"


def free_host_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (the kernel picks them; racy but short-lived)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
) -> T:
    """Poll `probe` until it returns something other than None/False; fail after `timeout` s.

    The last exception the probe raised (if any) is reported with the timeout, so a failing
    wait says what it last saw.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except (ClusterError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            last_error, value = exc, None
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Cluster:
    """A cluster the e2e tests run against: kubeconfig/context, mapped ports and helpers."""

    name: str
    kubeconfig: Path
    context: str
    #: NodePort -> host port on 127.0.0.1 where it is reachable (through the first node).
    node_ports: dict[int, int] = field(default_factory=dict)
    #: node name -> its own NodePort -> host port map (every node of a kind cluster).
    nodes: dict[str, dict[int, int]] = field(default_factory=dict)
    #: node name -> the pod subnet its bridge CNI hands out (our node image only).
    pod_subnets: dict[str, str] = field(default_factory=dict)
    #: "kind" for clusters this module created (image loading by `kind load`), else "existing".
    kind: str = "kind"
    provider: str = "podman"
    image: str = WSLB_IMAGE

    # -- commands -------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """kubectl against this cluster."""
        command = [tool("kubectl"), "--kubeconfig", str(self.kubeconfig), "--context", self.context]
        return run([*command, *args], input=input, check=check, timeout=timeout)

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: str, namespace: str | None = None) -> str:
        """`kubectl apply -f -` of a YAML/JSON manifest; returns kubectl's output."""
        ns = ["--namespace", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=manifest).stdout

    def delete(self, manifest: str, namespace: str | None = None, wait: bool = True) -> str:
        """`kubectl delete -f -` of a manifest."""
        ns = ["--namespace", namespace] if namespace else []
        return self.kubectl(
            "delete", *ns, f"--wait={str(wait).lower()}", "-f", "-", input=manifest
        ).stdout

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """helm against this cluster."""
        command = [
            tool("helm"),
            "--kubeconfig",
            str(self.kubeconfig),
            "--kube-context",
            self.context,
        ]
        return run([*command, *args], timeout=timeout)

    def wait_for(
        self,
        probe: Callable[[], T | None],
        *,
        timeout: float = 120,
        what: str = "condition",
        interval: float = 0.5,
    ) -> T:
        """Poll with a deadline (see module-level `wait_for`)."""
        return wait_for(probe, timeout=timeout, what=what, interval=interval)

    def rollout(self, deployment: str, namespace: str, timeout: int = 180) -> None:
        """Wait until a Deployment's rollout completes (all replicas updated and available)."""
        self.kubectl(
            "rollout",
            "status",
            f"deployment/{deployment}",
            "-n",
            namespace,
            f"--timeout={timeout}s",
            timeout=timeout + 30,
        )

    def ready_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching `selector` that are Ready and not being deleted."""
        pods = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]

    # -- ports ----------------------------------------------------------------------------

    def host_port(self, node_port: int) -> int:
        """The 127.0.0.1 port where `node_port` is reachable from the host."""
        try:
            return self.node_ports[node_port]
        except KeyError:
            raise KeyError(
                f"NodePort {node_port} is not mapped; reserved: {sorted(self.node_ports)}"
            ) from None

    def url(
        self, node_port: int, scheme: str = "ws", path: str = "/", node: str | None = None
    ) -> str:
        """URL of a NodePort as a client on the host reaches it, through `node` if given
        (needed for `externalTrafficPolicy: Local`), else through the first node."""
        ports = self.nodes.get(node, self.node_ports) if node else self.node_ports
        if node_port not in ports:
            raise KeyError(f"NodePort {node_port} is not mapped; reserved: {sorted(ports)}")
        return f"{scheme}://127.0.0.1:{ports[node_port]}{path}"

    def pod_nodes(self, namespace: str, selector: str) -> dict[str, str]:
        """Ready pod name -> the node it runs on."""
        return {
            p["metadata"]["name"]: p["spec"]["nodeName"]
            for p in self.ready_pods(namespace, selector)
        }

    def workers(self) -> list[str]:
        """Nodes without the control-plane role (all nodes on a single-node cluster)."""
        items = self.get("nodes")["items"]
        names = [
            n["metadata"]["name"]
            for n in items
            if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
        ]
        return sorted(names) or sorted(n["metadata"]["name"] for n in items)

    def node_exec(self, node: str, *command: str, timeout: float = 60) -> str:
        """Run a command inside a kind node's container (kind clusters only)."""
        if self.kind != "kind":
            raise ClusterError(["exec", node, *command], 1, "not a kind cluster: no node exec")
        engine = "docker" if self.provider == "docker" else "podman"
        return run([engine, "exec", node, *command], timeout=timeout).stdout

    # -- images ---------------------------------------------------------------------------

    def load_image(self, image: str | None = None) -> None:
        """Make a locally built image available to the nodes that run pods (the workers:
        kind taints its control plane when it has workers; kind loads them in parallel)."""
        image = image or self.image
        if self.kind != "kind":
            return  # an existing cluster pulls (or already has) what it runs
        targets = ["--nodes", ",".join(self.workers())]
        if self.provider == "docker":
            run(
                [tool("kind"), "load", "docker-image", image, "--name", self.name, *targets],
                timeout=600,
            )
            self._check_loaded(image)
            return
        with tempfile.TemporaryDirectory(prefix="wslb-image-") as tmp:
            archive = Path(tmp) / "image.tar"
            run(
                ["podman", "save", "-q", "--format", "docker-archive", "-o", str(archive), image],
                timeout=600,
            )
            run(
                [
                    tool("kind"),
                    "load",
                    "image-archive",
                    str(archive),
                    "--name",
                    self.name,
                    *targets,
                ],
                env=kind_env(self.provider),
                timeout=600,
            )
        self._check_loaded(image)

    def _check_loaded(self, image: str) -> None:
        """Fail here, naming the node, if a node lacks the image after `kind load`, rather
        than minutes later as an ImagePullBackOff of the first pod that runs it."""
        for node in self.workers():
            if not self.node_exec(node, "crictl", "images", "-q", image).strip():
                raise ClusterError(["kind", "load", image], 0, f"{image} is not on node {node}")

    # -- diagnostics ----------------------------------------------------------------------

    def diagnostics(self) -> str:
        """A short state dump for a failed run: nodes, pods, recent events."""
        parts = []
        for args in (
            ("get", "nodes", "-o", "wide"),
            ("get", "pods", "-A", "-o", "wide"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ):
            result = self.kubectl(*args, check=False, timeout=60)
            parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)

    def export_logs(self, directory: Path) -> Path | None:
        """`kind export logs` into `directory` (kind clusters only)."""
        if self.kind != "kind":
            return None
        directory.mkdir(parents=True, exist_ok=True)
        run(
            [tool("kind"), "export", "logs", str(directory), "--name", self.name],
            env=kind_env(self.provider),
            check=False,
            timeout=300,
        )
        return directory


def kind_env(chosen: str) -> dict[str, str]:
    """Environment for kind: the provider made explicit (kind would try docker first)."""
    return {**os.environ, "KIND_EXPERIMENTAL_PROVIDER": chosen}


def node_names(name: str, workers: int = WORKERS) -> list[str]:
    """The node (container) names kind gives a cluster: control plane first."""
    return [f"{name}-control-plane"] + [
        f"{name}-worker{i if i > 1 else ''}" for i in range(1, workers + 1)
    ]


def bridge_conflist(subnet: str) -> str:
    """Our node image's bridge CNI config with this node's own pod subnet (the image ships
    one subnet for all nodes, which is only right on a single node). Pod traffic leaving
    the subnet is masqueraded to the node's address, so replies need no extra routes."""
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "wslb-kind",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        },
        indent=2,
    )


def kind_config(
    name: str,
    port_maps: dict[str, dict[int, int]],
    node_image: str,
    cni_configs: dict[str, Path] | None = None,
) -> str:
    """The kind cluster config (JSON, which kind reads as YAML): nodes in `port_maps` order,
    the first the control plane. `cni_configs` (node -> conflist file) means our node image."""
    networking: dict[str, Any] = {
        "apiServerAddress": "127.0.0.1",
        "apiServerPort": 0,
        "kubeProxyMode": "nftables",
        "podSubnet": f"{POD_SUBNET_PREFIX}.0.0/16",
    }
    patches = [
        # cgroup v1 hosts (this machine): the kubelet refuses v1 unless told otherwise.
        "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n"
        "failCgroupV1: false\n",
    ]
    if cni_configs is not None:
        # kindnetd's image cannot be pulled: the node image ships a bridge CNI config.
        networking["disableDefaultCNI"] = True
        # the CoreDNS image we built and preloaded, at our pinned tag
        patches.append(
            "kind: ClusterConfiguration\napiVersion: kubeadm.k8s.io/v1beta4\n"
            f"dns:\n  imageTag: {COREDNS_TAG}\n"
        )
    nodes = []
    for index, (node, port_map) in enumerate(port_maps.items()):
        entry: dict[str, Any] = {
            "role": "control-plane" if index == 0 else "worker",
            "image": node_image,
            "extraPortMappings": [
                {
                    "containerPort": node_port,
                    "hostPort": host_port,
                    "listenAddress": "127.0.0.1",
                    "protocol": "TCP",
                }
                for node_port, host_port in sorted(port_map.items())
            ],
        }
        if cni_configs is not None:
            entry["extraMounts"] = [
                {
                    "hostPath": str(cni_configs[node]),
                    "containerPath": "/etc/cni/net.d/10-wslb-bridge.conflist",
                    "readOnly": True,
                }
            ]
        nodes.append(entry)
    config = {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": name,
        "networking": networking,
        "kubeadmConfigPatches": patches,
        "nodes": nodes,
    }
    return json.dumps(config, indent=2)


def plan(name: str | None = None, workdir: Path | None = None) -> Cluster:
    """A kind cluster not created yet: name, free host ports, kind config and kubeconfig paths.

    Split from `start` so that a caller holds the Cluster before anything can fail, and can
    always export logs and `destroy` it.
    """
    name = name or f"wslb-e2e-{secrets.token_hex(3)}"
    node_image = os.environ.get("WSLB_KIND_NODE_IMAGE") or LOCAL_NODE_IMAGE
    local_node = not os.environ.get("WSLB_KIND_NODE_IMAGE")
    names = node_names(name)
    host_ports = iter(free_host_ports(len(NODE_PORTS) * len(names)))
    port_maps = {node: {p: next(host_ports) for p in NODE_PORTS} for node in names}
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    subnets: dict[str, str] = {}
    cni_configs: dict[str, Path] | None = None
    if local_node:
        subnets = {node: f"{POD_SUBNET_PREFIX}.{i}.0/24" for i, node in enumerate(names)}
        cni_configs = {node: workdir / f"cni-{node}.conflist" for node in names}
        for node, path in cni_configs.items():
            path.write_text(bridge_conflist(subnets[node]))
            path.chmod(0o644)
    (workdir / "kind.json").write_text(kind_config(name, port_maps, node_image, cni_configs))
    return Cluster(
        name=name,
        kubeconfig=workdir / "kubeconfig",
        context=f"kind-{name}",
        node_ports=port_maps[names[0]],
        nodes=port_maps,
        pod_subnets=subnets,
        kind="kind",
        provider=provider(),
    )


def route_pod_subnets(cluster: Cluster) -> None:
    """Our node image has no kindnet: every node routes each other node's pod subnet to that
    node's address (all nodes share one container network), as kindnet would."""
    if not cluster.pod_subnets:
        return
    addresses = {
        n["metadata"]["name"]: next(
            a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"
        )
        for n in cluster.get("nodes")["items"]
    }
    for node in addresses:
        routes = [
            f"ip route replace {cluster.pod_subnets[other]} via {address}"
            for other, address in sorted(addresses.items())
            if other != node
        ]
        if routes:
            cluster.node_exec(node, "sh", "-c", " && ".join(routes))


def start(cluster: Cluster, log: Callable[[str], None] = print) -> None:
    """Create the planned kind cluster, wait for its system pods, load our image into it.

    kind runs with --retain: if creation fails the node stays for `kind export logs`, and the
    caller's `destroy` removes it.
    """
    config_file = cluster.kubeconfig.parent / "kind.json"
    nodes = json.loads(config_file.read_text())["nodes"]
    node_image = nodes[0]["image"]
    started = time.monotonic()
    log(
        f"creating kind cluster {cluster.name} ({cluster.provider}, {len(nodes)} nodes, "
        f"node image {node_image})"
    )
    run(
        [
            tool("kind"),
            "create",
            "cluster",
            "--name",
            cluster.name,
            "--config",
            str(config_file),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--retain",
            "--wait",
            "180s",
        ],
        env=kind_env(cluster.provider),
        timeout=600,
    )
    created = time.monotonic()
    route_pod_subnets(cluster)
    # The control plane is up; wait for what every test leans on: every node Ready, DNS,
    # kube-proxy and the default ServiceAccount that pods are admitted with.
    cluster.kubectl(
        "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s", timeout=210
    )
    cluster.rollout("coredns", "kube-system")
    cluster.kubectl(
        "rollout",
        "status",
        "daemonset/kube-proxy",
        "-n",
        "kube-system",
        "--timeout=180s",
        timeout=210,
    )
    cluster.wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        what="the default ServiceAccount",
    )
    ready = time.monotonic()
    cluster.load_image()
    loaded = time.monotonic()
    log(
        f"cluster {cluster.name}: created in {created - started:.0f}s, system pods ready in "
        f"{ready - created:.0f}s, image loaded in {loaded - ready:.0f}s; "
        f"NodePorts on 127.0.0.1 per node: {cluster.nodes}"
    )


def destroy(cluster: Cluster) -> None:
    """Delete a kind cluster this module created and its temporary kubeconfig."""
    if cluster.kind != "kind":
        return
    run(
        [
            tool("kind"),
            "delete",
            "cluster",
            "--name",
            cluster.name,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        env=kind_env(cluster.provider),
        check=False,
        timeout=300,
    )
    # only the directory `plan` made for this cluster (named after it), never e.g. ~/.kube
    if cluster.kubeconfig.parent.name.startswith(cluster.name):
        shutil.rmtree(cluster.kubeconfig.parent, ignore_errors=True)


def existing() -> Cluster:
    """The cluster of the current kubeconfig (WSLB_E2E_CLUSTER=existing)."""
    kubeconfig = Path(
        os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config"
    )
    state: dict[str, Any] = {}
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
    context = run(
        [tool("kubectl"), "--kubeconfig", str(kubeconfig), "config", "current-context"]
    ).stdout.strip()
    if state.get("context") == context:
        # a cluster from `make cluster-up`: its own kubeconfig and port map, kind loading
        nodes = {
            node: {int(k): int(v) for k, v in ports.items()}
            for node, ports in state.get("nodes", {}).items()
        }
        return Cluster(
            name=state["name"],
            kubeconfig=Path(state["kubeconfig"]),
            context=context,
            node_ports={int(k): int(v) for k, v in state["node_ports"].items()},
            nodes=nodes,
            pod_subnets=state.get("pod_subnets", {}),
            kind="kind",
            provider=state["provider"],
        )
    ports_env = os.environ.get("WSLB_E2E_NODE_PORTS", "")
    node_ports = {p: p for p in NODE_PORTS}
    for pair in filter(None, ports_env.split(",")):
        node, _, host = pair.partition("=")
        node_ports[int(node)] = int(host)
    return Cluster(
        name=context,
        kubeconfig=kubeconfig,
        context=context,
        node_ports=node_ports,
        kind="existing",
        provider="",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`up` / `down` for a person (make cluster-up / cluster-down)."""
    parser = argparse.ArgumentParser(prog="kind_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--name", default="wslb")
    args = parser.parse_args(argv)
    if args.action == "up":
        # kept where a person finds it again, unlike the tests' temporary kubeconfigs
        cluster = plan(args.name, workdir=CACHE / "clusters" / args.name)
        try:
            start(cluster, log=lambda m: print(m, file=sys.stderr))
        except BaseException:
            destroy(cluster)
            raise
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(
            json.dumps(
                {
                    "name": cluster.name,
                    "kubeconfig": str(cluster.kubeconfig),
                    "context": cluster.context,
                    "provider": cluster.provider,
                    "node_ports": {str(k): v for k, v in cluster.node_ports.items()},
                    "nodes": {
                        node: {str(k): v for k, v in ports.items()}
                        for node, ports in cluster.nodes.items()
                    },
                    "pod_subnets": cluster.pod_subnets,
                },
                indent=2,
            )
        )
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print(f"# NodePorts on 127.0.0.1 per node: {cluster.nodes}", file=sys.stderr)
        print("# WSLB_E2E_CLUSTER=existing runs the e2e tests on it", file=sys.stderr)
        return 0
    state = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
    cluster = Cluster(
        name=args.name,
        kubeconfig=Path(state.get("kubeconfig", "/nonexistent/kubeconfig")),
        context=f"kind-{args.name}",
        provider=state.get("provider") or provider(),
    )
    destroy(cluster)
    if state.get("name") == args.name:
        STATE_FILE.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
