"""One port, a whole app: forwarding rules by host and by path, plain HTTP beside WebSocket,
and two certificates chosen by SNI, on kind with our image and the chart.

Two echo Deployments (alpha, beta) stand for two parts of an app; both answer `whoami` over
WebSocket and name their pod on `GET /api/info`. A LoadBalancer with two data-plane replicas
has an HTTP listener whose rules send host `beta.example.test` and path `/beta` to beta and the
rest to alpha, and an HTTPS listener with one certificate per host (two Secrets) and the same
host rule. Clients on the host reach both through the NodePorts on 127.0.0.1; the URL's host
is what the request names (Host and SNI), the socket goes to the mapped port.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from websockets.sync.client import connect

from dataplane.certs import self_signed
from tests.e2e import product
from tests.e2e.kind_cluster import Cluster
from tests.e2e.manifests import dump, echo_deployment, service
from tests.e2e.product import RELEASE, SYSTEM, entry_url, programmed, tls_secret, whoami

pytestmark = pytest.mark.e2e

LB = "app"
HTTP_NODE_PORT = 30088
HTTPS_NODE_PORT = 30089
ALPHA = "alpha"
BETA = "beta"
ALPHA_HOST = "alpha.example.test"
BETA_HOST = "beta.example.test"


def beta_rules(with_path: bool) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {
            "name": "beta-host",
            "match": {"host": BETA_HOST},
            "backends": [{"serviceName": BETA, "port": 8080}],
        }
    ]
    if with_path:
        rules.append(
            {
                "name": "beta-path",
                "match": {"path": "/beta", "pathType": "Prefix"},
                "backends": [{"serviceName": BETA, "port": 8080}],
                "idleTimeoutSeconds": 3600,
            }
        )
    return rules


class Certs:
    def __init__(self) -> None:
        self.alpha = self_signed([ALPHA_HOST])
        self.beta = self_signed([BETA_HOST])


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


@pytest.fixture(scope="module")
def app(cluster: Cluster, namespace: str, certs: Certs) -> Iterator[str]:
    """The chart, alpha and beta, two TLS Secrets and the LoadBalancer with both listeners,
    programmed; yields the namespace."""
    product.install(cluster)
    ns = namespace
    cluster.apply(
        dump(
            echo_deployment(ALPHA, replicas=1),
            service(ALPHA),
            echo_deployment(BETA, replicas=1),
            service(BETA),
            tls_secret("alpha-tls", *certs.alpha),
            tls_secret("beta-tls", *certs.beta),
        ),
        ns,
    )
    cluster.apply(
        dump(
            product.load_balancer(LB, replicas=2),
            product.listener(
                "web", LB, ALPHA, nodePort=HTTP_NODE_PORT, rules=beta_rules(with_path=True)
            ),
            product.listener(
                "secure",
                LB,
                ALPHA,
                protocol="HTTPS",
                port=8443,
                nodePort=HTTPS_NODE_PORT,
                tls={"certificates": [{"secretName": "alpha-tls"}, {"secretName": "beta-tls"}]},
                rules=beta_rules(with_path=False),
            ),
        ),
        ns,
    )
    cluster.rollout(ALPHA, ns)
    cluster.rollout(BETA, ns)
    for name in ("web", "secure"):
        cluster.wait_for(
            lambda name=name: programmed(cluster, ns, name) or None,  # type: ignore[misc]
            timeout=180,
            what=f"Listener {name} Programmed",
        )
    # A ready data plane's NodePort can lag behind kube-proxy on its node (connection
    # refused for a while): wait until both listeners answer through that node.
    for node_port, scheme, tls in (
        (HTTP_NODE_PORT, "http", None),
        (HTTPS_NODE_PORT, "https", ssl.create_default_context(cadata=certs.alpha[0])),
    ):
        address = mapped(cluster, ns, node_port, scheme)

        def answers(address: tuple[str, int] = address, tls: Any = tls) -> bool | None:
            try:
                return http_get(address, ALPHA_HOST, "/api/info", tls)[0] == 200 or None
            except (OSError, http.client.HTTPException):
                return None

        cluster.wait_for(answers, timeout=120, interval=0.5, what=f"{scheme} through {address}")
    yield ns
    cluster.kubectl("delete", "loadbalancer", LB, "-n", ns, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", timeout=300)


def pod_of(cluster: Cluster, namespace: str, app: str) -> str:
    pods = cluster.ready_pods(namespace, f"app={app}")
    assert len(pods) == 1
    return str(pods[0]["metadata"]["name"])


def mapped(cluster: Cluster, namespace: str, node_port: int, scheme: str) -> tuple[str, int]:
    """Where the NodePort answers on the host (through a node running a data plane)."""
    parts = urlsplit(entry_url(cluster, namespace, LB, node_port, scheme))
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def ws_whoami(address: tuple[str, int], host: str, path: str, tls: ssl.SSLContext | None) -> str:
    """A WebSocket whose request names `host` (Host, and SNI over TLS), to `address`."""
    scheme = "wss" if tls is not None else "ws"
    sock = socket.create_connection(address, timeout=10)
    with connect(
        f"{scheme}://{host}:{address[1]}{path}",
        sock=sock,
        ssl=tls,
        server_hostname=host if tls is not None else None,
        open_timeout=10,
        close_timeout=5,
    ) as ws:
        return whoami(ws)


def http_get(
    address: tuple[str, int], host: str, path: str, tls: ssl.SSLContext | None = None
) -> tuple[int, bytes, list[tuple[str, str]]]:
    connection: http.client.HTTPConnection
    if tls is None:
        connection = http.client.HTTPConnection(*address, timeout=10)
    else:
        connection = http.client.HTTPSConnection(*address, timeout=10, context=tls)
        sock = socket.create_connection(address, timeout=10)
        connection.sock = tls.wrap_socket(sock, server_hostname=host)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read(), response.getheaders()
    finally:
        connection.close()


def info_name(body: bytes) -> str:
    """The pod that answered /api/info."""
    data = json.loads(body)
    return str(data["name"])


def test_websockets_follow_host_and_path_rules(cluster: Cluster, app: str) -> None:
    ns = app
    address = mapped(cluster, ns, HTTP_NODE_PORT, "ws")
    alpha, beta = pod_of(cluster, ns, ALPHA), pod_of(cluster, ns, BETA)
    assert ws_whoami(address, ALPHA_HOST, "/", None) == alpha  # the default group
    assert ws_whoami(address, BETA_HOST, "/", None) == beta  # by host
    assert ws_whoami(address, ALPHA_HOST, "/beta", None) == beta  # by path
    assert ws_whoami(address, ALPHA_HOST, "/betamax", None) == alpha  # segment-aware prefix


def test_plain_http_is_served_beside_websocket_by_the_same_rules(
    cluster: Cluster, app: str
) -> None:
    ns = app
    address = mapped(cluster, ns, HTTP_NODE_PORT, "http")
    alpha, beta = pod_of(cluster, ns, ALPHA), pod_of(cluster, ns, BETA)
    status, body, _ = http_get(address, ALPHA_HOST, "/api/info")
    assert status == 200 and info_name(body) == alpha
    status, body, _ = http_get(address, BETA_HOST, "/api/info")
    assert status == 200 and info_name(body) == beta
    status, body, headers = http_get(address, ALPHA_HOST, "/")
    assert status == 200
    assert b"<html" in body.lower()  # the demo page, through the load balancer
    assert any(name.lower() == "via" for name, _ in headers)


def test_two_secrets_are_chosen_by_sni_and_route_by_host(
    cluster: Cluster, app: str, certs: Certs
) -> None:
    ns = app
    address = mapped(cluster, ns, HTTPS_NODE_PORT, "wss")
    alpha, beta = pod_of(cluster, ns, ALPHA), pod_of(cluster, ns, BETA)
    trusts_alpha = ssl.create_default_context(cadata=certs.alpha[0])
    trusts_beta = ssl.create_default_context(cadata=certs.beta[0])
    assert ws_whoami(address, ALPHA_HOST, "/", trusts_alpha) == alpha
    assert ws_whoami(address, BETA_HOST, "/", trusts_beta) == beta
    # the other host's certificate is not what a client of this host gets
    with pytest.raises(ssl.SSLCertVerificationError):
        ws_whoami(address, BETA_HOST, "/", trusts_alpha)
    # no SNI: the first certificate is the default
    no_sni = ssl.create_default_context(cadata=certs.alpha[0])
    no_sni.check_hostname = False
    sock = no_sni.wrap_socket(socket.create_connection(address, timeout=10))
    try:
        der = sock.getpeercert(binary_form=True)
    finally:
        sock.close()
    assert der is not None
    names = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ALPHA_HOST in names.value.get_values_for_type(x509.DNSName)
    status, body, _ = http_get(address, BETA_HOST, "/api/info", trusts_beta)
    assert status == 200 and info_name(body) == beta
