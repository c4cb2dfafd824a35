"""Access log: one line per WebSocket connection when it ends, one per refused handshake,
one per plain HTTP request (`kind=http`).

The listener hands each ended connection's `relay.ConnectionRecord` (the one record type
of a connection's end), and each answered HTTP request's `RequestRecord`, to
`AccessLog.record()`, which only decides sampling and batches
it; every FLUSH_DELAY the batch goes to a bounded queue, and rendering and writing happen
on a writer thread, so a slow log pipe never stalls the event loop. When the queue is
full the batch is dropped and counted (`..._access_log_dropped_total`) rather than
blocking. Lines are logfmt (`--log-format text`) or one JSON object each (`json`);
client-controlled fields (Host, path, X-Forwarded-For) are escaped and truncated, so a
request cannot forge a line. The path loses its query string unless the listener asks to
keep it (queries carry tokens). This module must not decide anything about the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dataplane.log_lines import (
    clip,
    connection_line,
    request_summary,
    text,
    timestamp,
)
from dataplane.relay import ConnectionRecord
from lbwire.logs import LogFormat


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One plain HTTP request on a keep-alive connection, complete once answered.

    `status` is what the client got (0: the client left before any answer); `rule` the
    forwarding rule that chose the group ("default" when none); bytes are body bytes
    each way; `rejection` the label when the load balancer answered itself."""

    client: str
    client_port: int
    listener: str
    rule: str
    backend: str
    status: int
    rejection: str
    started: float
    duration: float
    bytes_c2b: int
    bytes_b2c: int
    method: str
    host: str
    target: str
    forwarded_for: str


Record = ConnectionRecord | RequestRecord

BATCH_MAX = 512  # records batched on the loop before the writer thread gets them at once
QUEUE_BATCHES = 16  # batches waiting for the writer thread before new ones are dropped
FLUSH_DELAY = 0.05  # seconds a record may wait on the loop: lines lag at most this
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class AccessLogPolicy:
    """A listener's access-log switches (defaults: every connection, no query string)."""

    enabled: bool = True
    """On by default: an operator's first question after an incident is "who connected"."""
    sample_rate: float = 1.0
    """Fraction of lines written, 0 < rate <= 1; for listeners with very many short sockets."""
    include_query: bool = False
    """Off by default: query strings often carry tokens that must not land in logs."""

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], not {self.sample_rate}")


_clip = clip
_timestamp = timestamp


def request_fields(
    record: RequestRecord, include_query: bool, worker: int | None
) -> dict[str, Any]:
    """The ordered fields of one HTTP request's line (absent: None)."""
    path = record.target if include_query else record.target.split("?", 1)[0]
    out: dict[str, Any] = {
        "time": _timestamp(record.started + record.duration),
        "kind": "http",
        "listener": record.listener,
        "client_addr": record.client,
        "client_port": record.client_port,
        "forwarded_for": _clip(record.forwarded_for),
        "host": _clip(record.host),
        "method": _clip(record.method),
        "path": _clip(path),
        "rule": record.rule,
        "backend": record.backend or None,
        "status": record.status,
        "reason": record.rejection or None,
        "duration_seconds": round(record.duration, 6),
        "bytes_from_client": record.bytes_c2b,
        "bytes_to_client": record.bytes_b2c,
    }
    if worker is not None:
        out["worker"] = worker
    return out


def fields(record: ConnectionRecord, include_query: bool, worker: int | None) -> dict[str, Any]:
    """The ordered fields of one line; the same keys in text and JSON (absent: None)."""
    method, host, path, forwarded_for = request_summary(record)
    if not include_query:
        path = path.split("?", 1)[0]
    out: dict[str, Any] = {
        "time": _timestamp(record.started + record.duration),
        "kind": "websocket",  # "http" once plain requests are proxied
        "listener": record.listener,
        "client_addr": record.client,
        "client_port": record.client_port,
        "forwarded_for": _clip(forwarded_for),
        "host": _clip(host),
        "method": method or None,
        "path": _clip(path),
        "backend": record.backend or None,
        "status": record.status,
        "reason": record.rejection or None,
        "duration_seconds": round(record.duration, 6),
        "bytes_from_client": record.bytes_c2b,
        "bytes_to_client": record.bytes_b2c,
        "messages_from_client": record.messages_c2b,
        "messages_to_client": record.messages_b2c,
        "close_code": record.close_code or None,
        "closed_by": record.closed_by or None,
    }
    if worker is not None:
        out["worker"] = worker
    return out


