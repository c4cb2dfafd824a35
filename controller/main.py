"""`wslb-controller`: the process that wires the controller together.

Owns startup and shutdown order: settings, the config server's TLS, the store, the
reconciler, the config server, the health/metrics HTTP server, then kopf (cluster-wide,
or the namespaces of WSLB_WATCH_NAMESPACES). kopf handles SIGTERM/SIGINT; when it
returns, the reconciler stops and the servers close. Nothing here decides what to build.

    /metrics  Prometheus text of ControllerMetrics
    /healthz  200 while the process serves
    /readyz   200 once every kind has listed and the config server is listening
              (or, with no LoadBalancer at all at startup, once it is listening: kopf
              only signals the end of its listing through an object, and with none
              there is no data plane a premature build could harm; builds stay gated)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import kopf
from lightkube import AsyncClient

from controller import handlers
from controller.cluster import FIELD_MANAGER, LightkubeCluster, LoadBalancerResource
from controller.config_server import ConfigServer
from controller.metrics import ControllerMetrics
from controller.owned import DataPlaneParams
from controller.reconciler import Reconciler
from controller.settings import Settings
from controller.store import Store

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
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].decode("ascii", "replace").split("?", 1)[0] if len(parts) > 1 else ""
            status, content_type, body = self._route(path)
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

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", self.metrics.render()
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self.ready():
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"initial listing not complete\n"
        return "404 Not Found", "text/plain", b"not found\n"


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    started: Callable[[int, int], None] | None = None,
) -> None:
    """Run the controller until kopf stops (a signal, or `stop` being set).
    `started(config_port, http_port)` is called once both servers listen (port 0 binds
    an ephemeral port, for tests)."""
    context, ca_pem = server_tls(Path(settings.config_tls_dir))
    metrics = ControllerMetrics()
    store = Store()
    cluster = LightkubeCluster(AsyncClient(field_manager=FIELD_MANAGER))
    reconciler = Reconciler(
        store,
        cluster,
        DataPlaneParams(
            image=settings.image,
            config_url=settings.config_url,
            ca_pem=ca_pem,
            image_pull_policy=settings.image_pull_policy,
            image_pull_secrets=settings.image_pull_secrets,
        ),
        metrics=metrics,
        holdoff=settings.holdoff_seconds,
        max_delay=settings.max_delay_seconds,
        retry=settings.retry_seconds,
    )
    server = ConfigServer(
        tokens=reconciler.token_for,
        ssl_context=context,
        on_change=reconciler.sessions_changed,
        metrics=metrics,
    )
    reconciler.server = server
    nothing_to_sync = asyncio.Event()
    health = HealthServer(
        metrics,
        lambda: server.listening and (reconciler.synced or nothing_to_sync.is_set()),
    )

    registry = kopf.OperatorRegistry()
    handlers.register(registry, store, reconciler, metrics)

    @kopf.on.cleanup(registry=registry)
    async def close_config_server(**_: object) -> None:
        # Before kopf's hung-task phase, which would cancel the connection handlers
        # (data planes would see 1011 after 5 s instead of a prompt 1001).
        await server.close()

    kopf_settings = kopf.OperatorSettings()
    handlers.configure(kopf_settings)

    config_port = await server.start(settings.config_host, settings.config_port)
    http_port = await health.start(settings.config_host, settings.http_port)
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
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop,
        )
    finally:
        for task in (probe_task, loop_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await health.close()
        await server.close()
        await cluster.close()


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


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if settings.log_level.upper() != "DEBUG":
        # kopf logs every handler call at INFO: one line per endpoint change is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        for name in ("httpx", "httpx2"):  # lightkube's HTTP client: one line per request
            logging.getLogger(name).setLevel(logging.WARNING)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
