"""The controller's settings, read once from the environment.

This module owns the names, defaults and reasons of every knob; nothing else reads
`os.environ`. It does no I/O besides reading the environment mapping it is given. A bad
value raises `SettingsError` naming the variable; the entry point turns it into one line
and exit status 2.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable holds a value the controller cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True)
class Settings:
    config_url: str = "wss://wslb-config.wslb-system.svc:9443"
    """`WSLB_CONFIG_URL`: where data planes dial the config server. The chart sets it
    to its config Service's DNS name, so data planes need no cluster-wide discovery."""

    image: str = "wslb:dev"
    """`WSLB_IMAGE`: the image of the data-plane Deployments; the chart sets it to the
    controller's own image so both sides always speak the same wire version."""

    image_pull_policy: str = "IfNotPresent"
    """`WSLB_IMAGE_PULL_POLICY`: for the data-plane pods; kind-loaded images need
    IfNotPresent or Never."""

    image_pull_secrets: tuple[str, ...] = ()
    """`WSLB_IMAGE_PULL_SECRETS`: comma-separated names of pull Secrets in
    `WSLB_NAMESPACE` (the chart's `imagePullSecrets`). A pod can only use Secrets of its
    own namespace, so their credentials are copied to each LoadBalancer's namespace."""

    namespace: str = "wslb-system"
    """`WSLB_NAMESPACE`: the controller's own namespace (from the downward API)."""

    watch_namespaces: tuple[str, ...] = ()
    """`WSLB_WATCH_NAMESPACES`: comma-separated; empty watches the whole cluster, which
    is what a cluster-wide load-balancer service needs."""

    config_tls_dir: str = "/etc/wslb/config-tls"
    """`WSLB_CONFIG_TLS_DIR`: tls.crt, tls.key and ca.crt of the config server. The
    channel carries private keys, so it is never served in plain text from a pod."""

    config_host: str = "0.0.0.0"
    """`WSLB_CONFIG_HOST`: the config server's bind address."""

    config_port: int = 9443
    """`WSLB_CONFIG_PORT`: the config server's port, as in docs/resources.md."""

    http_port: int = 8080
    """`WSLB_HTTP_PORT`: /metrics, /healthz and /readyz for the kubelet and Prometheus."""

    holdoff_seconds: float = 0.1
    """`WSLB_HOLDOFF_SECONDS`: quiet time after the last change before a rebuild, so a
    burst (a rollout moving many endpoints) becomes one snapshot."""

    max_delay_seconds: float = 1.0
    """`WSLB_MAX_DELAY_SECONDS`: an unending stream of changes still rebuilds this often,
    so propagation stays bounded under churn."""

    retry_seconds: float = 5.0
    """`WSLB_RETRY_SECONDS`: after a failed status patch or apply, try again this late
    instead of hammering an API server that is already refusing."""

    log_level: str = "INFO"
    """`WSLB_LOG_LEVEL`."""

    leader_election: bool = True
    """`WSLB_LEADER_ELECTION`: hold a Lease before reconciling, so that two replicas can
    run (one leads, one stands by) and a node drain does not stop reconciling. `false`
    for a single process outside the cluster, e.g. in tests."""

    lease_name: str = "wslb-controller"
    """`WSLB_LEASE_NAME`: the coordination.k8s.io Lease in `WSLB_NAMESPACE` (the chart
    sets `<fullname>-controller`; its Role grants exactly that name)."""

    lease_duration_seconds: float = 15.0
    """`WSLB_LEASE_DURATION_SECONDS`: a standby takes over this long after the leader's
    last renewal (client-go's default), short enough for a failover, long enough that a
    slow API server does not make the leader give up."""

    pod_name: str = ""
    """`POD_NAME`: this replica's identity in the Lease and the pod the leader labels so
    that the config Service routes data planes to it (downward API); default hostname."""

    @classmethod
    def variables(cls) -> list[str]:
        """`NAME  default VALUE` for each setting, for --help."""
        defaults = cls()
        return [
            f"{name:<28} default {getattr(defaults, field)!r}"
            for field, name in ENVIRONMENT.items()
        ]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float, minimum: float = 0.0) -> float:
            value = env.get(name, "").strip()
            if not value:
                return default
            try:
                result = float(value)
            except ValueError:
                raise SettingsError(name, value, "a number") from None
            if not result >= minimum or result == float("inf"):
                raise SettingsError(name, value, f"a finite number >= {minimum:g}")
            return result

        def port(name: str, default: int) -> int:
            value = env.get(name, "").strip()
            if not value:
                return default
            if not value.isdigit() or not 0 <= int(value) <= 65535:
                raise SettingsError(name, value, "a port number 0-65535")
            return int(value)

        def choice(name: str, default: str, choices: tuple[str, ...], upper: bool) -> str:
            value = text(name, default)
            key = value.upper() if upper else value
            if key not in choices:
                raise SettingsError(name, value, "one of " + ", ".join(choices))
            return key

        def flag(name: str, default: bool) -> bool:
            value = env.get(name, "").strip().lower()
            if not value:
                return default
            if value not in {"true", "false", "1", "0", "yes", "no"}:
                raise SettingsError(name, value, "true or false")
            return value in {"true", "1", "yes"}

        def names(name: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())

        config_url = text("WSLB_CONFIG_URL", defaults.config_url)
        if not config_url.startswith(("wss://", "ws://")):
            raise SettingsError("WSLB_CONFIG_URL", config_url, "a wss:// URL")
        return cls(
            config_url=config_url,
            image=text("WSLB_IMAGE", defaults.image),
            image_pull_policy=choice(
                "WSLB_IMAGE_PULL_POLICY", defaults.image_pull_policy, PULL_POLICIES, False
            ),
            image_pull_secrets=names("WSLB_IMAGE_PULL_SECRETS"),
            namespace=text("WSLB_NAMESPACE", defaults.namespace),
            watch_namespaces=names("WSLB_WATCH_NAMESPACES"),
            config_tls_dir=text("WSLB_CONFIG_TLS_DIR", defaults.config_tls_dir),
            config_host=text("WSLB_CONFIG_HOST", defaults.config_host),
            config_port=port("WSLB_CONFIG_PORT", defaults.config_port),
            http_port=port("WSLB_HTTP_PORT", defaults.http_port),
            holdoff_seconds=number("WSLB_HOLDOFF_SECONDS", defaults.holdoff_seconds),
            max_delay_seconds=number("WSLB_MAX_DELAY_SECONDS", defaults.max_delay_seconds),
            retry_seconds=number("WSLB_RETRY_SECONDS", defaults.retry_seconds),
            log_level=choice("WSLB_LOG_LEVEL", defaults.log_level, LOG_LEVELS, True),
            leader_election=flag("WSLB_LEADER_ELECTION", defaults.leader_election),
            lease_name=text("WSLB_LEASE_NAME", defaults.lease_name),
            lease_duration_seconds=number(
                "WSLB_LEASE_DURATION_SECONDS", defaults.lease_duration_seconds, 1.0
            ),
            pod_name=text("POD_NAME", "") or socket.gethostname(),
        )


