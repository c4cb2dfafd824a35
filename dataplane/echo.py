"""Demo echo backend: a small websockets server for demos, tests and e2e pods.

It echoes every message back unchanged. A text message `whoami` is answered with the
backend's name instead, so a client can tell which backend it reached, and `peer` with the
address the connection came from (behind a load balancer: which data plane relays it). It
also serves plain HTTP GET `/healthz` (200) for HTTP health checks and readiness probes,
and negotiates permessage-deflate and any subprotocol listed with `--subprotocol`.

Plain GET `/` is a demo page (dataplane/demo_page.py) whose script calls GET `/api/info`
(JSON: `name` of the backend that answered, and the forwarded headers it saw), then opens
a WebSocket back to its own origin, so a person, or a headless browser in the tests, sees
HTTP and WebSocket served through one listener. Any other plain GET keeps websockets' 426.

On SIGTERM it closes its open connections with 1001, as a well-behaved backend does. With
`--hold-on-sigterm` it only stops accepting (so readiness fails) and keeps open connections
until their peers close them, then exits: a backend that never says goodbye by itself, so a
test through the load balancer sees a 1001 only if the load balancer drains.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import os
import signal
import socket

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from dataplane import demo_page
from lbwire import logs
from lbwire.programs import OneLineParser

log = logging.getLogger("wslb.echo")


def make_http_answers(name: str) -> object:
    """websockets' process_request: plain GETs of /healthz, the demo page and /api/info get
    their answer; anything else, and every upgrade, goes on to the WebSocket handshake."""

    def answer(connection: ServerConnection, request: Request) -> Response | None:
        if "Upgrade" in request.headers:
            return None
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/":
            response = connection.respond(http.HTTPStatus.OK, demo_page.HTML)
            del response.headers["Content-Type"]  # Headers is a multidict: replace, not add
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            response.headers.update(demo_page.SECURITY_HEADERS)
            return response
        if path == "/api/info":
            info = {
                "name": name,
                "peer": str(connection.remote_address[0]),
                "forwardedFor": request.headers.get("X-Forwarded-For"),
                "forwardedProto": request.headers.get("X-Forwarded-Proto"),
            }
            response = connection.respond(http.HTTPStatus.OK, json.dumps(info) + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            response.headers["Cache-Control"] = "no-store"
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        return None

    return answer


def make_handler(name: str) -> object:
    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                if message == "whoami":
                    await connection.send(name)
                elif message == "peer":
                    await connection.send(str(connection.remote_address[0]))
                else:
                    await connection.send(message)
        except ConnectionClosed:
            pass

    return echo


async def start_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    subprotocols: list[str] | None = None,
    sock: socket.socket | None = None,
) -> Server:
    """Start an echo server (port 0 picks a free port; read it from `server.sockets`)."""
    backend_name = name or f"echo-{os.getpid()}"

    def add_name(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["X-Backend"] = backend_name

    kwargs: dict[str, object] = {}
    if sock is not None:
        kwargs["sock"] = sock
    else:
        kwargs["host"] = host
        kwargs["port"] = port
    return await serve(
        make_handler(backend_name),  # type: ignore[arg-type]
        process_request=make_http_answers(backend_name),  # type: ignore[arg-type]
        process_response=add_name,
        subprotocols=subprotocols or None,  # type: ignore[arg-type]
        max_size=None,
        ping_interval=None,
        **kwargs,  # type: ignore[arg-type]
    )


def bound_port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


async def _main(args: argparse.Namespace) -> None:
    server = await start_echo(args.host, args.port, args.name, args.subprotocol)
    log.info("echo backend %s listening on %s:%d", args.name, args.host, bound_port(server))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop
    if args.hold_on_sigterm:
        log.info(
            "stopping: no new connections; holding %d open until their peers close them",
            len(server.connections),
        )
    server.close(close_connections=not args.hold_on_sigterm)
    await server.wait_closed()
    log.info("stopped")


def port(value: str) -> int:
    """A TCP port number, 0 for any (argparse names the type "port" in its error)."""
    port = int(value)
    if not 0 <= port < 65536:  # 0: the kernel picks one (tests)
        raise ValueError(value)
    return port


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="wslb-echo", description=__doc__.splitlines()[0])
    # WSLB_-prefixed: Kubernetes service links inject ECHO_PORT=tcp://... into pods.
    parser.add_argument("--host", default=os.environ.get("WSLB_ECHO_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port",
        type=port,
        default=os.environ.get("WSLB_ECHO_PORT", "9001"),  # a string: argparse checks it too
        help="TCP port (default 9001, or $WSLB_ECHO_PORT)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("WSLB_ECHO_NAME")
        or os.environ.get("POD_NAME")
        or socket.gethostname(),
        help="what `whoami` answers (default: $WSLB_ECHO_NAME, $POD_NAME or the host name)",
    )
    parser.add_argument("--subprotocol", action="append", default=[])
    parser.add_argument(
        "--hold-on-sigterm",
        action="store_true",
        help="on SIGTERM stop accepting but keep open connections until their peers close them",
    )
    logs.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        logs.configure(args.log_level, args.log_format)
    except logs.LogSetupError as exc:
        parser.error(str(exc))
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
