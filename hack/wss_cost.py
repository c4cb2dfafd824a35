"""What a WSS connection costs the data plane, measured without the bench harness.

Three figures, each for one server process that this script starts and stops itself:

- `idle`: RSS per idle WSS connection (VmRSS of the server before and after opening N
  connections, TLS 1.3 handshake plus WebSocket upgrade, as bench's idle-wss row does);
- `handshakes`: user-space instructions per WSS handshake (open, upgrade, close) with the
  server under callgrind, instrumentation switched on only while N handshakes run. Unlike
  wall-clock time, instruction counts hold on a busy shared machine;
- `cpu`: user and system CPU time per handshake from /proc (noisy here), or with
  `--strace` the server's syscalls per handshake (startup included, so use a large N).

The server is the real data plane or HAProxy, each as bench runs it (`--server wslb`:
bench's wslb: the image's build in bench/.build/wslb-venv
unless BENCH_WSLB=checkout, one worker; `--server haproxy`: one thread; bench/proxies.py's configs,
measured on their WSS port, in front of a 101-answering backend that runs in this
process), or a bare uvloop TLS server with one of the context variants below (`--server
lab`), which isolates the TLS layer: the variants differ only in how the SSL context is
built. The client is TLS 1.3 only, like bench's.

    .venv/bin/python hack/wss_cost.py idle --server wslb -n 2000
    .venv/bin/python hack/wss_cost.py handshakes --server lab --variant front -n 200
    .venv/bin/python hack/wss_cost.py cpu --server haproxy -n 1000 --strace
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
REQUEST = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked Close 1000, zero mask
START_TIMEOUT = 30.0

VARIANTS = {
    "plain": "no TLS (the TCP floor)",
    "base": "one context with the certificate, no SNI callback, no observed SSLObject",
    "front": "dataplane.tls.front_context as the listener builds it (SNI callback, observer)",
    "front-nosni": "front_context without the SNI callback",
    "front-noobs": "front_context without the observed SSLObject class",
    "tickets0": "base, num_tickets = 0 (what dataplane.tls sets)",
    "tickets1": "base, num_tickets = 1 (dataplane.tls before 5d27960)",
    "tickets2": "base, num_tickets = 2 (OpenSSL's default)",
    "noticket": "base, OP_NO_TICKET (stateful sessions in the server cache)",
}


# -- the lab server ------------------------------------------------------------------------


def lab_context(variant: str, cert: str, key: str) -> ssl.SSLContext | None:
    from dataplane import tls
    from lbwire.snapshot import Certificate, Tls

    if variant == "plain":
        return None
    certificate = Certificate(
        certificate_pem=Path(cert).read_text(), private_key_pem=Path(key).read_text()
    )
    settings = Tls(certificates=[certificate], min_version="1.2")
    if variant.startswith("front"):
        certificates = tls.CertificateSet(settings)
        context = tls.front_context(lambda: certificates, "1.2", lambda exc: None)
        if variant == "front-nosni":
            context.sni_callback = None
        if variant == "front-noobs":
            context.sslobject_class = ssl.SSLObject
        return context
    context = tls._base_context("1.2")
    tls.load_certificate(context, certificate)
    if variant == "tickets0":
        context.num_tickets = 0
    elif variant == "tickets1":
        context.num_tickets = 1
    elif variant == "tickets2":
        context.num_tickets = 2
    elif variant == "noticket":
        context.options |= ssl.OP_NO_TICKET
    return context


class Answer(asyncio.Protocol):
    """Answers the first bytes with a fixed 101, echoes a Close, then holds."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        elif data[:1] == b"\x88":
            self.transport.write(b"\x88\x02\x03\xe8")
            self.transport.close()


def serve_lab(variant: str, cert: str, key: str, port_file: str) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(
            Answer, "127.0.0.1", 0, ssl=lab_context(variant, cert, key), backlog=1024
        )
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))  # noqa: ASYNC240
        await stop
        server.close()

    uvloop.run(main())


# -- the client and a backend that answers 101 ----------------------------------------------


class Backend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.head = b""

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            if data[:1] == b"\x88":
                self.transport.write(b"\x88\x02\x03\xe8")
                self.transport.close()
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            key = next(
                line.split(b":", 1)[1].strip()
                for line in self.head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.head = None  # type: ignore[assignment]


class Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded and data.startswith(b"HTTP/1.1 101"):
            self.upgraded = True
            if not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before the 101"))


async def open_one(port: int, tls: ssl.SSLContext | None) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: Client(done),
        "127.0.0.1",
        port,
        ssl=tls,
        server_hostname="localhost" if tls else None,
    )
    await asyncio.wait_for(done, 60)
    return transport