# The variable of each field (the same names from_env reads; a unit test keeps them in step).
ENVIRONMENT = {
    "config_url": "WSLB_CONFIG_URL",
    "image": "WSLB_IMAGE",
    "image_pull_policy": "WSLB_IMAGE_PULL_POLICY",
    "image_pull_secrets": "WSLB_IMAGE_PULL_SECRETS",
    "namespace": "WSLB_NAMESPACE",
    "watch_namespaces": "WSLB_WATCH_NAMESPACES",
    "config_tls_dir": "WSLB_CONFIG_TLS_DIR",
    "config_host": "WSLB_CONFIG_HOST",
    "config_port": "WSLB_CONFIG_PORT",
    "http_port": "WSLB_HTTP_PORT",
    "holdoff_seconds": "WSLB_HOLDOFF_SECONDS",
    "max_delay_seconds": "WSLB_MAX_DELAY_SECONDS",
    "retry_seconds": "WSLB_RETRY_SECONDS",
    "log_level": "WSLB_LOG_LEVEL",
    "leader_election": "WSLB_LEADER_ELECTION",
    "lease_name": "WSLB_LEASE_NAME",
    "lease_duration_seconds": "WSLB_LEASE_DURATION_SECONDS",
    "pod_name": "POD_NAME",
}
