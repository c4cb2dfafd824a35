"""The benchmark's load client: picows (Cython frames) on uvloop, one process, one core.

Modes, each bounded by a duration and, where it loops, a count:

- `handshake`: `--connections` loops, each opens a WebSocket (TCP, optional TLS, upgrade),
  sends Close, waits for the server to end TCP, and starts again.
- `echo`: `--connections` open connections, each with one `--size`-byte binary message
  in flight (ping-pong); every round trip's latency is kept.
- `bulk`: `--connections` connections, each keeping `--window` messages of `--size`
  bytes in flight; counts bytes echoed back.
- `idle`: opens `--connections` connections, prints `{"event": "ready", ...}`, holds
  them until a line arrives on stdin (or `--hold` seconds), then closes them all.

After `--warmup` seconds the measurement window opens: completions are counted and the
CPU time (utime + stime) of every `--watch NAME=PID[,PID]` process tree and of this
client is read at the window's start and end. The result is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.procstat import raise_nofile, total_cpu_seconds, total_system_seconds, tree

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
OPEN_CONCURRENCY = 200  # connections being opened at once (idle, echo, bulk setup)


@dataclass
class Run:
    """Shared state of one measurement: the window, the counters, the latencies."""

    watch: dict[str, list[int]]
    measuring: bool = False
    running: bool = True
    count: int = 0
    bytes: int = 0
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    stopped: float = 0.0
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)

    def _cpu(self) -> dict[str, float]:
        sample = {name: total_cpu_seconds(pids) for name, pids in self.watch.items()}
        for name, pids in self.watch.items():
            sample[f"{name}_system"] = total_system_seconds(pids)
        times = os.times()
        sample["loadgen"] = times.user + times.system
        return sample

    def open_window(self) -> None:
        self.cpu_start = self._cpu()
        self.started = time.monotonic()
        self.measuring = True

    def close_window(self) -> None:
        self.measuring = False
        self.stopped = time.monotonic()
        self.cpu_end = self._cpu()

    def error(self, exc: BaseException | str) -> None:
        self.errors[exc if isinstance(exc, str) else type(exc).__name__] += 1

    def result(self) -> dict[str, Any]:
        wall = max(self.stopped - self.started, 1e-9)
        cpu = {name: self.cpu_end[name] - self.cpu_start.get(name, 0.0) for name in self.cpu_end}
        out: dict[str, Any] = {
            "count": self.count,
            "bytes": self.bytes,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "errors": dict(self.errors),
        }
        if self.latencies_ns:
            ordered = sorted(self.latencies_ns)

            def pct(q: float) -> float:
                return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

            out["latency_us"] = {
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "max": ordered[-1] / 1000.0,
                "mean": sum(ordered) / len(ordered) / 1000.0,
                "samples": len(ordered),
            }
        return out


# ------------------------------------------------------------------------ listeners


class Quiet(WSListener):
    """Ignores data; on the server's Close it waits for the server to end TCP."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        pass


