"""Where an idle WS or WSS connection's memory goes: the measurements behind hack/conn-memory.md.

Every mode opens N idle connections against a server and reads, per connection, what grew:
VmRSS (what the bench reports), the bytes malloc() holds (glibc `mallinfo2`: OpenSSL,
libuv, `PyMem_RawMalloc` and Python objects over 512 B; pymalloc's small objects live in
its own mmap'd arenas and are not in it), the Python objects alive by type (gc census),
and with `--trace` the tracemalloc allocations alive, grouped by traceback.

    ws       the data plane's Runtime in this process (uvloop), a Go echo backend, the
             bench's idle client: one WS connection's objects, each with its size, and the
             totals; `--wss`: an HTTPS listener and WSS clients. `make compiled` first
             for the image's figures, `make pure` for lines.
    bench    the bench's own idle row (bench.proxies.Wslb, bench.harness.measure_idle):
             RSS of the real `dataplane.cli` process, WS or WSS (`--wss`).
    tls      a bare uvloop TLS server in this process, one context variant (VARIANTS): what
             TLS termination alone costs per idle connection; `--burst B` sends B bytes
             each way once per connection before it goes idle.
    openssl  OpenSSL alone: N in-memory TLS 1.3 handshakes (MemoryBIOs, no sockets), the
             server's SSLObjects kept: malloc'd bytes per SSL object for a context variant.

    .venv/bin/python hack/conn-memory.py ws -n 2000 [--trace]
    .venv/bin/python hack/conn-memory.py tls -n 2000 --variant base
    .venv/bin/python hack/conn-memory.py openssl -n 2000 --variant noticket

Loopback only; every wait has a deadline; the processes it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procstat import malloc_bytes  # noqa: E402  (the repository is on the path now)

OPEN_DEADLINE = 120.0  # seconds for N connections to be open on the server side
HOLD = 300.0  # the client's longest hold
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)

# -- what a process holds -------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def heap_free_bytes() -> int:
    """Bytes in free chunks of malloc's main heap (glibc mallinfo2 `fordblks`): holes the
    heap keeps (resident where they were touched) until a later malloc reuses them."""
    from bench import procstat

    return int(procstat._libc.mallinfo2().fordblks)


def census() -> collections.Counter[str]:
    """GC-tracked objects alive, by type name (untracked ones, such as str, bytes and
    float, show in tracemalloc only)."""
    gc.collect()
    return collections.Counter(type(item).__qualname__ for item in gc.get_objects())


class Sample:
    def __init__(self, with_census: bool = True) -> None:
        self.cpu_at_start = time.process_time()
        gc.collect()
        self.rss = rss_kib()
        self.malloc = malloc_bytes()
        self.heap_free = heap_free_bytes()
        self.traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        self.snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        self.census = census() if with_census else collections.Counter()
        self.cpu_at_end = time.process_time()


def settle(deadline: float = 10.0) -> None:
    """Wait until RSS stops moving (two reads 0.3 s apart agree within 8 KiB)."""
    end = time.monotonic() + deadline
    last = rss_kib()
    while time.monotonic() < end:
        time.sleep(0.3)
        now = rss_kib()
        if abs(now - last) <= 8:
            return
        last = now


def report(title: str, count: int, before: Sample, after: Sample, extra: dict[str, Any]) -> None:
    """Print the per-connection deltas as JSON lines and a readable table."""
    result: dict[str, Any] = {
        "mode": title,
        "connections": count,
        "rss_kib_per_connection": round((after.rss - before.rss) / count, 3),
        "malloc_bytes_per_connection": round((after.malloc - before.malloc) / count),
        # free chunks inside malloc's heap: resident once touched, reused by later mallocs
        "heap_free_bytes_per_connection": round((after.heap_free - before.heap_free) / count),
        "heap_free_bytes_after": after.heap_free,
        # this process's CPU while the connections opened (and sent any burst), per connection
        "server_cpu_us_per_connection": round(
            (after.cpu_at_start - before.cpu_at_end) / count * 1e6, 1
        ),
        **extra,
    }
    if after.snapshot is not None:
        result["traced_bytes_per_connection"] = round((after.traced - before.traced) / count)
    grown = {
        name: round((after.census[name] - before.census[name]) / count, 2)
        for name in after.census
        if (after.census[name] - before.census[name]) / count >= 0.5
    }
    result["gc_objects_per_connection"] = dict(sorted(grown.items(), key=lambda kv: -kv[1]))
    print(json.dumps(result, indent=1))
    if after.snapshot is not None and before.snapshot is not None:
        print_traces(before.snapshot, after.snapshot, count)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker)[-1]
    return filename


def print_traces(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, count: int) -> None:
    """Allocations alive per connection, by full traceback (innermost first), then the
    same blocks by size: with no Python frame (uvloop's C callbacks, compiled code)
    the size is what names a block."""
    print("\n## tracemalloc: bytes per connection by traceback (innermost frame first)\n")
    print("| bytes/conn | blocks/conn | traceback |\n|---|---|---|")
    stats = after.compare_to(before, "traceback")
    for stat in stats[:40]:
        if stat.size_diff / count < 4:
            continue
        recent = list(stat.traceback)[::-1][:6]  # tracemalloc lists the oldest frame first
        frames = " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in recent)
        print(f"| {stat.size_diff / count:.0f} | {stat.count_diff / count:.2f} | `{frames}` |")
    print("\n## blocks alive per connection by size (all tracebacks)\n")
    old = collections.Counter(t.size for t in before.traces)
    new = collections.Counter(t.size for t in after.traces)
    rows = [(size, (new[size] - old[size]) / count) for size in new]
    rows = [(size, per) for size, per in rows if per >= 0.3]
    rows.sort(key=lambda row: -row[0] * row[1])
    print("| block size | blocks/conn | bytes/conn |\n|---|---|---|")
    for size, per in rows[:30]:
        print(f"| {size} | {per:.2f} | {size * per:.0f} |")


# -- one connection's own objects -----------------------------------------------------------

_STOP_TYPES = (type, type(sys), type(report), type(report.__code__))


def _stops(item: object) -> bool:
    """Types, modules, functions and module-level builtins are shared by everyone; a bound
    builtin method (a compiled class's, or uvloop's) belongs to its instance."""
    if isinstance(item, _STOP_TYPES):
        return True
    if isinstance(item, type(len)):
        owner = getattr(item, "__self__", None)
        return owner is None or isinstance(owner, type(sys))
    return False


def reachable(root: object, stop: set[int], depth: int = 6) -> dict[int, object]:
    """Objects reachable from `root` through gc referents, not entering `stop` or types,
    modules and functions."""
    seen: dict[int, object] = {}
    frontier = [root]
    for _ in range(depth):
        following = []
        for item in frontier:
            if id(item) in seen or id(item) in stop or _stops(item):
                continue
            seen[id(item)] = item
            following.extend(gc.get_referents(item))
        frontier = following
    return seen


def own_objects(one: object, other: object, stop: Iterable[object]) -> list[tuple[str, int]]:
    """The objects reachable from connection `one` that connection `other` does not reach
    (so they are one's own), as (type, sys.getsizeof) biggest first."""
    barrier = {id(item) for item in stop}
    mine = reachable(one, barrier)
    theirs = reachable(other, barrier)
    owned = [item for key, item in mine.items() if key not in theirs]
    rows = [(_describe(item), sys.getsizeof(item)) for item in owned]
    return sorted(rows, key=lambda row: -row[1])


def _describe(item: object) -> str:
    name = type(item).__qualname__
    if isinstance(item, (bytes, str)):
        return f"{name} len {len(item)}"
    if isinstance(item, (set, dict, list, tuple, bytearray)):
        return f"{name} of {len(item)}"
    if isinstance(item, type(len)):
        return f"bound {type(getattr(item, '__self__', None)).__qualname__}.{item.__name__}"
    if type(item).__name__ == "method":
        return f"bound method {item.__func__.__qualname__}"  # type: ignore[attr-defined]
    return name


# -- ws: the data plane in this process -----------------------------------------------------


def ws_config(
    port: int, backend_port: int, access_log: bool, tls: tuple[Path, Path] | None = None
) -> str:
    limits = "{maxConnections: 1000000, newConnectionsPerSecond: 1000000}"
    https = ""
    if tls is not None:
        https = f"""
    protocol: HTTPS
    tls: {{certificates: [{{certificateFile: {tls[0]}, privateKeyFile: {tls[1]}}}]}}"""
    return f"""version: conn-memory
loadBalancer: {{limits: {limits}}}
listeners:
  - name: ws{https}
    address: 127.0.0.1
    port: {port}
    idleTimeoutSeconds: 3600
    accessLog: {{enabled: {str(access_log).lower()}}}
    limits: {limits}
    backends: {{endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]}}
"""


def start_client(command: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    client = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    if not line:
        client.kill()
        raise RuntimeError("the idle client ended before it was ready")
    return client, json.loads(line)


def release(client: subprocess.Popen[str]) -> None:
    assert client.stdin is not None
    try:
        client.stdin.write("close\n")
        client.stdin.flush()
        client.wait(timeout=120)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        client.kill()
        client.wait()


async def wait_until(check: Callable[[], bool], what: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def ws_mode(args: argparse.Namespace) -> None:
    from bench.harness import Backend
    from bench.proxies import free_port
    from dataplane import tunnel
    from dataplane.config import load_file
    from dataplane.runtime import Runtime

    backend = Backend(kind="go")
    workdir = Path(tempfile.mkdtemp(prefix="wslb-conn-memory-"))
    port = free_port()
    config = workdir / "wslb.yaml"
    tls = make_cert(workdir) if args.wss else None
    config.write_text(ws_config(port, backend.port, args.access_log, tls))
    log = None
    if args.access_log:  # records go to a file: the kept heads are what is measured
        from dataplane.access_log import AccessLog

        log = AccessLog(stream=(workdir / "access.log").open("w"), worker=0)
        log.start()
    runtime = Runtime(access_log=log)
    loop = asyncio.get_running_loop()
    try:
        await runtime.apply(load_file(config))
        listener = next(iter(runtime.listeners.values()))
        url = f"{'wss' if args.wss else 'ws'}://127.0.0.1:{port}/"

        def tunnels() -> int:
            return sum(1 for c in listener.connections if c.state is tunnel.State.TUNNEL)

        def hold(n: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
            command = [sys.executable, "-m", "bench.loadgen", "idle", "--url", url]
            command += ["--connections", str(n), "--hold", str(HOLD)]
            return start_client(command)

        warm, _ = await loop.run_in_executor(None, hold, 200)
        await loop.run_in_executor(None, release, warm)
        await wait_until(lambda: not listener.connections, "warm-up to close", 30)
        if args.trace:
            tracemalloc.start(args.frames)
        settle()
        before = Sample()
        client, ready = await loop.run_in_executor(None, hold, args.n)
        opened = int(ready["open"])
        await wait_until(lambda: tunnels() >= opened, "tunnels", OPEN_DEADLINE)
        settle()
        after = Sample()
        connections = [c for c in listener.connections if c.state is tunnel.State.TUNNEL]
        one, other = connections[len(connections) // 2], connections[len(connections) // 3]
        shared = [listener, loop, runtime, listener.wheel, listener.config, one.group]
        owned = own_objects(one, other, shared)
        compiled = Path(tunnel.__file__).suffix == ".so"
        extra = {
            "build": "compiled" if compiled else "pure",
            "access_log": args.access_log,
            "wss": args.wss,
            "listener_connections_set_bytes": sys.getsizeof(listener.connections),
            "wheel_slot_lists_bytes": sum(sys.getsizeof(s) for s in listener.wheel.slots.values()),
            "wheel_slots": len(listener.wheel.slots),
            "own_objects_bytes": sum(size for _, size in owned),
        }
        report("ws", opened, before, after, extra)
        print("\n## one connection's own objects (reachable from it, not from another)\n")
        print("| object | sys.getsizeof |\n|---|---|")
        for name, size in owned:
            print(f"| {name} | {size} |")
        await loop.run_in_executor(None, release, client)
    finally:
        await runtime.shutdown(0)
        backend.stop()


def bench_mode(args: argparse.Namespace) -> None:
    """The bench's own idle row, for the figure `make bench` would print now."""
    from bench.harness import Backend, Settings, measure_idle
    from bench.proxies import Wslb
    from dataplane.certs import self_signed

    workdir = Path(tempfile.mkdtemp(prefix="wslb-conn-memory-"))
    cert_pem, key_pem = self_signed(["127.0.0.1", "localhost"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    key.chmod(0o600)
    backend = Backend(kind="go")
    proxy = Wslb(workdir, backend.port, cert, key, None)
    proxy.start()
    try:
        settings = Settings.from_env()
        settings.idle_connections = args.n
        # As the bench: the WS row first, then the WSS row in the same process (its heap
        # reuses what the WS row freed), unless --wss asks for the WSS row alone.
        tests = ["idle-wss"] if args.wss else ["idle", "idle-wss"] if args.both else ["idle"]
        for test in tests:
            result = measure_idle(proxy, settings, test)
            print(json.dumps({"mode": "bench", "test": test, **result}, indent=1))
    finally:
        proxy.stop()
        backend.stop()


# -- tls: a bare uvloop TLS server -----------------------------------------------------------

VARIANTS = {
    "plain": "no TLS: the TCP transport floor",
    "base": "dataplane.tls._base_context with the certificate (the listener's settings)",
    "front": "dataplane.tls.front_context (SNI callback, observed SSLObject) as listeners use",
    "noticket": "base + OP_NO_TICKET",
    "tls12": "base, TLS 1.2 only (client too)",
    "rsa": "base with an RSA-2048 certificate instead of ECDSA P-256",
    "ownbio": "base, but TLS done over a plain uvloop transport by a BufferedProtocol with "
    "one loop-wide read buffer (what sharing uvloop's 256 KiB buffer would give)",
    "ownbio-sliced": "ownbio, and the memory BIOs fed and drained 16 KiB at a time (a BIO "
    "never shrinks: this bounds what an idle connection keeps after traffic)",
    "stream": "front, with TLS done by the product's layer (dataplane.tls_stream) over the "
    "plain transport, as HTTPS listeners do since it replaced uvloop's ssl=",
}

SLICE = 16 * 1024  # a TLS record's plaintext at most


def make_cert(workdir: Path, rsa: bool = False) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    from dataplane.certs import self_signed

    cert_pem, key_pem = self_signed(["127.0.0.1", "localhost"])
    if rsa:  # same certificate shape, RSA key
        import datetime

        key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    cert_path, key_path = workdir / "tls.crt", workdir / "tls.key"
    cert_path.write_text(cert_pem)
    key_path.write_text(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path


def server_context(variant: str, workdir: Path) -> ssl.SSLContext | None:
    from dataplane import tls
    from lbwire.snapshot import Certificate, Tls

    if variant == "plain":
        return None
    cert, key = make_cert(workdir, rsa=variant == "rsa")
    certificate = Certificate(certificate_pem=cert.read_text(), private_key_pem=key.read_text())
    if variant in ("front", "stream"):
        certificates = tls.CertificateSet(Tls(certificates=[certificate], min_version="1.2"))
        return tls.front_context(lambda: certificates, "1.2", lambda exc: None)
    context = tls._base_context("1.2")
    tls.load_certificate(context, certificate)
    if variant == "noticket":
        context.options |= ssl.OP_NO_TICKET
    if variant == "tls12":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class Held(asyncio.Protocol):
    """Answers the first bytes with a 101-sized head, then echoes what comes."""

    def __init__(self, live: set[Held]) -> None:
        self.live = live
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.write(ANSWER)
        else:  # the --burst bytes: echoed
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)


_SHARED_READ = bytearray(256 * 1024)  # one read buffer for every OwnTls connection


class OwnTls(asyncio.BufferedProtocol):
    """TLS over a plain transport (the `ownbio` variant): uvloop reads into one shared
    buffer, the bytes go to this connection's incoming MemoryBIO at once, so no per-
    connection read buffer exists. A prototype for measuring, not a product."""

    def __init__(self, context: ssl.SSLContext, live: set[Any], sliced: bool) -> None:
        self.step = SLICE if sliced else len(_SHARED_READ)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.live = live
        self.done = False
        self.app = Held(live)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.app.transport = self  # type: ignore[assignment]
        self.live.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(_SHARED_READ)

    def buffer_updated(self, nbytes: int) -> None:
        view = memoryview(_SHARED_READ)
        for start in range(0, nbytes, self.step):
            self.incoming.write(view[start : min(nbytes, start + self.step)])
            self._advance()

    def _advance(self) -> None:
        if not self.done:
            try:
                self.sslobj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
            self._flush()
            if not self.done:
                return
        while True:
            try:
                data = self.sslobj.read(65536)
            except ssl.SSLWantReadError:
                break
            if not data:
                break
            self.app.data_received(data)
        self._flush()

    def write(self, data: bytes) -> None:  # the app's transport.write
        for start in range(0, len(data), self.step):
            self.sslobj.write(data[start : start + self.step])
            self._flush()

    def _flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)


async def tls_mode(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wslb-conn-memory-"))
    context = server_context(args.variant, workdir)
    live: set[Any] = set()
    loop = asyncio.get_running_loop()
    if args.variant == "stream":
        from dataplane.tls_stream import TlsAcceptor

        assert context is not None
        acceptor = TlsAcceptor(context, lambda: Held(live), 60.0)
        server = await loop.create_server(acceptor, "127.0.0.1", 0, backlog=4096)
    elif args.variant.startswith("ownbio"):
        assert context is not None
        sliced = args.variant == "ownbio-sliced"
        factory: Callable[[], asyncio.BaseProtocol] = lambda: OwnTls(context, live, sliced)  # noqa: E731
        server = await loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
    else:
        server = await loop.create_server(
            lambda: Held(live), "127.0.0.1", 0, ssl=context, backlog=4096
        )
    port = server.sockets[0].getsockname()[1]
    tls = "none" if context is None else ("1.2" if args.variant == "tls12" else "1.3")

    def hold(n: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        command = [sys.executable, __file__, "_client", str(port), str(n), tls]
        return start_client([*command, "--burst", str(args.burst)])

    try:
        warm, _ = await loop.run_in_executor(None, hold, 200)
        await loop.run_in_executor(None, release, warm)
        await wait_until(lambda: not live, "warm-up to close", 30)
        if args.trace:
            tracemalloc.start(args.frames)
        settle()
        before = Sample()
        client, ready = await loop.run_in_executor(None, hold, args.n)
        opened = int(ready["open"])
        await wait_until(lambda: len(live) >= opened, "connections", OPEN_DEADLINE)
        settle()
        after = Sample()
        extra = {
            "variant": args.variant,
            "burst": args.burst,
            "tls": tls,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", ""),
        }
        report("tls", opened, before, after, extra)
        await loop.run_in_executor(None, release, client)
    finally:
        server.close()


def client_mode(args: argparse.Namespace) -> None:
    """The idle client of `tls`: N connections, each sends REQUEST, reads the answer (and
    with --burst sends and reads back that many bytes), then holds until told."""
    import uvloop

    async def main() -> None:
        context = None
        if args.tls != "none":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            version = ssl.TLSVersion.TLSv1_3 if args.tls == "1.3" else ssl.TLSVersion.TLSv1_2
            context.minimum_version = context.maximum_version = version
        held: list[asyncio.StreamWriter] = []
        gate = asyncio.Semaphore(100)
        burst = b"x" * args.burst

        async def one() -> None:
            async with gate:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", args.port, ssl=context, limit=1 << 20
                )
                writer.write(REQUEST)
                await reader.readuntil(b"\r\n\r\n")
                if burst:
                    writer.write(burst)
                    await reader.readexactly(len(burst))
                held.append(writer)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.count))), OPEN_DEADLINE)
        print(json.dumps({"event": "ready", "open": len(held)}), flush=True)
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), HOLD
        )
        for writer in held:
            writer.close()
        print(json.dumps({"event": "closed"}), flush=True)

    uvloop.run(main())


# -- openssl: SSL objects alone ---------------------------------------------------------------


def openssl_mode(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wslb-conn-memory-"))
    server = server_context(args.variant, workdir)
    assert server is not None, "openssl mode needs a TLS variant"
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if args.variant == "tls12":
        client.maximum_version = ssl.TLSVersion.TLSv1_2

    def handshake() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        s = server.wrap_bio(s_in, s_out, server_side=True)
        c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
        done_c = done_s = False
        for _ in range(10):
            if not done_c:
                try:
                    c.do_handshake()
                    done_c = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            if not done_s:
                try:
                    s.do_handshake()
                    done_s = True
                except ssl.SSLWantReadError:
                    pass
            c_in.write(s_out.read())
            if done_c and done_s:
                break
        assert done_c and done_s, "handshake did not finish"
        c.write(REQUEST)  # one request each way, as an upgraded connection has had
        s_in.write(c_out.read())
        s.read(4096)
        s.write(ANSWER)
        c_in.write(s_out.read())
        c.read(4096)
        return s, s_in, s_out

    for _ in range(200):
        handshake()  # warm: lazy loads of providers and ciphers
    if args.trace:
        tracemalloc.start(args.frames)
    before = Sample()
    kept = [handshake() for _ in range(args.n)]
    after = Sample()
    extra = {"variant": args.variant, "tls": kept[0][0].version(), "cipher": kept[0][0].cipher()}
    report("openssl", len(kept), before, after, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("ws", "bench", "tls", "openssl"):
        mode = sub.add_parser(name)
        mode.add_argument("-n", type=int, default=2000, help="idle connections")
        mode.add_argument("--trace", action="store_true", help="tracemalloc by traceback")
        mode.add_argument("--frames", type=int, default=8, help="tracemalloc frames kept")
        if name == "ws":
            mode.add_argument("--access-log", action="store_true", help="access log on")
            mode.add_argument("--wss", action="store_true", help="an HTTPS listener (WSS)")
        if name == "bench":
            mode.add_argument("--wss", action="store_true", help="the idle WSS row alone")
            mode.add_argument("--both", action="store_true", help="WS, then WSS, as the bench")
        if name in ("tls", "openssl"):
            mode.add_argument("--variant", choices=sorted(VARIANTS), default="base")
            mode.add_argument("--burst", type=int, default=0, help="bytes sent once each way")
    client = sub.add_parser("_client")
    client.add_argument("port", type=int)
    client.add_argument("count", type=int)
    client.add_argument("tls", choices=["none", "1.2", "1.3"])
    client.add_argument("--burst", type=int, default=0)
    args = parser.parse_args()
    if args.mode in ("ws", "tls", "bench", "_client"):
        from bench.procstat import raise_nofile

        raise_nofile()
    if args.mode == "_client":
        client_mode(args)
    elif args.mode == "bench":
        bench_mode(args)
    elif args.mode == "openssl":
        openssl_mode(args)
    else:
        import uvloop

        uvloop.run(ws_mode(args) if args.mode == "ws" else tls_mode(args))


if __name__ == "__main__":
    main()
