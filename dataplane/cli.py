"""`wslb-dataplane`: run the data plane from a YAML file or from the controller.

Owns the process: argument parsing, uvloop, signals (SIGTERM/SIGINT drain and exit 0,
SIGHUP reloads the file), watching the config file and the certificate and key files it
names, the admin port, `--workers N` (N
processes sharing each port with SO_REUSEPORT; the parent serves the admin port and
merges the workers' metrics with a `worker` label), and `--controller URL` (snapshots
pushed over the config channel; see config_client.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dataplane.admin import AdminServer
from dataplane.config import load_with_sources
from dataplane.config_client import ClientSettings, ConfigClient
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from dataplane.workers import WorkerSet
from lbwire.errors import ConfigError

log = logging.getLogger("wslb.dataplane")

WATCH_INTERVAL = 1.0


@dataclass
class Options:
    config: Path | None
    admin_host: str
    admin_port: int
    workers: int
    drain_timeout: float | None
    watch: bool
    admin_socket: str | None = None  # a worker's private admin socket
    client: ClientSettings | None = None  # controller mode


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="wslb-dataplane", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", "-c", type=Path, help="standalone YAML file")
    source.add_argument(
        "--controller", help="config server URL, e.g. wss://wslb-config.ns.svc:9443"
    )
    parser.add_argument("--load-balancer", help="namespace/name (controller mode)")
    parser.add_argument("--node", default=os.environ.get("POD_NAME") or socket.gethostname())
    parser.add_argument("--token-file", type=Path, help="bearer token for the config channel")
    parser.add_argument("--ca-file", type=Path, help="CA certificate of the config server")
    parser.add_argument("--state-dir", type=Path, help="keeps the last applied snapshot")
    parser.add_argument("--insecure-channel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--admin",
        default=os.environ.get("WSLB_ADMIN", "127.0.0.1:9901"),
        help="admin address host:port for /metrics /healthz /readyz (default 127.0.0.1:9901;"
        " loopback unless you expose it on purpose)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes sharing each port")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="override every listener's drainTimeoutSeconds at shutdown",
    )
    parser.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only")
    parser.add_argument("--log-level", default=os.environ.get("WSLB_LOG_LEVEL", "INFO"))
    parser.add_argument("--admin-socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    host, _, port = args.admin.rpartition(":")
    if not port.isdigit() or args.workers < 1:
        parser.error("--admin must be host:port and --workers at least 1")
    client = None
    if args.controller:
        if not args.load_balancer or "/" not in args.load_balancer or not args.token_file:
            parser.error("--controller needs --load-balancer namespace/name and --token-file")
        if not args.controller.startswith("wss://") and not args.insecure_channel:
            # Certificates and keys travel on this channel: never in clear by accident.
            parser.error("--controller must be a wss:// URL (--insecure-channel is for tests)")
        if args.workers > 1:
            parser.error("--workers applies to --config only; scale replicas instead")
        client = ClientSettings(
            url=args.controller,
            load_balancer=args.load_balancer,
            node=args.node,
            token_file=args.token_file,
            ca_file=args.ca_file,
            state_dir=args.state_dir,
        )
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return Options(
        config=args.config,
        admin_host=host.strip("[]") or "127.0.0.1",
        admin_port=int(port),
        workers=args.workers,
        drain_timeout=args.drain_timeout,
        watch=not args.no_watch,
        admin_socket=args.admin_socket,
        client=client,
    )


class DataPlaneProcess:
    """One data-plane process: a YAML file or the controller feeds its runtime."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.metrics = Metrics()
        self.runtime = Runtime(self.metrics, workers=options.workers)
        self.admin = AdminServer(self.metrics.registry, lambda: self.runtime.ready)
        self.stop = asyncio.Event()
        self._stamp: tuple[tuple[float, int, int] | None, ...] = ()
        self._sources: list[Path] = []  # certificate and key files the config names

    def _file_stamp(self) -> tuple[tuple[float, int, int] | None, ...]:
        """Change stamps of the config file and of every file it names."""
        if self.options.config is None:
            return ()
        return tuple(_stat(path) for path in [self.options.config, *self._sources])

    async def reload(self, first: bool = False) -> bool:
        if self.options.config is None:
            return False  # controller mode: snapshots arrive over the channel
        self._stamp = self._file_stamp()
        try:
            snapshot, sources = load_with_sources(self.options.config)
            if sources != self._sources:
                self._sources = sources
                self._stamp = self._file_stamp()
            await self.runtime.apply(snapshot)
        except ConfigError as exc:
            if first:
                raise
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("config refused, the previous one keeps serving: %s", exc)
            return False
        return True

    async def _watch(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL):
                    await self.stop.wait()
            if not self.stop.is_set() and self._file_stamp() != self._stamp:
                log.info("config file or a certificate file changed; reloading")
                await self.reload()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        client_task = None
        if self.options.client is not None:
            client = ConfigClient(self.options.client, self.runtime)
            await client.restore()
            client_task = loop.create_task(client.run(self.stop))
        else:
            await self.reload(first=True)
        # Everything allocated so far (modules, config, TLS contexts) lives for the whole
        # process: keep it out of the cyclic GC's full collections, which pause the loop.
        gc.freeze()
        if self.options.admin_socket:
            await self.admin.start_unix(self.options.admin_socket)
        else:
            await self.admin.start(self.options.admin_host, self.options.admin_port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        watcher = None
        if self.options.watch and self.options.config is not None:
            watcher = loop.create_task(self._watch())
        await self.stop.wait()
        log.info("shutting down: draining connections")
        if watcher is not None:
            watcher.cancel()
        # Not ready at once, draining while the config channel closes.
        await asyncio.gather(
            self.runtime.shutdown(self.options.drain_timeout),
            *([client_task] if client_task is not None else []),
        )
        await self.admin.close()
        log.info("stopped")
        return 0


def _stat(path: Path) -> tuple[float, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)


def _run(coro_factory: object) -> int:
    import uvloop

    return int(uvloop.run(coro_factory()))  # type: ignore[operator]


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    try:
        if options.workers > 1 and options.admin_socket is None:
            runtime_dir = tempfile.mkdtemp(prefix="wslb-workers-")
            code = _run(
                lambda: WorkerSet(
                    options, runtime_dir, sys.argv[1:] if argv is None else argv
                ).run()
            )
        else:
            code = _run(lambda: DataPlaneProcess(options).run())
    except ConfigError as exc:
        print(f"wslb-dataplane: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
