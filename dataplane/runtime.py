"""The running data plane: applies whole snapshots atomically and shuts down gracefully.

`apply()` validates everything that can fail (certificates, new sockets) before it
changes anything, then swaps: kept listeners take their new config in place, new ones
start accepting, removed ones stop accepting and drain. A refused snapshot leaves the
old one serving. `shutdown()` follows uvicorn's order: not ready, stop accepting,
drain with a bound, then close what is left with 1001.

It must not read files or talk to a controller: `cli.py` and the config client feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dataplane.access_log import AccessLog, AccessLogPolicy
from dataplane.admission import Capacity
from dataplane.frames import CLOSE_GOING_AWAY
from dataplane.listener import ListenerRuntime
from dataplane.metrics import Metrics, TrafficTotals
from dataplane.process_metrics import TlsFailures
from dataplane.relay import CLOSE_TIMEOUT
from dataplane.tls import CertificateSet
from lbwire.errors import ConfigError, FieldProblem
from lbwire.snapshot import Listener, Snapshot

log = logging.getLogger("wslb.runtime")


@dataclass
class _Prepared:
    config: Listener
    certificates: CertificateSet | None
    sock: socket.socket | None  # a new socket when the listener is new or rebinds
    bind_at_commit: bool = False


def bind_socket(address: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket. SO_REUSEPORT only with several workers: otherwise a second
    data plane started by mistake would silently share the port instead of failing.
    An IPv6 socket is dual-stack (IPV6_V6ONLY off) whatever the host's bindv6only says,
    so a listener on `::` takes IPv4 clients too."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Runtime:
    def __init__(
        self,
        metrics: Metrics | None = None,
        workers: int = 1,
        access_log: AccessLog | None = None,
        worker_index: int = 0,
        tls_failures: TlsFailures | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.workers = workers
        self.worker_index = worker_index  # which share of the limits this process enforces
        self.tls_failures = tls_failures  # counts failed TLS handshakes by listener and reason
        self.access_log = access_log  # None: no access log (tests, embedding)
        self.snapshot: Snapshot | None = None
        self.listeners: dict[str, ListenerRuntime] = {}
        self.retired: set[ListenerRuntime] = set()
        self.capacity: Capacity | None = None
        self.shutting_down = False
        self._lock = asyncio.Lock()
        self.metrics.watch_traffic(self._traffic)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None and not self.shutting_down

    def _traffic(self) -> Iterator[tuple[str, TrafficTotals]]:
        """Live and draining listeners, summed by name: a retired listener's traffic is
        reported until it is reaped, then all its series go at once."""
        totals: dict[str, TrafficTotals] = {}
        for listener in [*self.listeners.values(), *self.retired]:
            current = listener.traffic()
            known = totals.get(listener.name)
            if known is not None:
                known.add(current)
            else:
                totals[listener.name] = current
        yield from totals.items()

    async def apply(self, snapshot: Snapshot) -> None:
        """Swap to `snapshot` or raise ConfigError and keep the current one."""
        async with self._lock:
            if self.shutting_down:
                raise ConfigError("runtime", [FieldProblem("(root)", "shutting down")])
            try:
                prepared = self._prepare(snapshot)
            except ConfigError:
                self.metrics.config_reloads.labels("rejected").inc()
                raise
            await self._commit(snapshot, prepared)
            self.metrics.config_reloads.labels("applied").inc()

    def _port_owner(self, port: int) -> ListenerRuntime | None:
        return next((item for item in self.listeners.values() if item.config.port == port), None)

    def _prepare(self, snapshot: Snapshot) -> list[_Prepared]:
        problems: list[FieldProblem] = []
        prepared: list[_Prepared] = []
        for index, config in enumerate(snapshot.listeners):
            certificates = None
            if config.tls is not None:
                try:
                    certificates = CertificateSet(config.tls)
                except Exception as exc:  # ssl.SSLError, ValueError, OSError
                    problems.append(
                        FieldProblem(f"listeners[{index}].tls", f"unusable certificate: {exc}")
                    )
                    continue
            current = self.listeners.get(config.name)
            sock = None
            rebind = current is None or current.needs_rebind(config)
            if rebind and self._port_owner(config.port) is not None:
                # Our own listener holds the port (renamed or changed protocol): it is
                # retired first at commit time, then the port is bound again.
                prepared.append(_Prepared(config, certificates, None, bind_at_commit=True))
                continue
            if rebind:
                try:
                    sock = bind_socket(config.address, config.port, self.workers > 1)
                except OSError as exc:
                    problems.append(
                        FieldProblem(
                            f"listeners[{index}].port",
                            f"cannot listen on {config.address}:{config.port}: {exc.strerror}",
                        )
                    )
                    continue
            prepared.append(_Prepared(config, certificates, sock))
        if problems:
            for item in prepared:
                if item.sock is not None:
                    item.sock.close()
            raise ConfigError(f"snapshot version {snapshot.version}", problems)
        return prepared

    async def _commit(self, snapshot: Snapshot, prepared: list[_Prepared]) -> None:
        limits = snapshot.load_balancer.limits
        if self.capacity is None:
            self.capacity = Capacity(limits, self.workers, self.worker_index)
        else:
            self.capacity.update(limits)
        if self.access_log is not None:
            self.access_log.set_policies(
                {
                    config.name: AccessLogPolicy(
                        enabled=config.access_log.enabled,
                        sample_rate=config.access_log.sample_rate,
                        include_query=config.access_log.include_query,
                    )
                    for config in snapshot.listeners
                }
            )
        kept: dict[str, ListenerRuntime] = {}
        for item in prepared:
            if item.bind_at_commit:
                owner = self._port_owner(item.config.port)
                if owner is not None:
                    self._retire(owner)
                    del self.listeners[owner.name]
                try:
                    item.sock = bind_socket(item.config.address, item.config.port, self.workers > 1)
                except OSError as exc:
                    log.error(
                        "listener %s: cannot bind port %d after retiring its old socket: %s",
                        item.config.name,
                        item.config.port,
                        exc,
                    )
                    continue
            current = self.listeners.get(item.config.name)
            if current is not None and item.sock is None:
                current.update(item.config, item.certificates)
                kept[item.config.name] = current
                continue
            if current is not None:
                self._retire(current)
            runtime = ListenerRuntime(
                item.config,
                self.capacity,
                self.metrics,
                item.certificates,
                self.access_log,
                self.tls_failures,
            )
            assert item.sock is not None
            await runtime.start(item.sock)
            kept[item.config.name] = runtime
            log.info(
                "listener %s %s on %s:%d",
                item.config.name,
                item.config.protocol.value,
                item.config.address,
                item.config.port,
            )
        for name, current in self.listeners.items():
            if name not in kept:
                self._retire(current)
        self.listeners = kept
        previous = self.snapshot
        self.snapshot = snapshot
        if previous is not None:
            with contextlib.suppress(KeyError):
                self.metrics.config_info.remove(previous.version, previous.digest()[:12])
        self.metrics.config_info.labels(snapshot.version, snapshot.digest()[:12]).set(1)
        self.metrics.config_applied_timestamp.set(time.time())
        self.metrics.ready.set(1 if self.ready else 0)
        log.info("applied config version %s (%d listeners)", snapshot.version, len(kept))

    def _retire(self, listener: ListenerRuntime) -> None:
        log.info(
            "listener %s leaves the config; draining %d connections",
            listener.name,
            len(listener.connections),
        )
        listener.retire()
        self.retired.add(listener)
        asyncio.get_running_loop().create_task(self._reap(listener))

    async def _reap(self, listener: ListenerRuntime) -> None:
        """Close a retired listener's server once its connections are gone."""
        deadline = listener.config.drain_timeout_seconds + CLOSE_TIMEOUT + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await listener.empty.wait()
        await listener.close()
        self.retired.discard(listener)
        live = self.listeners.get(listener.name)
        if live is not None:
            # Same name again (rebound): its counters must not go backwards.
            live.totals.add(listener.totals)
        elif not any(other.name == listener.name for other in self.retired):
            self.metrics.forget_listener(listener.name)
            if self.tls_failures is not None:
                self.tls_failures.forget(listener.name)

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Not ready, stop accepting, drain up to the drain timeout, then 1001 to the rest."""
        self.shutting_down = True
        self.metrics.ready.set(0)
        everything = [*self.listeners.values(), *self.retired]
        longest = 0.0
        for listener in everything:
            timeout = (
                listener.config.drain_timeout_seconds if drain_timeout is None else drain_timeout
            )
            longest = max(longest, timeout)
            listener.retire(timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(longest + CLOSE_TIMEOUT + 1):
                for listener in everything:
                    await listener.empty.wait()
        for listener in everything:
            for connection in list(listener.connections):
                connection.close(CLOSE_GOING_AWAY, "going away")
        # Give the Close frames a moment to reach the peers, then cut what is left.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                for listener in everything:
                    await listener.empty.wait()
        for listener in everything:
            for connection in list(listener.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await listener.close()
        self.retired.clear()
