"""The benchmark's echo backend: picows (Cython) on uvloop, every data frame sent back.

The demo backend (`dataplane.echo`, pure-Python websockets) would be the bottleneck;
this one parses frames in Cython and echoes each frame with its own opcode and FIN bit,
so fragmented messages come back fragmented. A Close is answered with the same code
and the server closes TCP first (RFC 6455 §7.1.1). It prints `READY <port>` once it
listens. Run: `python -m bench.echo_fast --port 0`.
"""

from __future__ import annotations

import argparse
import sys

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from bench.procstat import raise_nofile

DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in DATA:
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def _listener(_: WSUpgradeRequest) -> WSListener:
    return Echo()


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(
        _listener,
        host,
        port,
        max_frame_size=64 * 1024 * 1024,
        read_buffer_init_size=4096,  # idle connections stay small; the buffer grows
        websocket_handshake_timeout=10,
        backlog=4096,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_nofile()
    import uvloop

    try:
        uvloop.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
