"""The chart's image pull secrets, copied into each LoadBalancer's namespace.

A pod can only pull with Secrets of its own namespace, and the chart's `imagePullSecrets`
live in the controller's. So the controller reads them (GET by name, no watch: the Role
grants `get` on exactly those names) and owns one Secret `<lb>-wslb-pull` per
LoadBalancer holding their registry credentials merged (the first Secret naming a
registry wins, as the kubelet tries them in order). It re-reads them at most every
`refresh_seconds`; a change reaches every LoadBalancer's copy on the next round.

This module owns the reading and merging; owned.py shapes the manifest and the
reconciler applies it. A Secret that cannot be read or parsed is logged and left out:
the data planes then pull with what remains (images already on the node still run).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("wslb.pull_secrets")

DOCKER_CONFIG_KEY = ".dockerconfigjson"
REFRESH_SECONDS = 60.0

SecretReader = Callable[[str, str], Awaitable[Mapping[str, str] | None]]
"""(namespace, name) -> the Secret's base64 `data`, or None when it does not exist."""


def merge(configs: Sequence[Mapping[str, Any]]) -> str:
    """One `.dockerconfigjson` holding every registry of `configs`, first one wins."""
    auths: dict[str, Any] = {}
    for config in configs:
        for registry, entry in (config.get("auths") or {}).items():
            auths.setdefault(str(registry), entry)
    return json.dumps({"auths": auths}, sort_keys=True, separators=(",", ":"))


def parse(data: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The decoded `.dockerconfigjson` of a Secret's data, or None."""
    raw = data.get(DOCKER_CONFIG_KEY)
    if raw is None:
        return None
    try:
        config = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return None
    return config if isinstance(config, dict) else None


class PullSecrets:
    def __init__(
        self,
        names: Sequence[str],
        namespace: str,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = tuple(names)
        self.namespace = namespace
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.config = merge([])
        self._read_at: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.names)

    def stale(self) -> bool:
        return self._read_at is None or self.clock() - self._read_at >= self.refresh_seconds

    async def refresh(self, read: SecretReader) -> bool:
        """Read the Secrets again; True when the merged credentials changed."""
        configs = []
        for name in self.names:
            try:
                data = await read(self.namespace, name)
            except Exception as exc:
                log.warning("pull secret %s/%s not read: %s", self.namespace, name, exc)
                continue
            config = parse(data) if data is not None else None
            if config is None:
                log.warning(
                    "pull secret %s/%s: missing, or no valid %s",
                    self.namespace,
                    name,
                    DOCKER_CONFIG_KEY,
                )
                continue
            configs.append(config)
        self._read_at = self.clock()
        merged = merge(configs)
        changed = merged != self.config
        self.config = merged
        return changed
