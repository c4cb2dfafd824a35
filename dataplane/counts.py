"""The data plane's counts as plain numbers, added to on the connection and request paths.

Compiled with mypyc (setup.py): the end of every connection and every request adds to
these without a lock, a label lookup or a Python call into prometheus_client;
metrics.py's collectors turn them into Prometheus series at scrape time. Nothing here
knows Prometheus.
"""

from __future__ import annotations

from typing import Final

HANDSHAKE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600, 86400)

_KNOWN_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}
)


REQUEST_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})


def method_class(method: bytes) -> str:
    """An HTTP method as a bounded label: the common ones by name, the rest `other`."""
    return method.decode("ascii") if method in _METHODS else "other"


def fold_close_code(code: int) -> int:
    """A close code folded as its label folds it, kept as a number on the connection path
    (`folded_label` names it at scrape time): standard codes as themselves, 3000 and 4000
    for their application ranges, -1 for the rest."""
    if code in _KNOWN_CLOSE_CODES:
        return code
    if 3000 <= code < 4000:
        return 3000
    if 4000 <= code < 5000:
        return 4000
    return -1


def folded_label(folded: int) -> str:
    """The close-code label of a `fold_close_code` result."""
    if folded == 3000:
        return "3xxx"
    if folded == 4000:
        return "4xxx"
    return str(folded) if folded in _KNOWN_CLOSE_CODES else "other"


def bucket(bounds: tuple[float, ...], value: float) -> int:
    """bisect_left(bounds, value), as a compiled loop (the C call cost more than the scan
    of a dozen bounds)."""
    index = 0
    for bound in bounds:
        if bound >= value:
            return index
        index += 1
    return index


def close_code_label(code: int) -> str:
    """Standard codes as themselves; application ranges folded so the label stays bounded."""
    if code in _KNOWN_CLOSE_CODES:
        return str(code)
    if 3000 <= code < 4000:
        return "3xxx"
    if 4000 <= code < 5000:
        return "4xxx"
    return "other"


class TrafficTotals:
    """Message and byte counts of one listener, per direction (c2b: client to backend)."""

    __slots__ = (
        "backend_connections",
        "bytes_b2c",
        "bytes_c2b",
        "connections",
        "messages_b2c",
        "messages_c2b",
        "pool_idle",
    )

    def __init__(self) -> None:
        self.messages_c2b = 0
        self.messages_b2c = 0
        self.bytes_c2b = 0
        self.bytes_b2c = 0
        self.connections = 0  # open now (handshaking or tunnelling)
        self.backend_connections: dict[str, int] = {}  # open or opening
        self.pool_idle = 0  # idle HTTP backend connections kept for reuse

    def copy(self) -> TrafficTotals:
        totals = TrafficTotals()
        totals.add(self)
        return totals

    def add(self, other: TrafficTotals) -> None:
        self.messages_c2b += other.messages_c2b
        self.messages_b2c += other.messages_b2c
        self.bytes_c2b += other.bytes_c2b
        self.bytes_b2c += other.bytes_b2c
        self.connections += other.connections
        self.pool_idle += other.pool_idle
        for key, count in other.backend_connections.items():
            self.backend_connections[key] = self.backend_connections.get(key, 0) + count


class RequestCounts:
    """One listener's plain HTTP requests as plain numbers: the request path adds to them
    (no lock, no label lookup: `add`, or the same steps inlined in the compiled
    http_proxy) and `RequestCollector` turns them into the request counter and the
    duration histogram at scrape time."""

    __slots__ = ("buckets", "requests", "sums")

    def __init__(self) -> None:
        # (rule, method as received, status // 100): the method label is chosen at scrape
        # time (llhttp knows a fixed set of methods, so the keys stay bounded)
        self.requests: dict[tuple[str, bytes, int], int] = {}
        # per rule: requests per REQUEST_BUCKETS slot (not cumulative), +Inf last
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def add(self, rule: str, method: bytes, status: int, duration: float) -> None:
        key = (rule, method, status // 100)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        buckets = self.buckets.get(rule)
        if buckets is None:
            buckets = self.buckets[rule] = [0] * (len(REQUEST_BUCKETS) + 1)
            self.sums[rule] = 0.0
        buckets[bucket(REQUEST_BUCKETS, duration)] += 1
        self.sums[rule] += duration


class ConnectionCounts:
    """One listener's per-connection counts as plain numbers: the handshake and the end of
    every connection add to them (no lock, no label lookup; a Prometheus child's inc or
    observe was ~20k instructions per handshake) and `ConnectionCollector` turns them into
    the upgrade and close counters and the two duration histograms at scrape time."""

    __slots__ = ("closes", "duration_sum", "durations", "handshake_sum", "handshakes", "upgrades")

    def __init__(self) -> None:
        self.upgrades: dict[int, int] = {}  # answers to upgrade requests, by status
        # per HANDSHAKE_BUCKETS / DURATION_BUCKETS slot (not cumulative), +Inf last
        self.handshakes = [0] * (len(HANDSHAKE_BUCKETS) + 1)
        self.handshake_sum = 0.0
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        # (close code folded by fold_close_code, initiator): named at scrape time
        self.closes: dict[tuple[int, str], int] = {}

    def opened(self, handshake_seconds: float) -> None:
        """A tunnel opened: the client got the backend's 101."""
        upgrades = self.upgrades
        upgrades[101] = upgrades.get(101, 0) + 1
        self.handshakes[bucket(HANDSHAKE_BUCKETS, handshake_seconds)] += 1
        self.handshake_sum += handshake_seconds

    def answered(self, status: int) -> None:
        """An upgrade request answered with another status (refused, or the backend's own)."""
        self.upgrades[status] = self.upgrades.get(status, 0) + 1

    def closed(self, code: int, initiator: str, seconds: float) -> None:
        """A tunnel ended after `seconds` (from the 101), closed first by `initiator`."""
        key = (fold_close_code(code), initiator)
        closes = self.closes
        closes[key] = closes.get(key, 0) + 1
        self.durations[bucket(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
