"""A real kube-apiserver and etcd on loopback, for the controller's integration tests.

`control_plane()` starts etcd and kube-apiserver (RBAC on, a static admin token, service
account signing keys, an audit log) in a temporary directory on free 127.0.0.1 ports,
installs the CRDs from crds/ and the chart's own ServiceAccount, RBAC objects and
leader-election Lease (rendered by `helm template`), mints a token for that ServiceAccount
and writes two kubeconfigs: the admin's and the controller's. Everything it started is
stopped by PID and the directory removed on exit, also when startup fails.

There is no kube-controller-manager, scheduler or kubelet: nothing creates pods,
EndpointSlices or garbage-collects owned objects; tests create what they need.

Binaries are the ones `make e2e-assets` builds (versions from hack/versions.sh) in
$WSLB_CACHE (default $XDG_CACHE_HOME/wslb, else ~/.cache/wslb); $WSLB_KUBE_APISERVER,
$WSLB_ETCD, $WSLB_KUBECTL and $WSLB_HELM override a path.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.kind_cluster import CACHE, VERSIONS  # one reader of hack/versions.sh

REPO = Path(__file__).resolve().parents[2]
RELEASE = "wslb"
RELEASE_NAMESPACE = "wslb-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
INSTALLED_KINDS = RBAC_KINDS | {"Lease"}  # the leader-election Lease the chart creates
START_TIMEOUT = 60.0
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


BINARIES = {
    "kube-apiserver": CACHE / "k8s" / VERSIONS["K8S_VERSION"] / "kube-apiserver",
    "kubectl": CACHE / "k8s" / VERSIONS["K8S_VERSION"] / "kubectl",
    "etcd": CACHE / "etcd" / VERSIONS["ETCD_VERSION"] / "etcd",
    "helm": CACHE / "helm" / VERSIONS["HELM_VERSION"] / "helm",
}


def binary(name: str) -> Path:
    """Path of one of BINARIES: $WSLB_<NAME> if set, else the build cache."""
    env = os.environ.get("WSLB_" + name.upper().replace("-", "_"))
    return Path(env) if env else BINARIES[name]


def missing_binaries() -> list[str]:
    """Paths of the binaries that are not there (empty when all are)."""
    return [
        str(binary(name))
        for name in BINARIES
        if not (binary(name).is_file() and os.access(binary(name), os.X_OK))
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ControlPlaneError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM this PID, SIGKILL it after `timeout`."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


@dataclass
class ControlPlane:
    workdir: Path
    url: str = ""
    ca_file: Path = Path()
    admin_kubeconfig: Path = Path()
    controller_kubeconfig: Path = Path()
    controller_user: str = ""
    """The ServiceAccount's user name, `system:serviceaccount:<ns>:<name>`."""
    audit_log: Path = Path()
    processes: list[Process] = field(default_factory=list)

    # -------------------------------------------------------------- kubectl

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as the admin (or under `kubeconfig`); raise with its output on failure."""
        command = [str(binary("kubectl")), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig)]
        result = subprocess.run(
            [*command, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def apply(self, *objects: dict[str, Any]) -> None:
        """Server-side apply of these objects as the admin."""
        body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))

    def create(self, *objects: dict[str, Any]) -> None:
        body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("create", "-f", "-", input=json.dumps(body))

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        args = ["get", resource, name, "-o", "json", "--ignore-not-found", "--show-managed-fields"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).stdout.strip()
        return json.loads(out) if out else None

    def can_i(self, *args: str, kubeconfig: Path | None = None) -> bool:
        """`kubectl auth can-i` under `kubeconfig` (default: the controller's)."""
        result = self.kubectl(
            "auth", "can-i", *args, kubeconfig=kubeconfig or self.controller_kubeconfig, check=False
        )
        answer = result.stdout.strip()
        if answer not in ("yes", "no"):
            raise ControlPlaneError(f"auth can-i {' '.join(args)}: {result.stdout}{result.stderr}")
        return answer == "yes"

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event so far (Metadata level: who, what, which response code)."""
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.audit_log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    # -------------------------------------------------------------- lifecycle

    def _spawn(self, name: str, command: Sequence[str]) -> Process:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop what was started, newest first (the API server before etcd)."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def _wait(what: str, check: Any, processes: Sequence[Process], timeout: float) -> Any:
    """Poll `check()` until it returns a truthy value; fail fast when a process exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        for process in processes:
            process.check_alive()
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)
            raise ControlPlaneError(f"{what} not reached in {timeout:.0f}s ({last!r})\n{tails}")
        time.sleep(0.1)


