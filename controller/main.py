"""`wslb-controller`: the process that wires the controller together.

Owns startup and shutdown order: settings, the config server's TLS, the store, the
reconciler, the config server, the health/metrics HTTP server, then kopf (cluster-wide,
or the namespaces of WSLB_WATCH_NAMESPACES). kopf handles SIGTERM/SIGINT; when it
returns, the reconciler stops and the servers close. Nothing here decides what to build.

    /metrics  ControllerMetrics as Prometheus text, or OpenMetrics when the scraper's
              Accept header asks for it; no `_created` series (process-wide)
    /healthz  200 while the process serves
    /readyz   200 once every kind has listed and the config server is listening
              (or, with no LoadBalancer at all at startup, once it is listening: kopf
              only signals the end of its listing through an object, and with none
              there is no data plane a premature build could harm; builds stay gated)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import kopf
import prometheus_client
from lightkube import AsyncClient

from controller import handlers
from controller.cluster import FIELD_MANAGER, LightkubeCluster, LoadBalancerResource
from controller.config_server import ConfigServer
from controller.election import Elector, LightkubeLeases, PodLabel
from controller.metrics import ControllerMetrics
from controller.owned import DataPlaneParams
from controller.pull_secrets import PullSecrets
from controller.reconciler import Reconciler
from controller.settings import Settings, SettingsError
from controller.store import Store
from lbwire import logs
from lbwire.programs import OneLineParser, fail

log = logging.getLogger("wslb.controller")

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0


def server_tls(directory: Path) -> tuple[ssl.SSLContext, str]:
    """The config server's TLS context and the CA PEM data planes must trust."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    ca = directory / "ca.crt"
    ca_pem = ca.read_text() if ca.exists() else (directory / "tls.crt").read_text()
    return context, ca_pem


class HealthServer:
    """A tiny HTTP/1.1 server for the kubelet's probes and Prometheus."""

    def __init__(self, metrics: ControllerMetrics, ready: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.ready = ready
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            request_line, *fields = head.decode("latin-1").split("\r\n")
            parts = request_line.split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            status, content_type, body = self._route(path, _header(fields, "accept"))
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, path: str, accept: str = "") -> tuple[str, str, bytes]:
        if path == "/metrics":
            body, content_type = self.metrics.render(accept)
            return "200 OK", content_type, body
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"initial listing not complete\n"
        return "404 Not Found", "text/plain", b"not found\n"


def _header(fields: Sequence[str], name: str) -> str:
    """The value of header `name` (lower case) among a request's header lines, or ""."""
    for field in fields:
        key, sep, value = field.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    started: Callable[[int, int], None] | None = None,
) -> None:
    """Run the controller until kopf stops (a signal, or `stop` being set).
    `started(config_port, http_port)` is called once both servers listen (port 0 binds
    an ephemeral port, for tests)."""
    # A `_created` series per counter doubles the series count for a timestamp nothing reads.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    context, ca_pem = server_tls(Path(settings.config_tls_dir))
    metrics = ControllerMetrics()
    store = Store()
    cluster = LightkubeCluster(AsyncClient(field_manager=FIELD_MANAGER))
    stop_flag = stop if stop is not None else asyncio.Event()
    elector: Elector | None = None
    label: PodLabel | None = None
    if settings.leader_election:
        leases = LightkubeLeases(cluster.client, settings.namespace, settings.lease_name)
        elector = Elector(leases, settings.pod_name, settings.lease_duration_seconds)
        label = PodLabel(cluster.client, settings.namespace, settings.pod_name)
    reconciler = Reconciler(
        store,
        cluster,
        DataPlaneParams(
            image=settings.image,
            config_url=settings.config_url,
            ca_pem=ca_pem,
            image_pull_policy=settings.image_pull_policy,
            image_pull_secrets=settings.image_pull_secrets,
            scrape_annotations=settings.scrape_annotations,
            log_format=settings.log_format,
        ),
        metrics=metrics,
        holdoff=settings.holdoff_seconds,
        max_delay=settings.max_delay_seconds,
        retry=settings.retry_seconds,
        pull_secrets=PullSecrets(settings.image_pull_secrets, settings.namespace),
    )
    server = ConfigServer(
        tokens=reconciler.token_for,
        ssl_context=context,
        on_change=reconciler.sessions_changed,
        metrics=metrics,
    )
    reconciler.server = server
    nothing_to_sync = asyncio.Event()

    def ready() -> bool:
        if elector is not None and not elector.leading:
            return True  # a standby is healthy; the config Service selects the leader only
        return server.listening and (reconciler.synced or nothing_to_sync.is_set())

    health = HealthServer(metrics, ready)

    registry = kopf.OperatorRegistry()
    handlers.register(registry, store, reconciler, metrics)

    @kopf.on.cleanup(registry=registry)
    async def close_config_server(**_: object) -> None:
        # Before kopf's hung-task phase, which would cancel the connection handlers
        # (data planes would see 1011 after 5 s instead of a prompt 1001).
        await server.close()

    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings)

    http_port = await health.start(settings.config_host, settings.http_port)
    lost = asyncio.Event()
    keeper: asyncio.Task[None] | None = None
    labeller: asyncio.Task[None] | None = None
    if elector is not None and label is not None:
        if not await _stand_by(elector, label, stop_flag, metrics):
            await health.close()
            await cluster.close()
            return
        keeper = asyncio.create_task(_keep(elector, stop_flag, lost), name="lease")
        labeller = asyncio.create_task(_label_until_done(label), name="leader label")
    loop_task: asyncio.Task[None] | None = None
    probe_task: asyncio.Task[None] | None = None
    try:
        metrics.leader.set(1)
        config_port = await server.start(settings.config_host, settings.config_port)
        if started is not None:
            started(config_port, http_port)
        loop_task = asyncio.create_task(reconciler.run(), name="reconciler")
        namespaces = list(settings.watch_namespaces)
        probe_task = asyncio.create_task(
            _no_load_balancers(cluster.client, namespaces, nothing_to_sync), name="startup probe"
        )
        log.info(
            "watching %s; data planes dial %s",
            ", ".join(namespaces) or "all namespaces",
            settings.config_url,
        )
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop_flag,
        )
    finally:
        for task in (probe_task, loop_task, keeper, labeller):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await health.close()
        await server.close()
        if elector is not None and label is not None:
            if not lost.is_set():
                await elector.release()  # the standby need not wait the Lease out
            await _quietly(label.stand_by(), "leader label not removed")
        metrics.leader.set(0)
        await cluster.close()
    if lost.is_set():
        raise LeadershipLost(f"{settings.pod_name} lost the Lease {settings.lease_name}")


