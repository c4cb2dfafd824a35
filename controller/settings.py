"""The controller's settings, read once from the environment.

This module owns the names, defaults and reasons of every knob; nothing else reads
`os.environ`. It does no I/O besides reading the environment mapping it is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float) -> float:
            value = env.get(name, "").strip()
            return float(value) if value else default

        namespaces = tuple(
            part.strip() for part in env.get("WSLB_WATCH_NAMESPACES", "").split(",") if part.strip()
        )
        return cls(
            config_url=text("WSLB_CONFIG_URL", defaults.config_url),
            image=text("WSLB_IMAGE", defaults.image),
            image_pull_policy=text("WSLB_IMAGE_PULL_POLICY", defaults.image_pull_policy),
            namespace=text("WSLB_NAMESPACE", defaults.namespace),
            watch_namespaces=namespaces,
            config_tls_dir=text("WSLB_CONFIG_TLS_DIR", defaults.config_tls_dir),
            config_host=text("WSLB_CONFIG_HOST", defaults.config_host),
            config_port=int(number("WSLB_CONFIG_PORT", defaults.config_port)),
            http_port=int(number("WSLB_HTTP_PORT", defaults.http_port)),
            holdoff_seconds=number("WSLB_HOLDOFF_SECONDS", defaults.holdoff_seconds),
            max_delay_seconds=number("WSLB_MAX_DELAY_SECONDS", defaults.max_delay_seconds),
            retry_seconds=number("WSLB_RETRY_SECONDS", defaults.retry_seconds),
            log_level=text("WSLB_LOG_LEVEL", defaults.log_level),
        )