class Pinger(WSListener):
    """Keeps `window` messages in flight; each echo is counted and replaced."""

    def __init__(self, run: Run, payload: bytes, window: int, keep_latency: bool) -> None:
        self.run = run
        self.payload = payload
        self.window = window
        self.keep_latency = keep_latency
        self.sent: list[int] = []  # send times of messages in flight, oldest first
        self.transport: WSTransport | None = None
        self.drained: asyncio.Future[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        assert self.transport is not None
        for _ in range(self.window):
            self.sent.append(time.perf_counter_ns())
            self.transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.BINARY:
            return
        now = time.perf_counter_ns()
        sent = self.sent.pop(0) if self.sent else now
        run = self.run
        if run.measuring:
            run.count += 1
            run.bytes += frame.payload_size
            if self.keep_latency:
                run.latencies_ns.append(now - sent)
        if run.running:
            self.sent.append(now)
            transport.send(WSMsgType.BINARY, self.payload)
        elif not self.sent and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


# ------------------------------------------------------------------------ helpers


def client_tls() -> ssl.SSLContext:
    """TLS 1.3 only, no certificate check (a self-signed loopback certificate); every
    connection is a full handshake since no session is offered for resumption."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


async def close_gracefully(transport: WSTransport) -> None:
    if transport.is_disconnected:
        return
    try:
        transport.send_close(WSCloseCode.OK)
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await transport.wait_disconnected()
    except Exception:  # closing is best effort at the end of a run
        transport.disconnect(graceful=False)


async def open_many(
    url: str,
    count: int,
    factory: Any,
    tls: ssl.SSLContext | None,
    run: Run,
    deadline: float,
) -> list[tuple[WSTransport, Any]]:
    """Open up to `count` connections, OPEN_CONCURRENCY at a time, before `deadline`."""
    opened: list[tuple[WSTransport, Any]] = []
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def one() -> None:
        async with gate:
            if loop.time() > deadline:
                run.error("open_deadline")
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    pair = await ws_connect(
                        factory, url, ssl_context=tls, read_buffer_init_size=4096
                    )
            except Exception as exc:  # counted and reported
                run.error(exc)
                return
            opened.append(pair)

    await asyncio.gather(*(one() for _ in range(count)))
    return opened


# ------------------------------------------------------------------------ modes


class Handshake(asyncio.Protocol):
    """One raw handshake cycle: upgrade request, 101, masked Close, the server ends TCP.

    Written against the transport directly (no per-connection coroutine of a client
    library) so that the client spends as little CPU per connection as it can.
    """

    def __init__(self, request: bytes, done: asyncio.Future[str]) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.upgraded = False
        self.closed_by_server = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.closed_by_server = self.closed_by_server or data[:1] == b"\x88"
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        assert self.transport is not None
        if not self.head.startswith(b"HTTP/1.1 101"):
            self._finish("status_" + self.head[9:12].decode("latin-1"))
            self.transport.abort()
            return
        self.upgraded = True
        self.transport.write(close_frame())
        rest = self.head[end + 4 :]
        if rest:
            self.closed_by_server = rest[:1] == b"\x88"

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded:
            self._finish("closed_before_101")
        elif not self.closed_by_server:
            self._finish("no_close_frame")
        else:
            self._finish("")

    def _finish(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


def upgrade_request(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def close_frame(code: int = 1000) -> bytes:
    """A masked Close frame (client to server) with a fresh masking key."""
    mask = os.urandom(4)
    payload = code.to_bytes(2, "big")
    masked = bytes(byte ^ mask[index] for index, byte in enumerate(payload))
    return b"\x88\x82" + mask + masked


async def handshakes(args: argparse.Namespace, run: Run) -> None:
    url = urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "wss" else 80)
    tls = client_tls() if url.scheme == "wss" else None
    loop = asyncio.get_running_loop()
    end = loop.time() + args.warmup + args.duration

    async def cycle() -> None:
        while run.running and loop.time() < end and run.count < args.max_count:
            begun = time.perf_counter_ns()
            done: asyncio.Future[str] = loop.create_future()
            request = upgrade_request(host, port, url.path or "/")
            transport: asyncio.BaseTransport | None = None
            watchdog = loop.call_later(CONNECT_TIMEOUT, _expire, done)
            try:
                transport, _ = await loop.create_connection(
                    partial(Handshake, request, done), host, port, ssl=tls
                )
                outcome = await done
            except Exception as exc:  # counted; a short pause, then on
                outcome = type(exc).__name__
            finally:
                watchdog.cancel()
            if outcome:
                run.error(outcome)
                if transport is not None:
                    transport.abort()  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
                continue
            if run.measuring:
                run.count += 1
                run.latencies_ns.append(time.perf_counter_ns() - begun)

    workers = [loop.create_task(cycle()) for _ in range(args.connections)]
    await asyncio.sleep(args.warmup)
    run.open_window()
    await asyncio.sleep(args.duration)
    run.close_window()
    run.running = False
    await asyncio.wait(workers, timeout=CONNECT_TIMEOUT + CLOSE_TIMEOUT)
    for worker in workers:
        worker.cancel()


def _expire(done: asyncio.Future[str]) -> None:
    if not done.done():
        done.set_result("timeout")


async def messages(args: argparse.Namespace, run: Run, window: int, keep_latency: bool) -> None:
    tls = client_tls() if args.url.startswith("wss:") else None
    loop = asyncio.get_running_loop()
    payload = os.urandom(args.size)

    def factory() -> Pinger:
        return Pinger(run, payload, window, keep_latency)

    opened = await open_many(
        args.url, args.connections, factory, tls, run, loop.time() + CONNECT_TIMEOUT * 3
    )
    if not opened:
        raise SystemExit("no connection could be opened")
    pingers: list[Pinger] = [listener for _, listener in opened]
    for pinger in pingers:
        pinger.start()
    await asyncio.sleep(args.warmup)
    run.open_window()
    await asyncio.sleep(args.duration)
    run.close_window()
    run.running = False
    for pinger in pingers:
        pinger.drained = loop.create_future()
        if not pinger.sent:
            pinger.drained.set_result(None)
    waits = [p.drained for p in pingers if p.drained is not None]
    await asyncio.wait(waits, timeout=CLOSE_TIMEOUT)
    await asyncio.gather(*(close_gracefully(transport) for transport, _ in opened))


async def idle(args: argparse.Namespace, run: Run) -> None:
    tls = client_tls() if args.url.startswith("wss:") else None
    loop = asyncio.get_running_loop()
    began = loop.time()
    opened = await open_many(args.url, args.connections, Quiet, tls, run, began + args.open_seconds)
    print(
        json.dumps(
            {
                "event": "ready",
                "open": len(opened),
                "open_seconds": loop.time() - began,
                "errors": dict(run.errors),
            }
        ),
        flush=True,
    )
    # Hold until the orchestrator says so (a line or EOF on stdin), bounded by --hold.
    reader = loop.run_in_executor(None, sys.stdin.readline)
    try:
        await asyncio.wait_for(reader, timeout=args.hold)
    except TimeoutError:
        run.error("hold_timeout")
    alive = sum(1 for transport, _ in opened if not transport.is_disconnected)
    run.count = alive
    for start in range(0, len(opened), OPEN_CONCURRENCY):
        batch = opened[start : start + OPEN_CONCURRENCY]
        await asyncio.gather(*(close_gracefully(transport) for transport, _ in batch))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    watch: dict[str, list[int]] = {}
    for item in args.watch:
        name, _, pids = item.partition("=")
        found = {pid for root in pids.split(",") if root for pid in tree(int(root))}
        watch[name] = sorted(found)  # a tree listed by its root and a child counts once
    run = Run(watch=watch)
    if args.mode == "handshake":
        await handshakes(args, run)
    elif args.mode == "echo":
        await messages(args, run, window=1, keep_latency=True)
    elif args.mode == "bulk":
        await messages(args, run, window=args.window, keep_latency=False)
    else:
        run.started = run.stopped = 0.0
        await idle(args, run)
    result = run.result()
    result.update(
        mode=args.mode,
        url=args.url,
        connections=args.connections,
        size=args.size,
        window=args.window if args.mode == "bulk" else 1,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["handshake", "echo", "bulk", "idle"])
    parser.add_argument("--url", required=True, help="ws://host:port/ or wss://host:port/")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--size", type=int, default=64, help="message bytes (echo, bulk)")
    parser.add_argument("--window", type=int, default=4, help="messages in flight (bulk)")
    parser.add_argument("--max-count", type=int, default=10_000_000, help="handshake bound")
    parser.add_argument("--hold", type=float, default=120.0, help="idle: longest hold")
    parser.add_argument("--open-seconds", type=float, default=60.0, help="idle: open deadline")
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=PID[,PID]",
        help="process trees whose CPU time is read at the window's edges",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.duration > 600 or args.connections < 1:
        parser.error("--duration must be in (0, 600] and --connections at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_nofile()
    import uvloop

    result = uvloop.run(main_async(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