def _http_ok(url: str, context: ssl.SSLContext | None = None, token: str = "") -> bool:
    request = urllib.request.Request(url)  # noqa: S310 (loopback URLs we built)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def kubeconfig(server: str, ca_file: Path, user: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": user,
        "clusters": [
            {
                "name": "loopback",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "loopback", "user": user}}],
    }


def _write_private(path: Path, data: str | bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return path


def _start_etcd(plane: ControlPlane) -> str:
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    etcd = plane._spawn(
        "etcd",
        [
            str(binary("etcd")),
            "--name=wslb-test",
            f"--data-dir={plane.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=wslb-test={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",  # a throwaway store: durability only costs time here
            "--log-level=warn",
        ],
    )
    _wait("etcd /health", lambda: _http_ok(f"{client_url}/health"), [etcd], START_TIMEOUT)
    return client_url


def _start_apiserver(plane: ControlPlane, etcd_url: str, admin_token: str) -> None:
    work = plane.workdir
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key = _write_private(
        work / "sa.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    sa_pub = work / "sa.pub"
    sa_pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    tokens = _write_private(work / "tokens.csv", f"{admin_token},admin,admin,system:masters\n")
    policy = work / "audit-policy.json"
    policy.write_text(json.dumps(AUDIT_POLICY))
    plane.audit_log = work / "audit.log"
    port = free_port()
    cert_dir = work / "certs"
    plane._spawn(
        "kube-apiserver",
        [
            str(binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={cert_dir}",
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            "--anonymous-auth=false",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which validation
            # refuses; nothing here needs them.
            "--endpoint-reconciler-type=none",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={plane.audit_log}",
            "--audit-log-mode=blocking",
            "--v=1",
        ],
    )
    plane.url = f"https://127.0.0.1:{port}"
    plane.ca_file = cert_dir / "apiserver.crt"

    def ready() -> bool:
        if not plane.ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(plane.ca_file))
        return _http_ok(f"{plane.url}/readyz", context, admin_token)

    _wait("kube-apiserver /readyz", ready, plane.processes, START_TIMEOUT)
    plane.admin_kubeconfig = _write_private(
        work / "admin.kubeconfig",
        json.dumps(kubeconfig(plane.url, plane.ca_file, "admin", admin_token)),
    )


def chart_rbac() -> list[dict[str, Any]]:
    """The chart's ServiceAccount, RBAC objects and Lease, as `helm template` renders them."""
    result = subprocess.run(
        [
            str(binary("helm")),
            "template",
            RELEASE,
            str(REPO / "helm" / RELEASE),
            "--namespace",
            RELEASE_NAMESPACE,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"helm template failed:\n{result.stderr}")
    return [
        doc
        for doc in yaml.safe_load_all(result.stdout)
        if isinstance(doc, dict) and doc.get("kind") in INSTALLED_KINDS
    ]


def _install(plane: ControlPlane) -> None:
    crds = sorted((REPO / "crds").glob("*.yaml"))
    plane.kubectl("apply", "--server-side", *(arg for crd in crds for arg in ("-f", str(crd))))
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        *(f"crd/{yaml.safe_load(crd.read_text())['metadata']['name']}" for crd in crds),
    )
    plane.kubectl("create", "namespace", RELEASE_NAMESPACE)
    rbac = chart_rbac()
    [account] = [doc for doc in rbac if doc["kind"] == "ServiceAccount"]
    plane.apply(*rbac)
    name = account["metadata"]["name"]
    token = plane.kubectl(
        "create", "token", name, "-n", RELEASE_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    plane.controller_user = f"system:serviceaccount:{RELEASE_NAMESPACE}:{name}"
    plane.controller_kubeconfig = _write_private(
        plane.workdir / "controller.kubeconfig",
        json.dumps(kubeconfig(plane.url, plane.ca_file, name, token)),
    )
    # The RBAC authorizer serves from an informer cache: wait until the binding counts.
    _wait(
        "the chart's ClusterRoleBinding in effect",
        lambda: plane.can_i("watch", "loadbalancers.wslb.io", "--all-namespaces"),
        plane.processes,
        START_TIMEOUT,
    )


@contextlib.contextmanager
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with the CRDs and the chart's RBAC; torn down on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="wslb-apiserver-"))
    plane = ControlPlane(workdir)
    try:
        etcd_url = _start_etcd(plane)
        _start_apiserver(plane, etcd_url, secrets.token_urlsafe(24))
        _install(plane)
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
