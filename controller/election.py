"""Leader election on a coordination.k8s.io Lease, so two controller replicas can run.

This module owns who leads. The rules are client-go's leaderelection, small enough to
read in one sitting:

    no Lease                 -> create it naming us; we lead
    Lease held by another    -> wait until its record has not changed for its duration
                                (measured on our monotonic clock, so clock skew between
                                nodes does not matter), then take it over
    Lease released ("")      -> take it at once
    we lead                  -> renew every `retry` seconds; after `renew_deadline`
                                without a successful renewal, or as soon as the Lease
                                names another holder, leadership is lost

Every write carries the resourceVersion it read, so two replicas racing for the same
Lease cannot both win. A standby never reconciles: main.py starts the watches, the
reconciler and the config server only once `acquire()` returns, and exits when `keep()`
returns (the kubelet restarts it as a standby). `release()` on a clean shutdown lets the
standby take over at once instead of after the Lease duration.

The Lease I/O is behind `Leases`; `LightkubeLeases` is the adapter. `PodLabel` marks the
leader's pod so the config Service routes data planes to it alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

log = logging.getLogger("wslb.election")

LEADER_LABEL = "wslb.io/leader"
#: The chart's selector labels that tell one release's controller pods from another's.
RELEASE_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance")


@dataclass(frozen=True)
class Record:
    """The parts of a Lease the election reads and writes."""

    holder: str = ""
    duration: int = 15
    acquired: datetime | None = None
    renewed: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None


class Leases(Protocol):
    """One Lease: read it, create it, or replace it if unchanged since read."""

    async def get(self) -> Record | None: ...
    async def create(self, record: Record) -> Record | None: ...
    async def update(self, record: Record) -> Record | None: ...


class Elector:
    def __init__(
        self,
        leases: Leases,
        identity: str,
        duration: float = 15.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.leases = leases
        self.identity = identity
        self.duration = max(1, math.ceil(duration))
        # client-go's proportions: 15 s lease, 10 s renew deadline, 2 s retry.
        self.renew_deadline = self.duration * 2 / 3
        self.retry = self.duration / 7.5
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self._observed: Record | None = None
        self._observed_at = 0.0
        self.leading = False

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        now = self.clock()
        current = await self.leases.get()
        if current is None:
            mine = Record(self.identity, self.duration, self.wall(), self.wall(), 0)
            return self._won(await self.leases.create(mine), now)
        if self._observed is None or _key(current) != _key(self._observed):
            self._observed, self._observed_at = current, now
        held_by_other = current.holder not in ("", self.identity)
        if held_by_other and now < self._observed_at + current.duration:
            self.leading = False
            return False
        ours = current.holder == self.identity
        mine = replace(
            current,
            holder=self.identity,
            duration=self.duration,
            acquired=current.acquired if ours else self.wall(),
            renewed=self.wall(),
            transitions=current.transitions + (0 if ours else 1),
        )
        return self._won(await self.leases.update(mine), now)

    def _won(self, written: Record | None, now: float) -> bool:
        if written is None:  # someone else wrote first
            return False
        self._observed, self._observed_at = written, now
        self.leading = True
        return True

    async def acquire(self) -> None:
        """Return once we lead (retrying every `retry` seconds)."""
        while not await self._attempt():
            await self.sleep(self.retry)
        log.info("%s leads (Lease held)", self.identity)

    async def keep(self) -> None:
        """Renew while we lead; return when leadership is lost."""
        last = self.clock()
        while True:
            await self.sleep(self.retry)
            # An attempt may not outlive the renew deadline: a slow API server holding a get
            # and a replace (10 s each by default) would otherwise let this replica believe it
            # leads after a standby took the expired Lease.
            remaining = max(last + self.renew_deadline - self.clock(), 0.0)
            try:
                renewed = await asyncio.wait_for(self._attempt(), timeout=remaining)
            except TimeoutError:
                log.warning("Lease renewal did not finish within the renew deadline")
                renewed = False
            if renewed:
                last = self.clock()
                continue
            other = self._observed is not None and self._observed.holder not in (
                "",
                self.identity,
            )
            if other or self.clock() - last > self.renew_deadline:
                self.leading = False
                holder = self._observed.holder if self._observed is not None else "?"
                log.error("%s lost the Lease (now held by %s)", self.identity, holder or "nobody")
                return

    async def release(self) -> None:
        """Give the Lease up (a clean shutdown): the standby need not wait it out."""
        if not self.leading:
            return
        self.leading = False
        try:
            current = await self.leases.get()
            if current is not None and current.holder == self.identity:
                await self.leases.update(replace(current, holder="", duration=1))
        except Exception as exc:  # the Lease then expires by itself
            log.warning("Lease not released: %s", exc)

    async def _attempt(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except Exception as exc:  # an API server hiccup is one failed attempt
            log.warning("Lease attempt failed: %s", exc)
            return False


def _key(record: Record) -> tuple[str, datetime | None, str | None]:
    return (record.holder, record.renewed, record.resource_version)


# --------------------------------------------------------------------------- lightkube


class LightkubeLeases:
    """`Leases` over one coordination.k8s.io/v1 Lease."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name

    async def get(self) -> Record | None:
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return _record(lease)

    async def create(self, record: Record) -> Record | None:
        try:
            lease = await self.client.create(self._lease(record))
        except ApiError as exc:
            if exc.status.code == 409:
                return None
            raise
        return _record(lease)

    async def update(self, record: Record) -> Record | None:
        try:
            lease = await self.client.replace(self._lease(record))
        except ApiError as exc:
            if exc.status.code == 409:  # the resourceVersion moved: someone else wrote
                return None
            raise
        return _record(lease)

    def _lease(self, record: Record) -> Lease:
        return Lease(
            metadata=ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resourceVersion=record.resource_version,
            ),
            spec=LeaseSpec(
                holderIdentity=record.holder,
                leaseDurationSeconds=record.duration,
                acquireTime=record.acquired,
                renewTime=record.renewed,
                leaseTransitions=record.transitions,
            ),
        )


