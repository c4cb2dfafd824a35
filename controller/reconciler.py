"""The debounced rebuild loop: dirty LoadBalancers -> snapshot, owned objects, status.

This module owns when things happen. Handlers mark LoadBalancer keys dirty; when the
holdoff (holdoff.py) says so, one round rebuilds every dirty LoadBalancer from the store:
publish the snapshot to the config server when its digest moved, apply the owned objects
that changed, and have the status writer patch what changed. Nothing is built until
every watched kind has finished its initial listing, so a restarted controller never
pushes an empty or partial snapshot. A failed apply or status patch is logged, counted
and retried after `retry_seconds`.

What is built is builder.py's; what the conditions say is status.py's and how they are
written status_writer.py's; how the owned objects look is owned.py's; the Kubernetes
calls are behind cluster.py's `Cluster`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from controller import owned
from controller.builder import Build, build
from controller.cluster import Cluster
from controller.holdoff import Holdoff
from controller.metrics import ControllerMetrics
from controller.models import CA_KEY, TOKEN_KEY, Kind, key_of
from controller.pull_secrets import PullSecrets
from controller.status_writer import StatusWriter
from controller.store import Store, config_secret_name
from lbwire.session import PushSession
from lbwire.snapshot import Snapshot

log = logging.getLogger("wslb.reconciler")


class Publisher(Protocol):
    """The config server, as the reconciler sees it."""

    def publish(self, load_balancer: str, snapshot: Snapshot) -> None: ...
    def forget(self, load_balancer: str) -> None: ...
    def sessions(self, load_balancer: str) -> list[PushSession]: ...


class Reconciler:
    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        params: owned.DataPlaneParams,
        *,
        server: Publisher | None = None,
        metrics: ControllerMetrics | None = None,
        holdoff: float = 0.1,
        max_delay: float = 1.0,
        retry: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pull_secrets: PullSecrets | None = None,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.params = params
        self.server = server
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.holdoff = Holdoff(holdoff, max_delay, monotonic)
        self.status = StatusWriter(store, cluster, self.metrics, clock)
        self.pull = pull_secrets if pull_secrets is not None else PullSecrets((), "")
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._last_version = 0
        self._changed_at: dict[str, float] = {}  # lb -> wall time of its first unbuilt change
        self._awaiting: dict[str, tuple[str, float]] = {}  # lb -> (digest, changed_at)
        self._published: dict[str, Snapshot] = {}
        self._digests: dict[str, str] = {}  # of what was published
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}  # (lb, kind, name)
        self._tokens: dict[str, str] = {}  # created by us, until the watch shows the Secret
        self._apply_errors: dict[str, str] = {}  # lb -> why its owned objects were refused
        self.rounds = 0

    # ------------------------------------------------------------------ inputs

    def mark_dirty(self, keys: Iterable[str]) -> None:
        """These LoadBalancers (`ns/name`) changed; rebuild them after the holdoff."""
        now = self.clock()
        added = False
        for key in keys:
            if key:
                self._dirty.add(key)
                self._changed_at.setdefault(key, now)
                added = True
        if added:
            self.holdoff.mark()
            self._wake.set()

    def sessions_changed(self, load_balancer: str) -> None:
        """The config server's `on_change`: a data plane connected, left, acked or nacked.
        Only status can move, so no change time is recorded for propagation latency; an
        ack completing a propagation is timed here, not after the holdoff."""
        if self.server is not None:
            self._observe_propagation(load_balancer, self.server.sessions(load_balancer))
        self._dirty.add(load_balancer)
        self.holdoff.mark()
        self._wake.set()

    def mark_synced(self) -> None:
        """Every kind has listed (kopf's index pre-population is over): open the gate and
        rebuild every LoadBalancer known."""
        if self.store.synced:
            return
        for kind in Kind:
            self.store.mark_listed(kind)
        log.info("initial listing complete: %d LoadBalancers", len(self.store.load_balancers))
        self.mark_dirty(list(self.store.load_balancers))
        self._wake.set()

    @property
    def synced(self) -> bool:
        return self.store.synced

    def token_for(self, load_balancer: str) -> str | None:
        """The config server's `tokens`: the bearer token of a LoadBalancer, or None."""
        namespace, _, name = load_balancer.partition("/")
        secret = self.store.secrets.get(key_of(namespace, config_secret_name(name)))
        if secret is not None:
            token = secret.text(TOKEN_KEY)
            if token:
                return token
        return self._tokens.get(load_balancer)

    def next_version(self) -> str:
        """Milliseconds since the epoch, strictly increasing within this process."""
        self._last_version = max(int(self.clock() * 1000), self._last_version + 1)
        return str(self._last_version)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Rebuild dirty LoadBalancers forever: holdoff after the last change, at most
        `max_delay` after the first, never before the initial listing."""
        refresher = asyncio.create_task(self._refresh_pull_secrets(), name="pull secrets")
        try:
            await self._loop()
        finally:
            refresher.cancel()

    async def _refresh_pull_secrets(self) -> None:
        """Re-read the chart's pull Secrets now and then; rebuild all on a change."""
        if not self.pull.enabled:
            return
        while True:
            await self.sleep(self.pull.refresh_seconds)
            try:
                changed = await self.pull.refresh(self.cluster.read_secret)
            except Exception:
                log.exception("pull secrets not refreshed")
                continue
            if changed and self.store.synced:
                self.mark_dirty(list(self.store.load_balancers))

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.store.synced or not self._dirty:
                continue
            while (delay := self.holdoff.delay()) > 0:
                await self.sleep(delay)
            self._wake.clear()
            await self.round()

    async def round(self) -> None:
        """One rebuild of every dirty LoadBalancer (public for tests)."""
        keys, self._dirty = sorted(self._dirty), set()
        self.holdoff.fired()
        self.rounds += 1
        for key in keys:
            try:
                await self.reconcile(key)
            except Exception:
                log.exception("reconcile of %s failed", key)
                self.metrics.reconciled("error")
                self._retry_later(key)
            else:
                self.metrics.reconciled("ok")
        self.status.prune()

    def _retry_later(self, key: str) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.retry, self.sessions_changed, key)

    async def reconcile(self, key: str) -> None:
        started = time.perf_counter()
        result = build(self.store, key, self.next_version())
        published = self._publish(key, result)
        self.metrics.built(time.perf_counter() - started, published)
        sessions = self.server.sessions(key) if self.server is not None else []
        self._observe_propagation(key, sessions)
        ok = True
        if result.found and result.snapshot is not None:
            ok = await self._apply_owned(key, result) and ok
        ok = (
            await self.status.write(
                key, result, sessions, self._digests.get(key), self._apply_errors.get(key)
            )
            and ok
        )
        if not ok:
            self._retry_later(key)

    # ------------------------------------------------------------------ steps

    def _publish(self, key: str, result: Build) -> bool:
        changed_at = self._changed_at.pop(key, None)
        if not result.found:
            self._digests.pop(key, None)
            if self._published.pop(key, None) is not None and self.server is not None:
                self.server.forget(key)
            self._awaiting.pop(key, None)
            self._tokens.pop(key, None)
            self._apply_errors.pop(key, None)
            for cache_key in [k for k in self._applied if k[0] == key]:
                del self._applied[cache_key]
            self.metrics.forgotten(key)
            return False
        snapshot = result.snapshot
        if snapshot is None:
            return False
        digest = snapshot.digest()  # canonical JSON and sha256: once per build
        if self._digests.get(key) == digest:
            return False
        self._published[key] = snapshot
        self._digests[key] = digest
        if self.server is not None:
            self.server.publish(key, snapshot)
        if changed_at is not None:
            self._awaiting[key] = (digest, changed_at)
        log.info(
            "published %s version %s (%d listeners)", key, snapshot.version, len(snapshot.listeners)
        )
        return True

    def _observe_propagation(self, key: str, sessions: list[PushSession]) -> None:
        awaiting = self._awaiting.get(key)
        if awaiting is None or not sessions:
            return
        digest, changed_at = awaiting
        if all(session.applied_digest == digest for session in sessions):
            del self._awaiting[key]
            self.metrics.propagated(key, max(0.0, self.clock() - changed_at))

    async def _apply_owned(self, key: str, result: Build) -> bool:
        lb = self.store.load_balancers[key]
        namespace, name = lb.meta.namespace, lb.meta.name
        problems: list[str] = []
        try:
            secret = self.store.secrets.get(key_of(namespace, config_secret_name(name)))
            if secret is not None:
                # The watch shows it now: the store serves its token from here on, and a
                # later deletion (someone removed it) is answered by a new Secret.
                self._tokens.pop(key, None)
            if secret is None and key not in self._tokens:
                manifest = owned.config_secret(lb, self.params.ca_pem)
                token = manifest["data"][TOKEN_KEY]
                if await self.cluster.ensure_config_secret(manifest):
                    self._tokens[key] = base64.b64decode(token).decode()
                    log.info("created Secret %s/%s", namespace, config_secret_name(name))
            elif (
                secret is not None
                and self.params.ca_pem
                and secret.text(CA_KEY) != self.params.ca_pem
            ):
                await self.cluster.refresh_ca(
                    namespace, config_secret_name(name), self.params.ca_pem
                )
        except Exception as exc:
            log.exception("config Secret of %s", key)
            self.metrics.apply_errors_total.inc()
            problems.append(f"Secret {config_secret_name(name)}: {_first_line(exc)}")
        manifests = [
            owned.deployment(lb, result.ports, result.max_drain_seconds, self.params),
            owned.metrics_service(lb),
            owned.disruption_budget(lb),
        ]
        if result.ports:
            # A Service needs at least one port: none until a Listener is accepted.
            manifests.append(owned.service(lb, result.ports))
        if self.pull.enabled:
            if self.pull.stale() and await self.pull.refresh(self.cluster.read_secret):
                self.mark_dirty(list(self.store.load_balancers))  # their copies changed
            manifests.append(owned.pull_secret(lb, self.pull.config))
        for manifest in manifests:
            cache_key = (key, str(manifest["kind"]), str(manifest["metadata"]["name"]))
            if self._applied.get(cache_key) == manifest:
                continue
            try:
                await self.cluster.apply(manifest)
            except Exception as exc:
                log.exception("apply %s %s/%s", cache_key[1], namespace, cache_key[2])
                self.metrics.apply_errors_total.inc()
                problems.append(f"{cache_key[1]} {cache_key[2]}: {_first_line(exc)}")
            else:
                self._applied[cache_key] = manifest
        # The API server's refusal (say, an affinity the CRD passes through unchecked)
        # reaches the LoadBalancer's status, not only the log.
        if problems:
            self._apply_errors[key] = "; ".join(problems)
        else:
            self._apply_errors.pop(key, None)
        return not problems


def _first_line(error: BaseException, limit: int = 1024) -> str:
    """An error as one short line for a condition message."""
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]