class LeadershipLost(RuntimeError):
    """Another replica leads now: this process exits and comes back as a standby."""


async def _stand_by(
    elector: Elector, label: PodLabel, stop: asyncio.Event, metrics: ControllerMetrics
) -> bool:
    """Wait for the Lease; False when stopped first. Nothing is watched or served
    meanwhile, so a standby cannot reconcile or answer a data plane."""
    metrics.leader.set(0)
    # A pod keeps its labels across container restarts: a former leader must not keep
    # attracting data planes while it stands by.
    await _quietly(label.stand_by(), "leader label not removed")
    log.info("standing by for the Lease")
    with _stop_on_signals(stop):
        acquire = asyncio.create_task(elector.acquire(), name="acquire lease")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acquire, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return elector.leading


async def _keep(elector: Elector, stop: asyncio.Event, lost: asyncio.Event) -> None:
    """Renew the Lease; when it is lost, stop everything at once."""
    await elector.keep()
    lost.set()
    stop.set()


async def _label_until_done(label: PodLabel, retry: float = 2.0) -> None:
    """Label this pod the leader, retrying: until it is, data planes cannot reach us."""
    while True:
        try:
            await label.lead()
        except Exception as exc:
            log.warning("leader label not set (%s); retrying", exc)
            await asyncio.sleep(retry)
        else:
            return


async def _quietly(call: Awaitable[None], what: str) -> None:
    try:
        await call
    except Exception as exc:
        log.warning("%s: %s", what, exc)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while kopf (which handles them later) is not running."""
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
            installed.append(number)
    try:
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)


async def _no_load_balancers(
    client: AsyncClient, namespaces: list[str], flag: asyncio.Event
) -> None:
    """Set `flag` when no LoadBalancer exists in the watched namespaces at startup."""
    try:
        for namespace in namespaces or ["*"]:
            async for _ in client.list(LoadBalancerResource, namespace=namespace, chunk_size=1):
                return
    except Exception as exc:
        log.info("startup probe of LoadBalancers failed (%s); ready after listing", exc)
        return
    flag.set()


def parser() -> argparse.ArgumentParser:
    """The command line: no flags but --help and --version; settings come from the
    environment (controller/settings.py), which the chart sets."""
    names = "\n".join(f"  {line}" for line in Settings.variables())
    return OneLineParser(
        prog="wslb-controller",
        description="The wslb controller: watches LoadBalancers and Listeners, builds one "
        "config snapshot per LoadBalancer, owns the data-plane objects and serves the "
        "config channel to data planes.",
        epilog=f"Settings are environment variables:\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        server_tls(Path(settings.config_tls_dir))  # fail here, in one line, not mid-startup
    except SettingsError as exc:
        _fail(str(exc))
    except (OSError, ssl.SSLError) as exc:
        where = os.environ.get("WSLB_CONFIG_TLS_DIR") or Settings().config_tls_dir
        _fail(f"WSLB_CONFIG_TLS_DIR={where!r}: cannot load tls.crt and tls.key: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    if settings.log_level.upper() != "DEBUG":
        # kopf logs every handler call at INFO: one line per endpoint change is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        for name in ("httpx", "httpx2"):  # lightkube's HTTP client: one line per request
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        asyncio.run(run(settings))
    except LeadershipLost as exc:
        # The kubelet restarts the container; it comes back as a standby.
        print(f"wslb-controller: {exc}", file=sys.stderr)
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    fail("wslb-controller", message)


if __name__ == "__main__":
    main()