def _record(lease: Lease) -> Record:
    spec = lease.spec or LeaseSpec()
    metadata = lease.metadata or ObjectMeta()
    return Record(
        holder=spec.holderIdentity or "",
        duration=spec.leaseDurationSeconds or 15,
        acquired=spec.acquireTime,
        renewed=spec.renewTime,
        transitions=spec.leaseTransitions or 0,
        resource_version=metadata.resourceVersion,
    )


class PodLabel:
    """The `wslb.io/leader=true` label on the leader's pod, which the chart's config
    Service selects: data planes reach the leader and only the leader. Labels stay on a
    pod across container restarts, so a replica clears its own at start, and a new
    leader clears any other pod's (an old leader cut off from the API server)."""

    def __init__(self, client: AsyncClient, namespace: str, pod: str) -> None:
        self.client = client
        self.namespace = namespace
        self.pod = pod

    async def set(self, pod: str, value: str | None) -> None:
        patch = {"metadata": {"labels": {LEADER_LABEL: value}}}
        await self.client.patch(
            Pod, pod, patch, namespace=self.namespace, patch_type=PatchType.MERGE
        )

    async def lead(self) -> None:
        """Label this pod and unlabel every other of the same release (its own pod's release
        labels scope the search: another wslb release in the namespace keeps its leader)."""
        own = await self.client.get(Pod, self.pod, namespace=self.namespace)
        own_labels = (own.metadata.labels if own.metadata is not None else None) or {}
        release = {key: own_labels[key] for key in RELEASE_LABELS if key in own_labels}
        async for pod in self.client.list(
            Pod, namespace=self.namespace, labels={**release, LEADER_LABEL: "true"}
        ):
            name = pod.metadata.name if pod.metadata is not None else None
            if name and name != self.pod:
                await self.set(name, None)
        await self.set(self.pod, "true")

    async def stand_by(self) -> None:
        await self.set(self.pod, None)
