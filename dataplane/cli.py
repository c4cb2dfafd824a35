"""`wslb-dataplane`: run the data plane from a YAML file or from the controller.

Owns the process: argument parsing (a bad flag or environment value is one line naming it,
exit 2), log setup (`--log-format`), uvloop, signals (SIGTERM/SIGINT drain and exit 0,
SIGHUP reloads the file), watching the config file and the certificate and key files it
names, the admin port, the access log, `--workers N` (N processes sharing each port with
SO_REUSEPORT; the parent serves the admin port, merges the workers' metrics with a
`worker` label and, in controller mode, holds the config session for all of them), and
`--controller URL` (snapshots pushed over the config channel; see config_client.py).
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
from typing import NoReturn

from prometheus_client import disable_created_metrics

from dataplane.access_log import AccessLog, AccessLogCollector
from dataplane.admin import AdminServer
from dataplane.config import load_with_sources
from dataplane.config_client import ClientSettings, ConfigClient
from dataplane.metrics import Metrics
from dataplane.process_metrics import ChannelState, Observability
from dataplane.runtime import Runtime
from dataplane.workers import WorkerSet, snapshot_receiver
from lbwire import logs
from lbwire.errors import ConfigError, StartupError
from lbwire.logs import ENV_FORMAT, ENV_LEVEL, LogFormat, LogSetupError, parse_format, parse_level
from lbwire.programs import OneLineParser, fail

# Allocations between two young-generation collections (CPython's default: 700). A server
# allocates a few dozen objects per connection; a collection every ~10 handshakes cost ~10k
# instructions per handshake (callgrind: 264k -> 254k per WS handshake at 50,000; the idle
# connection's RSS unchanged, 3.76 -> 3.75 KiB).
GC_YOUNG_OBJECTS = 50_000

log = logging.getLogger("wslb.dataplane")

ENV_ADMIN = "WSLB_ADMIN"

WATCH_INTERVAL = 1.0


@dataclass
class Options:
    config: Path | None
    admin_host: str | None  # None: every address of every family
    admin_port: int
    workers: int
    drain_timeout: float | None
    watch: bool
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    admin_socket: str | None = None  # a worker's private admin socket
    worker_index: int | None = None  # set by the parent of `--workers N` on each worker
    client: ClientSettings | None = None  # controller mode


class UsageError(ValueError):
    """A bad flag or environment value; the message names it."""


def parser() -> argparse.ArgumentParser:
    result = OneLineParser(
        prog="wslb-dataplane",
        description="The wslb data plane: WebSocket listeners configured from a YAML file"
        " (--config) or pushed by the wslb controller (--controller).",
    )
    source = result.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", "-c", type=Path, help="standalone YAML file")
    source.add_argument(
        "--controller", help="config server URL, e.g. wss://wslb-config.ns.svc:9443"
    )
    result.add_argument("--load-balancer", help="namespace/name (controller mode)")
    result.add_argument(
        "--node",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this data plane's name on the config channel (default $POD_NAME, else the host name)",
    )
    result.add_argument("--token-file", type=Path, help="bearer token for the config channel")
    result.add_argument("--ca-file", type=Path, help="CA certificate of the config server")
    result.add_argument("--state-dir", type=Path, help="keeps the last applied snapshot")
    result.add_argument("--insecure-channel", action="store_true", help=argparse.SUPPRESS)
    result.add_argument(
        "--admin",
        help="admin address host:port for /metrics /healthz /readyz (default 127.0.0.1:9901,"
        f" or ${ENV_ADMIN}; loopback unless you expose it on purpose; an empty host, as in"
        " :9901, binds every IPv4 and IPv6 address)",
    )
    result.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing each port (default 1); with --controller the parent"
        " holds the one config session and hands each snapshot to every worker",
    )
    result.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="override every listener's drainTimeoutSeconds at shutdown",
    )
    result.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only")
    result.add_argument(
        "--log-level", help=f"DEBUG, INFO, WARNING or ERROR (default INFO, or ${ENV_LEVEL})"
    )
    result.add_argument(
        "--log-format",
        help=f"text or json, one object per line (default text, or ${ENV_FORMAT}); also the"
        " access log's format",
    )
    result.add_argument("--admin-socket", help=argparse.SUPPRESS)
    result.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    return result


def _setting(value: str | None, flag: str, env: str, default: str) -> tuple[str, str]:
    """The value of a flag, else of its environment variable, else the default, with the
    name to blame when it is bad."""
    if value is not None:
        return value, flag
    if env in os.environ:
        return os.environ[env], f"{env}={os.environ[env]!r}"
    return default, flag


def _admin_address(value: str, name: str) -> tuple[str | None, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{name}: must be host:port, [v6]:port or :port, not {value!r}")
    host = host.strip("[]")
    return (host or None), int(port)


def parse_args(argv: list[str] | None = None) -> Options:
    """The command line; raises UsageError (or exits 2 through argparse) naming what is bad."""
    args = parser().parse_args(argv)
    admin, admin_name = _setting(args.admin, "--admin", ENV_ADMIN, "127.0.0.1:9901")
    admin_host, admin_port = _admin_address(admin, admin_name)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {args.workers}")
    level, level_name = _setting(args.log_level, "--log-level", ENV_LEVEL, "INFO")
    fmt, fmt_name = _setting(args.log_format, "--log-format", ENV_FORMAT, LogFormat.TEXT.value)
    try:
        parse_level(level)
    except LogSetupError as exc:
        raise UsageError(f"{level_name}: {exc}") from None
    try:
        log_format = parse_format(fmt)
    except LogSetupError as exc:
        raise UsageError(f"{fmt_name}: {exc}") from None
    client = None
    if args.controller:
        if not args.load_balancer or "/" not in args.load_balancer or not args.token_file:
            raise UsageError("--controller needs --load-balancer namespace/name and --token-file")
        if not args.controller.startswith("wss://") and not args.insecure_channel:
            # Certificates and keys travel on this channel: never in clear by accident.
            raise UsageError("--controller must be a wss:// URL (--insecure-channel is for tests)")
        client = ClientSettings(
            url=args.controller,
            load_balancer=args.load_balancer,
            node=args.node,
            token_file=args.token_file,
            ca_file=args.ca_file,
            state_dir=args.state_dir,
        )
    return Options(
        config=args.config,
        admin_host=admin_host,
        admin_port=admin_port,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
        watch=not args.no_watch,
        log_level=level,
        log_format=log_format,
        admin_socket=args.admin_socket,
        worker_index=args.worker_index,
        client=client,
    )


class DataPlaneProcess:
    """One data-plane process: a YAML file, the controller or (a worker of `--workers N`
    in controller mode) its parent feeds its runtime."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.metrics = Metrics()
        # Started and closed with the process; each ended connection's record goes to it
        # once the runtime is handed it.
        self.access_log = AccessLog(options.log_format, worker=options.worker_index)
        self.metrics.registry.register(AccessLogCollector(self.access_log))
        # A worker's parent holds the config channel, so only a lone process reports it.
        holds_channel = options.client is not None and options.admin_socket is None
        self.observability = Observability.install(
            self.metrics.registry,
            lambda: self.runtime.snapshot,  # read at scrape time, once the runtime exists
            workers=options.workers,
            worker_index=options.worker_index or 0,
            controller_mode=holds_channel,
        )
        self.runtime = Runtime(
            self.metrics,
            workers=options.workers,
            access_log=self.access_log,
            worker_index=options.worker_index or 0,
            tls_failures=self.observability.tls,
        )
        self.admin = AdminServer(self.metrics.registry, lambda: self.runtime.ready)
        self.stop = asyncio.Event()
        self._stamp: tuple[tuple[float, int, int] | None, ...] = ()
        self._sources: list[Path] = []  # certificate and key files the config names

    @property
    def fed_by_parent(self) -> bool:
        """A worker of `--workers N` in controller mode: snapshots come from its parent."""
        return self.options.client is not None and self.options.admin_socket is not None

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
        self.access_log.start()
        try:
            return await self._run()
        finally:
            self.access_log.flush()  # records still batched on the loop
            await asyncio.to_thread(self.access_log.close)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        client_task = None
        if self.options.client is not None and not self.fed_by_parent:
            client = ConfigClient(self.options.client, self.runtime, self.observability.channel)
            await client.restore()
            client_task = loop.create_task(client.run(self.stop))
        elif self.options.config is not None:
            await self.reload(first=True)
        # Everything allocated so far (modules, config, TLS contexts) lives for the whole
        # process: keep it out of the cyclic GC's full collections, which pause the loop.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])
        if self.options.admin_socket:
            apply = snapshot_receiver(self.runtime.apply) if self.fed_by_parent else None
            await self.admin.start_unix(self.options.admin_socket, apply)
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