def resuming_loop(port: int, tls: ssl.SSLContext, count: int) -> int:
    """Blocking handshakes that offer the previous connection's TLS session (asyncio's
    create_connection cannot); returns how many were resumed."""
    session = None
    resumed = 0
    for _ in range(count):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=60) as raw,
            tls.wrap_socket(raw, server_hostname="localhost", session=session) as conn,
        ):
            conn.sendall(REQUEST)
            head = conn.recv(4096)
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"no 101: {head[:40]!r}")
            resumed += conn.session_reused
            session = conn.session
            conn.sendall(CLOSE_FRAME)
            conn.recv(4096)
    return resumed


def _resolve(future: asyncio.Future[None], exc: Exception | None) -> None:
    if not future.done():
        future.set_result(None)


async def handshake_loop(port: int, tls: ssl.SSLContext | None, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        transport = await open_one(port, tls)
        lost: asyncio.Future[None] = loop.create_future()
        protocol = transport.get_protocol()
        protocol.connection_lost = partial(_resolve, lost)  # type: ignore[method-assign]
        transport.write(CLOSE_FRAME)
        try:
            await asyncio.wait_for(lost, 60)
        except TimeoutError:
            transport.abort()


# -- orchestration ------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        path = task / "children"
        if path.exists():
            for child in path.read_text().split():
                found.extend(children(int(child)))
    return found


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT * 4
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening")


def start_server(
    args: argparse.Namespace, workdir: Path, backend_port: int, prefix: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    # imported here, like the lab server's imports, to keep the measured lab process lean
    from bench.proxies import PROXIES

    if args.server in PROXIES:
        # bench's proxy, config and command; unpinned, and started here under `prefix`.
        proxy = PROXIES[args.server](workdir, backend_port, Path(args.cert), Path(args.key), None)
        command = proxy.write_config()
        cwd = proxy.working_directory()
        proc = subprocess.Popen([*prefix, *command], cwd=cwd, stdout=subprocess.DEVNULL)
        wait_port(proxy.wss_port, proc)
        return proc, proxy.wss_port
    python = sys.executable
    port_file = workdir / "port"
    command = [python, __file__, "_serve", args.variant, args.cert, args.key, str(port_file)]
    proc = subprocess.Popen([*prefix, *command], cwd=REPO)
    deadline = time.monotonic() + START_TIMEOUT * 4
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("lab server did not start")
        time.sleep(0.1)
    port = int(port_file.read_text())
    wait_port(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (under strace, strace's child: strace itself would only detach)."""
    if proc.poll() is None:
        found = children(proc.pid)
        target = (
            found[1] if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "strace" else proc.pid
        )
        os.kill(target, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def with_backend(work: Any) -> Any:
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(Backend, "127.0.0.1", 0, backlog=4096)
    try:
        return await work(backend.sockets[0].getsockname()[1])
    finally:
        backend.close()


def tls_for(args: argparse.Namespace) -> ssl.SSLContext | None:
    """bench's client context (TLS 1.3 only, full handshakes), or none for plain TCP."""
    from bench.loadgen import client_tls

    return None if args.server == "lab" and args.variant == "plain" else client_tls()


async def measure_idle(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async def work(backend_port: int) -> dict[str, Any]:
        proc, port = start_server(args, workdir, backend_port, [])
        try:
            tls = tls_for(args)
            warm = [await open_one(port, tls) for _ in range(50)]  # lazy imports, allocator
            for transport in warm:
                transport.close()
            await asyncio.sleep(1.0)
            pids = children(proc.pid)
            before = sum(rss_kib(pid) for pid in pids)
            held = []
            for start in range(0, args.n, 20):
                batch = min(20, args.n - start)
                held += await asyncio.gather(*(open_one(port, tls) for _ in range(batch)))
            await asyncio.sleep(1.0)
            after = sum(rss_kib(pid) for pid in children(proc.pid))
            for transport in held:
                transport.close()
            return {
                "server": args.server,
                "variant": args.variant,
                "connections": len(held),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_connection": round((after - before) / len(held), 2),
            }
        finally:
            stop(proc)

    result: dict[str, Any] = await with_backend(work)
    return result


async def measure_handshakes(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out = workdir / "callgrind.out"
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    if args.save:
        prefix.append("--dump-instr=no")

    async def work(backend_port: int) -> dict[str, Any]:
        proc, port = start_server(args, workdir, backend_port, prefix)
        try:
            tls = tls_for(args)
            await asyncio.gather(*(handshake_loop(port, tls, 5) for _ in range(args.concurrency)))
            control = ["callgrind_control"]
            pid = str(children(proc.pid)[-1] if args.server == "wslb" else proc.pid)
            # the worker (wslb) or the lab server: the process that terminates TLS
            subprocess.run([*control, "-i", "on", pid], check=True, capture_output=True)  # noqa: ASYNC221
            per_loop = args.n // args.concurrency
            began = time.monotonic()
            resumed = 0
            if args.resume and tls is not None:
                counts = await asyncio.gather(
                    *(
                        asyncio.to_thread(resuming_loop, port, tls, per_loop)
                        for _ in range(args.concurrency)
                    )
                )
                resumed = sum(counts)
            else:
                await asyncio.gather(
                    *(handshake_loop(port, tls, per_loop) for _ in range(args.concurrency))
                )
            seconds = time.monotonic() - began
            subprocess.run([*control, "-i", "off", pid], check=True, capture_output=True)  # noqa: ASYNC221
            subprocess.run([*control, "-d", pid], check=True, capture_output=True)  # noqa: ASYNC221
        finally:
            stop(proc)
        total = 0
        for dump in workdir.glob("callgrind.out*"):  # noqa: ASYNC240
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
            if args.save:
                Path(args.save).parent.mkdir(parents=True, exist_ok=True)
                Path(args.save + "." + dump.name).write_bytes(dump.read_bytes())  # noqa: ASYNC240
        done = per_loop * args.concurrency
        return {
            "server": args.server,
            "variant": args.variant,
            "handshakes": done,
            "instructions_per_handshake": round(total / done),
            "resumed": resumed,
            "seconds_under_callgrind": round(seconds, 1),
        }

    result: dict[str, Any] = await with_backend(work)
    return result


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


async def measure_cpu(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """CPU time per handshake from /proc (user and system apart); with --strace, the
    server's syscalls per handshake instead (strace slows it, so no CPU figure then)."""
    out = workdir / "strace.out"
    prefix = ["strace", "-f", "-c", "-o", str(out)] if args.strace else []

    async def work(backend_port: int) -> dict[str, Any]:
        proc, port = start_server(args, workdir, backend_port, prefix)
        try:
            tls = tls_for(args)
            await asyncio.gather(*(handshake_loop(port, tls, 5) for _ in range(args.concurrency)))
            pids = children(proc.pid)
            user0, system0 = cpu_seconds(pids)
            per_loop = args.n // args.concurrency
            began = time.monotonic()
            await asyncio.gather(
                *(handshake_loop(port, tls, per_loop) for _ in range(args.concurrency))
            )
            seconds = time.monotonic() - began
            user1, system1 = cpu_seconds(pids)
        finally:
            stop(proc)
        done = per_loop * args.concurrency
        result = {
            "server": args.server,
            "variant": args.variant,
            "handshakes": done,
            "user_us": round((user1 - user0) * 1e6 / done, 1),
            "system_us": round((system1 - system0) * 1e6 / done, 1),
            "wall_seconds": round(seconds, 2),
        }
        if args.strace:
            by_name: dict[str, float] = {}
            for line in out.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[0][0].isdigit():  # % time, s, us/call, calls, ...
                    by_name[parts[-1]] = round(int(parts[3]) / (done + 4 * 5), 2)
            result["syscalls_per_handshake_incl_warmup"] = by_name
        return result

    result: dict[str, Any] = await with_backend(work)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_lab(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["idle", "handshakes", "cpu"])
    parser.add_argument("--server", choices=["wslb", "lab", "haproxy"], default="wslb")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="front")
    parser.add_argument("-n", type=int, default=0, help="connections or handshakes")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--resume", action="store_true", help="handshakes: offer the last TLS session"
    )
    parser.add_argument("--strace", action="store_true", help="cpu: count syscalls instead")
    parser.add_argument("--save", default="", help="keep the callgrind dumps with this prefix")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    args = parser.parse_args()
    if not 0 < (args.n or 1) <= 20000:
        parser.error("-n must be between 1 and 20000")
    import uvloop

    from dataplane.certs import ensure_files

    with tempfile.TemporaryDirectory(prefix="wss-cost-") as tmp:
        workdir = Path(tmp)
        if not args.cert:
            cert, key = ensure_files(workdir / "tls", ["localhost", "127.0.0.1"])
            args.cert, args.key = str(cert), str(key)
        if args.what == "idle":
            args.n = args.n or 2000
            result = uvloop.run(measure_idle(args, workdir))
        elif args.what == "cpu":
            args.n = args.n or 2000
            result = uvloop.run(measure_cpu(args, workdir))
        else:
            args.n = args.n or 200
            result = uvloop.run(measure_handshakes(args, workdir))
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
