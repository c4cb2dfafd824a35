"""Backend selection: which endpoint a new connection goes to.

This module owns the per-endpoint state the proxy shares with the schedulers
(`EndpointState`) and the four schedulers of a backend group: smooth weighted round
robin, weighted least connections, plain round robin and consistent hashing.

It is pure: no sockets, no asyncio, no clock. It must not decide stickiness (the proxy
consults `dataplane.sticky` first), must not count connections itself (the proxy does
`active += 1 / -= 1`) and must not probe health (`dataplane.health` sets `healthy`).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from websockets.datastructures import Headers

from lbwire.snapshot import Backends, Endpoint, HashPolicy, HashSource, Scheduler

RING_POINTS_FOR_HEAVIEST = 160
"""Virtual nodes of the heaviest endpoint on the hash ring; lighter ones get a share
proportional to their weight. 160 keeps the spread within a few percent for tens of
endpoints while a ring rebuild stays well under a millisecond."""


@dataclass(eq=False)
class EndpointState:
    """Live view of one endpoint, shared by the proxy, the health checker and the
    schedulers. Identity matters (eq=False): the same object survives a config swap so
    that `active` carries over."""

    key: str
    address: str
    port: int
    weight: int
    ready: bool = True
    draining: bool = False
    healthy: bool = True
    active: int = 0

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint) -> EndpointState:
        """A fresh state for an endpoint that just appeared in the config."""
        return cls(
            key=endpoint.key,
            address=endpoint.address,
            port=endpoint.port,
            weight=endpoint.weight,
            ready=endpoint.ready,
            draining=endpoint.draining,
        )

    def apply(self, endpoint: Endpoint) -> None:
        """Take the config fields of a kept endpoint; health and `active` are live state
        and stay."""
        self.weight = endpoint.weight
        self.ready = endpoint.ready
        self.draining = endpoint.draining

    @property
    def eligible(self) -> bool:
        """May receive a new connection."""
        return self.ready and self.healthy and not self.draining and self.weight > 0


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Headers: ...


class RequestInfo:
    """What the schedulers may look at in a client's upgrade request: the source IP, the
    request target (with its query string) and the headers, built only when a hash
    policy reads them (most handshakes never need a header object)."""

    __slots__ = ("_headers", "_request", "path", "source_ip")

    def __init__(
        self,
        source_ip: str,
        path: str,
        headers: Headers | None = None,
        *,
        request: _HasHeaders | None = None,
    ) -> None:
        self.source_ip = source_ip
        self.path = path
        self._headers = headers
        self._request = request

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = self._request.headers if self._request is not None else Headers()
        return self._headers


class Balancer:
    """Picks an endpoint for a new connection per the listener's scheduler.

    `endpoints` is read on every pick, so states the proxy adds or removes take effect
    at once. Scheduler memory (round-robin cursors, smooth-WRR credits, the hash ring)
    lives here and starts afresh with each Balancer.
    """

    def __init__(self, backends: Backends, endpoints: Mapping[str, EndpointState]) -> None:
        self._scheduler = backends.scheduler
        self._hash = backends.hash
        self._endpoints = endpoints
        self._cursor = 0
        self._credits: dict[str, int] = {}
        self._ring = HashRing(())
        self._ring_members: tuple[tuple[str, int], ...] = ()

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    def pick(self, request: RequestInfo, exclude: Collection[str] = ()) -> EndpointState | None:
        """The endpoint for a new connection, skipping keys in `exclude` (already tried
        on this connection); None when no endpoint is eligible."""
        if self._scheduler is Scheduler.HASH:
            return self._pick_hash(request, exclude)
        candidates = [
            state
            for state in self._endpoints.values()
            if state.eligible and state.key not in exclude
        ]
        if not candidates:
            return None
        if self._scheduler is Scheduler.WRR:
            return self._pick_wrr(candidates)
        if self._scheduler is Scheduler.RR:
            return self._pick_next(candidates, candidates)
        return self._pick_least_loaded(candidates)

    def _pick_least_loaded(self, candidates: list[EndpointState]) -> EndpointState:
        """The candidate with the lowest (active + 1) / weight, compared exactly; among
        equals the first at or after the rotation cursor (what `_pick_next`
        over the list of least-loaded candidates gives, in one pass and no list)."""
        count = len(candidates)
        start = self._cursor % count
        best = candidates[start]
        best_index = start
        best_load, best_weight = best.active + 1, best.weight
        for step in range(1, count):
            index = (start + step) % count
            state = candidates[index]
            load, weight = state.active + 1, state.weight
            if load * best_weight < best_load * weight:
                best, best_index, best_load, best_weight = state, index, load, weight
        self._cursor = best_index + 1
        return best

    def _pick_wrr(self, candidates: list[EndpointState]) -> EndpointState:
        """Smooth weighted round robin (nginx): every candidate earns its weight in
        credit, the richest wins and pays the total. Interleaves instead of bursting:
        weights 3:1 give a a b a, not a a a b."""
        total = 0
        best = candidates[0]
        best_credit: int | None = None
        for state in candidates:
            credit = self._credits.get(state.key, 0) + state.weight
            self._credits[state.key] = credit
            total += state.weight
            if best_credit is None or credit > best_credit:
                best, best_credit = state, credit
        self._credits[best.key] -= total
        if len(self._credits) > len(self._endpoints):
            self._credits = {
                key: credit for key, credit in self._credits.items() if key in self._endpoints
            }
        return best

    def _pick_next(
        self, candidates: list[EndpointState], preferred: list[EndpointState]
    ) -> EndpointState:
        """The first of `preferred` at or after the rotation cursor over `candidates`.
        Rotating among equals keeps ties from piling on the first endpoint
        (connections still in their handshake are not yet counted in `active`)."""
        count = len(candidates)
        start = self._cursor % count
        wanted = {id(state) for state in preferred}
        for step in range(count):
            index = (start + step) % count
            if id(candidates[index]) in wanted:
                self._cursor = index + 1
                return candidates[index]
        raise AssertionError("preferred must be a subset of candidates")

    def _pick_hash(self, request: RequestInfo, exclude: Collection[str]) -> EndpointState | None:
        members = tuple(
            (state.key, state.weight) for state in self._endpoints.values() if state.weight > 0
        )
        if members != self._ring_members:
            # Ineligible endpoints stay on the ring and are only skipped, so their keys
            # come back to them when they recover.
            self._ring = HashRing(members)
            self._ring_members = members
        for key in self._ring.walk(hash_key(self._hash, request)):
            state = self._endpoints.get(key)
            if state is not None and state.eligible and key not in exclude:
                return state
        return None


def hash_key(policy: HashPolicy, request: RequestInfo) -> str:
    """The value consistent hashing uses: the configured header or query parameter,
    or the source IP when that is missing."""
    if policy.source is HashSource.HEADER and policy.name:
        values = request.headers.get_all(policy.name)
        if values:
            return values[0]
    elif policy.source is HashSource.QUERY and policy.name:
        # Not urlsplit: it raises on client-controlled input such as "//[x?a=1".
        query = request.path.partition("?")[2].partition("#")[0]
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == policy.name:
                return value
    return request.source_ip


def _point(text: str) -> int:
    """A position on the ring, stable across processes (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring with virtual nodes proportional to weight.

    Removing an endpoint moves only the keys that mapped to it; a virtual node's
    position depends only on its endpoint key and index, so every replica and worker
    builds the same ring from the same endpoints.
    """

    def __init__(self, members: Collection[tuple[str, int]]) -> None:
        heaviest = max((weight for _, weight in members), default=0)
        points: list[tuple[int, str]] = []
        for key, weight in members:
            if weight <= 0:
                continue
            replicas = max(1, -(-RING_POINTS_FOR_HEAVIEST * weight // heaviest))
            points.extend((_point(f"{key}#{index}"), key) for index in range(replicas))
        points.sort()
        self._positions = [position for position, _ in points]
        self._keys = [key for _, key in points]
        self._distinct = len({key for _, key in points})

    def walk(self, value: str) -> Iterator[str]:
        """Distinct endpoint keys in ring order, starting at `value`'s position."""
        size = len(self._keys)
        if not size:
            return
        start = bisect.bisect_left(self._positions, _point(value))
        seen: set[str] = set()
        for step in range(size):
            key = self._keys[(start + step) % size]
            if key not in seen:
                yield key
                seen.add(key)
                if len(seen) == self._distinct:
                    return