async def run_workers(options: Options, runtime_dir: str, argv: list[str]) -> int:
    """The parent of `--workers N`; in controller mode it holds the one config session
    (one node per pod for the controller) and hands each snapshot to every worker."""
    workers = WorkerSet(options, runtime_dir, argv)
    if options.client is None:
        return await workers.run()
    channel = ChannelState()
    workers.registry.register(channel)
    client = ConfigClient(options.client, workers, channel)

    async def session(stop: asyncio.Event) -> None:
        await client.restore()  # once every worker is up: they take it from the parent
        await client.run(stop)

    return await workers.run(session)


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
    # Counters' `_created` series double the scrape for a start time nobody alerts on.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        options = parse_args(argv)
    except UsageError as exc:
        _fail(str(exc))
    logs.configure(options.log_level, options.log_format, worker=options.worker_index)
    try:
        if options.workers > 1 and options.admin_socket is None:
            runtime_dir = tempfile.mkdtemp(prefix="wslb-workers-")
            args = sys.argv[1:] if argv is None else argv
            code = _run(lambda: run_workers(options, runtime_dir, args))
        else:
            code = _run(lambda: DataPlaneProcess(options).run())
    except (ConfigError, StartupError) as exc:
        _fail(str(exc))
    sys.exit(code)


def _fail(message: str) -> NoReturn:
    fail("wslb-dataplane", message)


if __name__ == "__main__":
    main()