_text = text


def render(record: Record, include_query: bool, worker: int | None, fmt: LogFormat) -> str:
    """One line, newline included. Text is one f-string (a dict and a loop per line cost
    twice as much) with the same keys, in the same order, as `fields()` gives JSON."""
    if isinstance(record, RequestRecord):
        items = request_fields(record, include_query, worker)
        if fmt is LogFormat.JSON:
            return json.dumps(items, separators=(",", ":")) + "\n"
        return " ".join(f"{key}={_text(_value(value))}" for key, value in items.items()) + "\n"
    if fmt is LogFormat.JSON:
        return json.dumps(fields(record, include_query, worker), separators=(",", ":")) + "\n"
    return connection_line(record, include_query, worker)


def _value(value: Any) -> str | None:
    return None if value is None else str(value)


class AccessLog:
    """Samples and batches records on the loop; writes their lines on its own thread."""

    def __init__(
        self,
        fmt: LogFormat = LogFormat.TEXT,
        stream: IO[str] | None = None,
        worker: int | None = None,
        rng: Callable[[], float] = random.random,
        queue_batches: int = QUEUE_BATCHES,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout
        self.worker = worker
        self.rng = rng
        self.batch_max = batch_max
        self.policies: dict[str, AccessLogPolicy] = {}
        self.default = AccessLogPolicy()
        self.written = 0
        self.dropped = 0  # queue full; counted on the loop thread only
        self.failed = 0  # the stream refused a write; counted on the writer thread only
        self._batch: list[tuple[Record, bool]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._queue: queue.Queue[list[tuple[Record, bool]] | None] = queue.Queue(queue_batches)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ config

    def set_policies(self, policies: dict[str, AccessLogPolicy]) -> None:
        """Every listener's switches after a config swap; a listener not named gets the default."""
        self.policies = dict(policies)

    # ------------------------------------------------------------------ event loop side

    def record(self, record: Record) -> None:
        """Called on the loop at the end of a connection or an HTTP request: O(1), never
        blocks, never raises.

        Records wait in a batch for up to FLUSH_DELAY: waking the writer thread once per
        line cost ~100 us of GIL hand-over each, more than the handshake itself."""
        policy = self.policies.get(record.listener, self.default)
        if not policy.enabled or (policy.sample_rate < 1.0 and self.rng() >= policy.sample_rate):
            return
        batch = self._batch
        batch.append((record, policy.include_query))
        if len(batch) >= self.batch_max:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): hand it over at once
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Hand the waiting records to the writer thread (on the loop thread)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._batch
        if not batch:
            return
        self._batch = []
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self.dropped += len(batch)

    # ------------------------------------------------------------------ writer thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="wslb-access-log", daemon=True)
            self._thread.start()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is queued, then stop the thread (bounded by `timeout`). Call `flush()`
        on the loop first when records may still wait there."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _write(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            lines = [
                render(record, include_query, self.worker, self.fmt)
                for record, include_query in batch
            ]
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
                self.written += len(lines)
            except (OSError, ValueError):
                self.failed += len(lines)  # a closed or broken stream: count, go on


class AccessLogCollector(Collector):
    """Lines written and dropped, read at scrape time from the AccessLog's counters."""

    def __init__(self, access_log: AccessLog) -> None:
        self.access_log = access_log

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "wslb_dataplane_access_log_lines",
            "Access-log lines written.",
            value=self.access_log.written,
        )
        dropped = CounterMetricFamily(
            "wslb_dataplane_access_log_dropped",
            "Access-log lines lost: the writer fell behind (queue_full) or its stream failed.",
            labels=["cause"],
        )
        dropped.add_metric(["queue_full"], self.access_log.dropped)
        dropped.add_metric(["write_error"], self.access_log.failed)
        yield dropped
