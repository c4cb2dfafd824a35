"""Long-lived WebSocket clients for the availability tests: each stays connected, checks its
echo every `interval`, and when closed records the close code and reconnects.

A client knows several entry URLs (one per node, as a client of a multi-address service or
an external load balancer does) and reconnects through the other entries first. The entry
names the data plane that relays a connection: the data-plane Service has
`externalTrafficPolicy: Local`, so a node's NodePort reaches only that node's data plane.
(The address the backend sees would not tell: traffic between nodes is masqueraded.)
Every wait is bounded; `stop()` ends the thread within a few seconds.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

#: How long one connection attempt through one entry may take: a node with no ready local
#: data plane drops the SYN (externalTrafficPolicy Local), so the attempt times out.
OPEN_TIMEOUT = 3.0


@dataclass
class Connection:
    """One connection of a client: where it entered (the node of the data plane that relayed
    it), how it ended, and how long the client was without a connection before it opened."""

    entry: str
    opened_at: float
    gap_seconds: float | None  # None for the first connection
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""


@dataclass
class Client:
    """A client thread; `connections` is its history, the last one possibly still open."""

    name: str
    entries: dict[str, str]  # entry name (node) -> URL
    prefer: str  # entry to try first for the first connection
    interval: float = 0.3
    connections: list[Connection] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _connected: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=OPEN_TIMEOUT * len(self.entries) + 15)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def current(self) -> Connection | None:
        if self.connections and self.connections[-1].closed_at is None:
            return self.connections[-1]
        return None

    def closes(self) -> list[Connection]:
        return [c for c in self.connections if c.closed_at is not None]

    # -- the thread ------------------------------------------------------------------------

    def _order(self) -> list[str]:
        """Entries to try: the preferred one first, or the one last used last."""
        names = sorted(self.entries)
        if not self.connections:
            return [self.prefer] + [n for n in names if n != self.prefer]
        last = self.connections[-1].entry
        return [n for n in names if n != last] + [last]

    def _open(self, since: float | None) -> ClientConnection | None:
        for entry in self._order():
            if self._stop.is_set():
                return None
            try:
                ws = connect(
                    self.entries[entry], open_timeout=OPEN_TIMEOUT, close_timeout=2, legacy=True
                )
            except (OSError, TimeoutError, InvalidHandshake):
                continue
            try:  # an echo proves the data plane relays (a SYN-ACK alone does not)
                ws.send("hello")
                if ws.recv(timeout=5) != "hello":
                    raise TimeoutError
            except (ConnectionClosed, TimeoutError):
                ws.close()
                continue
            now = time.monotonic()
            self.connections.append(
                Connection(
                    entry=entry,
                    opened_at=now,
                    gap_seconds=None if since is None else now - since,
                )
            )
            self._connected.set()
            return ws
        return None

    def _run(self) -> None:
        since: float | None = None
        while not self._stop.is_set():
            ws = self._open(since)
            if ws is None:
                self._stop.wait(0.1)
                continue
            since = self._hold(ws)

    def _hold(self, ws: ClientConnection) -> float | None:
        """Echo until closed or stopped; returns when the connection was lost (or None)."""
        record = self.connections[-1]
        n = 0
        try:
            while not self._stop.wait(self.interval):
                n += 1
                ws.send(f"{self.name} {n}")
                answer = ws.recv(timeout=10)
                if answer != f"{self.name} {n}":
                    self.errors.append(f"echo {n} answered {answer!r}")
        except ConnectionClosed:
            pass
        except TimeoutError:
            self.errors.append(f"no echo within 10 s on {record.entry}")
        finally:
            if not self._stop.is_set() or ws.close_code is not None:
                self._connected.clear()
                record.closed_at = time.monotonic()
                record.close_code = ws.close_code
                record.close_reason = ws.close_reason or ""
            ws.close()
        return record.closed_at


def start_clients(count: int, entries: dict[str, str], prefix: str = "client") -> list[Client]:
    """`count` clients, spread over the entries in turn; waits until every one connected."""
    names = sorted(entries)
    clients = [Client(f"{prefix}-{i}", entries, prefer=names[i % len(names)]) for i in range(count)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 60
    while not all(c.connected for c in clients):
        if time.monotonic() > deadline:
            stop_clients(clients)
            raise TimeoutError(
                f"{sum(not c.connected for c in clients)} of {count} clients never connected"
            )
        time.sleep(0.1)
    return clients


def stop_clients(clients: Sequence[Client]) -> None:
    for client in clients:
        client._stop.set()
    for client in clients:
        client.stop()


def gaps(clients: Sequence[Client]) -> list[float]:
    """Seconds each reconnection took, from the close to the next open connection."""
    return [
        c.gap_seconds for client in clients for c in client.connections if c.gap_seconds is not None
    ]


def describe(values: Sequence[float]) -> str:
    if not values:
        return "none"
    return (
        f"{len(values)} reconnects: median {statistics.median(values):.2f}s, max {max(values):.2f}s"
    )
