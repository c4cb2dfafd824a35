"""Parser choice for the HTTP/1.1 path: llhttp (through `httptools`) against `h11`.

Two things, measured in one sitting: the cost of parsing a typical keep-alive GET and a
chunked POST (timeit, best of several repeats), and what each raw parser does with the
request-smuggling table (accepted, or refused with which error). Run:

    .venv/bin/python -m bench.http_parsers

Needs `httptools` and `h11` installed (both are in the project's dependencies once the
HTTP path lands; until then `pip install httptools h11` into the venv).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import h11
import httptools

GET = (
    b"GET /api/items?page=2 HTTP/1.1\r\n"
    b"Host: app.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Cookie: session=abcdef0123456789; wslb=xyz\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
POST = (
    b"POST /upload HTTP/1.1\r\n"
    b"Host: app.example.com\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n"
)

# name -> request bytes; every one of these must be refused by a proxy (RFC 9112 §6.3).
SMUGGLING: dict[str, bytes] = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_repeated_same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\nx",
    "cl_repeated_diff": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxy",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    "cl_sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    "cl_hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\nx",
    "te_not_chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te_chunked_not_last": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    "te_chunked_twice": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "ctl_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "absolute_host_mismatch": b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "chunk_size_garbage": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1;\x00\r\nx\r\n0\r\n\r\n",
}


class _Sink:
    """httptools callbacks that do what a proxy's would: keep the headers and body."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done += 1


def parse_httptools(data: bytes) -> int:
    sink = _Sink()
    parser = httptools.HttpRequestParser(sink)
    parser.feed_data(data)
    return sink.done


def parse_h11(data: bytes) -> int:
    """h11 as a server; its events are what a proxy would read (head, data, end)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    done = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return done
        if isinstance(event, h11.EndOfMessage):
            done += 1


def wslb_layer(data: bytes) -> int:
    """The proxy's own layer on top of llhttp: checks, events, and the backend head."""
    from dataplane.http1 import EndOfMessage, RequestHead, RequestReader

    done = 0
    for event in RequestReader().feed(data):
        if isinstance(event, RequestHead):
            event.render(client_ip="192.0.2.1", scheme="http", port=80, forwarded=True)
        elif isinstance(event, EndOfMessage):
            done += 1
    return done


def _outcome(parse: Callable[[bytes], int], data: bytes) -> str:
    try:
        done = parse(data)
    except Exception as exc:
        return f"refused ({type(exc).__name__}: {str(exc)[:50]})"
    return "ACCEPTED" if done else "ACCEPTED (waits for more)"


def main() -> None:
    number = 20000
    for name, data in (("keep-alive GET", GET), ("chunked POST 2 KiB", POST)):
        parsers = (("httptools", parse_httptools), ("h11", parse_h11), ("wslb", wslb_layer))
        for label, parse in parsers:
            assert parse(data) == 1, (label, name)
            best = min(timeit.repeat(lambda p=parse, d=data: p(d), number=number, repeat=5))
            print(f"{name:20} {label:10} {best / number * 1e6:7.2f} us/request")
    print()
    print(f"{'case':24} {'httptools (llhttp)':45} h11")
    for name, data in SMUGGLING.items():
        print(f"{name:24} {_outcome(parse_httptools, data):45} {_outcome(parse_h11, data)}")


if __name__ == "__main__":
    main()
