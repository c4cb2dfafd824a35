"""The controller's writes to the API server: the `Cluster` protocol and its lightkube
implementation.

This module owns every Kubernetes call the reconciler makes: server-side apply of the
owned objects with field manager `wslb-controller` (taking over conflicting fields),
create-once of the config Secret (its token must stay stable for as long as the
LoadBalancer lives; only `ca.crt` is refreshed, by a merge patch of that key alone),
merge patches of `status`, and reading the chart's pull Secrets by name. It decides
nothing: what to write comes from owned.py and status.py through the reconciler. Unit
tests use an in-memory `Cluster`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

from lightkube import AsyncClient, codecs
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from controller.models import CA_KEY, GROUP, VERSION, Kind

FIELD_MANAGER = "wslb-controller"

LoadBalancerResource = create_namespaced_resource(
    GROUP, VERSION, "LoadBalancer", "loadbalancers", verbs=None
)
ListenerResource = create_namespaced_resource(GROUP, VERSION, "Listener", "listeners", verbs=None)


class Cluster(Protocol):
    """The API-server writes the reconciler makes."""

    async def ensure_config_secret(self, manifest: dict[str, Any]) -> bool: ...
    async def refresh_ca(self, namespace: str, name: str, ca_pem: str) -> None: ...
    async def apply(self, manifest: dict[str, Any]) -> None: ...
    async def read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None: ...
    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> None: ...


class LightkubeCluster:
    """`Cluster` over a lightkube AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def ensure_config_secret(self, manifest: dict[str, Any]) -> bool:
        """Create the config Secret unless it exists; True when it was created. An
        existing Secret is never overwritten: its token must stay stable."""
        try:
            await self.client.create(codecs.from_dict(manifest), field_manager=FIELD_MANAGER)
        except ApiError as exc:
            if exc.status.code == 409:  # AlreadyExists
                return False
            raise
        return True

    async def refresh_ca(self, namespace: str, name: str, ca_pem: str) -> None:
        """Replace only `ca.crt` of an existing config Secret (the server's CA rotated)."""
        patch = {"data": {CA_KEY: base64.b64encode(ca_pem.encode()).decode()}}
        await self.client.patch(
            Secret,
            name,
            patch,
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER,
        )

    async def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply one manifest, taking over conflicting fields."""
        await self.client.apply(codecs.from_dict(manifest), field_manager=FIELD_MANAGER, force=True)

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """A Secret's base64 `data` (the chart's pull Secrets), None when it is absent."""
        try:
            secret = await self.client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return dict(secret.data or {})

    async def patch_status(
        self, kind: Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        resource = LoadBalancerResource if kind is Kind.LOAD_BALANCER else ListenerResource
        await self.client.patch(
            resource.Status,
            name,
            {"status": status},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
