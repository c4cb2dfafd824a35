"""HTTP/1.1 message framing for the proxy: requests from clients, responses from backends.

Sans-I/O: bytes in, events out; no sockets, no loop, no clock. Parsing is llhttp's (through
`httptools`, chosen by measurement: docs/http.md); this module adds what a proxy needs on
top: ambiguous framing refused (never normalised), the Host and target checked against each
other, hop-by-hop fields dropped, the forwarded fields added, limits, keep-alive decisions,
and the hand-over of a WebSocket upgrade to the existing WS path (`Upgrade` event).

A refusal is a `handshake.Rejection` carrying its status: 400 for malformed or ambiguous
requests, 431 for a head over the limit, 413 for a body over the limit, 405 for CONNECT,
505 for a version other than 1.0/1.1, 502 for a backend answer that cannot be relayed.
Every refusal ends the connection: after one, the reader refuses everything.

Bodies come out decoded (chunked framing removed) and are framed again on the way out
(`RequestHead.render` / `ResponseHead.render` say how, `frame_chunk` / `LAST_CHUNK` do it):
re-framing is what guarantees both sides agree on where a message ends. Trailers are
dropped. This module must not buffer a body: every byte of one leaves in the next event.
"""

from __future__ import annotations

import dataclasses
import http
import re
from dataclasses import dataclass
from typing import Literal, NoReturn

import httptools

from dataplane.handshake import _FORWARDED_LOWER
from dataplane.rejection import Rejection

HEAD_LIMIT = 16 * 1024
"""Request head limit (431): the size browsers and most servers use; cookies fit in it."""
MAX_FIELDS = 128
"""Field lines per head (431), the same bound as the WebSocket path's parser."""
RESPONSE_HEAD_LIMIT = 64 * 1024
"""A backend's response head limit (502): generous, since backends are ours to trust."""
VIA = b"1.1 wslb"

Framing = Literal["none", "length", "chunked", "close"]

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"transfer-encoding",  # the proxy frames bodies itself
        b"content-length",  # likewise: re-added from the parsed framing
    }
)
_FORWARDED_BYTES = frozenset(name.encode() for name in _FORWARDED_LOWER)
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Host = uri-host [ ":" port ]; reg-name characters or an IP literal (RFC 3986 §3.2.2)
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]+)(?::([0-9]{0,5}))?")
_DEFAULT_PORT = {b"http": 80, b"https": 443}
_OWS = b" \t"
_OWS_END = (b" ", b"\t")
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_PLAIN = frozenset({b"keep-alive", b"close"})  # Connection values naming nothing else
# what the single pass over a request's fields does with each name
# (kinds from _K_KEPT on are forwarded in place)
_K_LENGTH, _K_CODING, _K_CONNECTION, _K_VIA, _K_HOP, _K_HOST, _K_FORWARDED, _K_EXPECT = range(8)
_K_KEPT = _K_HOST
_SPECIAL = {
    b"content-length": _K_LENGTH,
    b"transfer-encoding": _K_CODING,
    b"host": _K_HOST,
    b"connection": _K_CONNECTION,
    b"via": _K_VIA,
    b"expect": _K_EXPECT,
    **dict.fromkeys(_FORWARDED_BYTES, _K_FORWARDED),
    **dict.fromkeys(_HOP_BY_HOP - {b"content-length", b"transfer-encoding", b"connection"}, _K_HOP),
}

LAST_CHUNK = b"0\r\n\r\n"


def frame_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty data would end the body, so it gives b"")."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def _bad(reason: str) -> Rejection:
    return Rejection(400, reason, label="bad_request")


def _connection_tokens(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            tokens.update(token.strip(_OWS).lower() for token in value.split(b","))
    tokens.discard(b"")
    return tokens


def _end_to_end(
    fields: list[tuple[bytes, bytes]], drop_forwarded: bool
) -> list[tuple[bytes, bytes]]:
    """The fields without the hop-by-hop ones (and those Connection names)."""
    named = _connection_tokens(fields)
    kept = []
    for name, value in fields:
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower in named:
            continue
        if drop_forwarded and lower in _FORWARDED_BYTES:
            continue
        kept.append((name, value))
    return kept


def _render_fields(fields: list[tuple[bytes, bytes]]) -> bytes:
    # one join of plain parts: no generator and no formatting per field. `parts.append`
    # written out, not bound to a local: compiled, that is a native list append (a bound
    # `append` is a Python call each time); CPython 3.11 specializes it too.
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    return b"".join(parts)


# ------------------------------------------------------------------ events


# The per-request events say `init=False` and write `__init__` out: compiled, the
# dataclass-made `__init__` is interpreted Python (about 4k instructions per RequestHead);
# a written one is native. Equality and repr still come from the dataclass.


@dataclass(slots=True, init=False)
class RequestHead:
    """A request's head, checked. `fields` are the received fields (trimmed values, in
    order); `host` is the Host's name, lowercased, without port: what routing reads."""

    method: bytes
    target: bytes  # origin-form (an absolute-form target is rewritten), or b"*"
    version: bytes  # b"1.1" or b"1.0"
    fields: list[tuple[bytes, bytes]]
    host: str
    framing: Framing  # "none", "length" or "chunked"
    content_length: int | None
    keep_alive: bool  # the client allows another request on this connection
    expect_continue: bool
    # prepared for `render` while the fields were checked (one pass over them):
    forward_fields: list[tuple[bytes, bytes]]  # end-to-end fields, without Via
    has_forwarded: bool  # forward_fields hold X-Forwarded-*/Forwarded fields
    via: bytes  # the Via value to send: the received ones and ours
    prior_xff: str
    prior_forwarded: str

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        fields: list[tuple[bytes, bytes]],
        host: str,
        framing: Framing,
        content_length: int | None,
        keep_alive: bool,
        expect_continue: bool,
        forward_fields: list[tuple[bytes, bytes]],
        has_forwarded: bool,
        via: bytes,
        prior_xff: str,
        prior_forwarded: str,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.host = host
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.forward_fields = forward_fields
        self.has_forwarded = has_forwarded
        self.via = via
        self.prior_xff = prior_xff
        self.prior_forwarded = prior_forwarded

    def field(self, name: bytes) -> bytes | None:
        """The first value of a field, by case-insensitive name."""
        lower = name.lower()
        for key, value in self.fields:
            if key.lower() == lower:
                return value
        return None

    def render(self, *, client_ip: str, scheme: str, port: int, forwarded: bool) -> bytes:
        """The head to send to a backend over HTTP/1.1: hop-by-hop fields dropped, Via and
        (when `forwarded`) X-Forwarded-*/Forwarded added the way the WebSocket path adds
        them, and the body framing stated anew (Content-Length or chunked)."""
        fields = self.forward_fields
        if forwarded and self.has_forwarded:
            fields = [field for field in fields if field[0].lower() not in _FORWARDED_BYTES]
        if self.framing == "length":
            framing = b"Content-Length: %d\r\n" % (self.content_length or 0)
        else:
            framing = b"Transfer-Encoding: chunked\r\n" if self.framing == "chunked" else b""
        head = b"%b %b HTTP/1.1\r\n%bVia: %b\r\n%b" % (
            self.method,
            self.target,
            _render_fields(fields),
            self.via,
            framing,
        )
        if not forwarded:
            return head + b"\r\n"
        return head + _forwarded_tail(client_ip, scheme, port, self.prior_xff, self.prior_forwarded)


def _forwarded_tail(
    client_ip: str, scheme: str, port: int, prior_xff: str, prior_forwarded: str
) -> bytes:
    """handshake._forwarded_lines, here so it is compiled with the request path (there it
    runs interpreted, about 4k instructions per request); a unit test holds them equal."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    xff = f"{prior_xff}, {client_ip}" if prior_xff else client_ip
    ours = f"for={node};proto={scheme}"
    forwarded = f"{prior_forwarded}, {ours}" if prior_forwarded else ours
    return (
        f"X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: {scheme}\r\n"
        f"X-Forwarded-Port: {port}\r\nX-Real-IP: {client_ip}\r\n"
        f"Forwarded: {forwarded}\r\n\r\n"
    ).encode("latin-1")


@dataclass(slots=True, init=False)
class Body:
    """Decoded body bytes of the current message."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class EndOfMessage:
    """The current message is complete."""


@dataclass(slots=True)
class Upgrade:
    """A WebSocket upgrade: `head` is the request head (re-rendered from the parsed fields,
    ending in CRLF CRLF) for the WebSocket path to validate; `rest` are the bytes after it.
    The reader takes no more input afterwards."""

    head: bytes
    rest: bytes
    # the parsed head (host, target), for redirects
    request: RequestHead | None = dataclasses.field(default=None, compare=False, repr=False)


RequestEvent = RequestHead | Body | EndOfMessage | Upgrade
_NONE: list[RequestEvent] = []  # shared and never appended to: what an idle reader holds
_NO_FIELDS: list[tuple[bytes, bytes]] = []  # likewise (on_header appends only in a head)


# ------------------------------------------------------------------ requests


class RequestReader:
    """The request side of one client connection: `feed` bytes, get events in order
    (pipelined requests come out one after another); raises `Rejection` on bad input.

    After a request that does not allow keep-alive, later bytes are ignored: the
    connection closes once that request is answered.
    """

    # Slots: one reader lives per idle keep-alive connection.
    __slots__ = (
        "_body_bytes",
        "_closing",
        "_completed",
        "_current",
        "_error",
        "_events",
        "_fields",
        "_head_bytes",
        "_head_size",
        "_in_head",
        "_last_host",
        "_parser",
        "_url",
        "head_limit",
        "max_body",
        "max_fields",
        "requests",
        "salvaged",
    )

    def __init__(
        self,
        *,
        head_limit: int = HEAD_LIMIT,
        max_fields: int = MAX_FIELDS,
        max_body: int | None = None,
    ) -> None:
        self.head_limit = head_limit
        self.max_fields = max_fields
        self.max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[RequestEvent] = []
        self._error: Rejection | None = None
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._body_bytes = 0
        self._current: RequestHead | None = None
        self._closing = False  # a request without keep-alive ended: ignore the rest
        self._completed = False  # a message ended during the current feed
        self._last_host: tuple[bytes, str] = (b"", "")  # the last Host checked, its name
        self.requests = 0
        self.salvaged: list[RequestEvent] = _NONE  # after `feed` raised: the complete
        # requests it parsed before the bad one

    # -------- public

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; return the events it completes. Raises Rejection (and keeps the
        requests it completed first in `salvaged`)."""
        error = self._error  # a local: mypyc must not narrow the attribute to None below
        if error is not None:
            self.salvaged = _NONE
            raise error
        if self._closing or not data:
            return []
        events = self._events = []
        self._completed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset: int = upgrade.args[0]
            self._upgrade(data[offset:])
        except httptools.HttpParserError as exc:
            if self._error is None and not self._closing:
                self._fail(_bad(f"Malformed HTTP request: {exc}"))
        if self._in_head and not self._closing and self._error is None:
            # Unless a message ended earlier in this chunk, all of it is the current head's
            # (exact); after one ended, only the target is counted until the head is done.
            self._head_bytes += self._head_size if self._completed else len(data)
            if self._head_bytes > self.head_limit:
                self._fail(Rejection(431, "Request header fields too large"))
        events = self._events
        if self._error is not None:
            # The requests completed before the bad one are still answered, in order.
            ends = [i for i, event in enumerate(events) if type(event) in (EndOfMessage, Upgrade)]
            self.salvaged = events[: ends[-1] + 1] if ends else []
            raise self._error
        self._events = _NONE  # an idle reader keeps no event (nor the head in it) alive
        return events

    # -------- llhttp callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._fields = []
        self._head_size = 0
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url  # llhttp may hand the target over in pieces
        self._head_size += len(url)
        self._check_head_size()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # else a trailer field: dropped
            if value[-1:] in _OWS_END:
                value = value.rstrip(_OWS)
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self._fields) > self.max_fields:
            self._raise(Rejection(431, "Too many header fields"))
        head = self._check_head()
        self._current = head
        if self.max_body is not None and (head.content_length or 0) > self.max_body:
            self._raise(Rejection(413, "Request body too large", label="body_too_large"))
        self.requests += 1
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self.max_body is not None and self._body_bytes > self.max_body:
            self._raise(Rejection(413, "Request body too large", label="body_too_large"))
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._parser.should_upgrade():
            return  # the Upgrade event replaces the head and its end
        self._completed = True
        self._events.append(EndOfMessage())
        current, self._current = self._current, None  # an idle reader holds no head
        self._fields = _NO_FIELDS
        if current is not None and not current.keep_alive:
            self._closing = True
            raise _Stop  # do not parse what follows a last request

    # -------- checks

    def _check_head_size(self) -> None:
        if self._head_size > self.head_limit:
            self._raise(Rejection(431, "Request header fields too large"))

    def _check_head(self) -> RequestHead:
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._raise(Rejection(505, "HTTP version not supported", label="version"))
            raise AssertionError  # unreachable, for the type checker
        method = parser.get_method()
        if method == b"CONNECT":
            self._raise(Rejection(405, "CONNECT is not supported", label="method"))
        fields = self._fields  # values trimmed by on_header
        kept: list[tuple[bytes, bytes]] = []
        special: list[tuple[int, bytes, bytes]] = []
        size = self._head_size + 4 * len(fields)
        get = _SPECIAL.get
        for field in fields:
            name, value = field
            size += len(name) + len(value)
            lower = name.lower()
            kind = get(lower)
            if kind is None:
                kept.append(field)
                continue
            special.append((kind, lower, value))
            if kind >= _K_KEPT:
                kept.append(field)
        lengths: list[bytes] = []
        codings: list[bytes] = []
        hosts: list[bytes] = []
        connection: list[bytes] = []
        vias: list[bytes] = []
        xff: list[bytes] = []
        prior: list[bytes] = []
        has_forwarded = False
        expect = False
        for kind, lower, value in special:  # usually Host alone, or with Connection
            if kind == _K_HOST:
                hosts.append(value)
            elif kind == _K_LENGTH:
                lengths.append(value)
            elif kind == _K_CODING:
                codings.append(value)
            elif kind == _K_CONNECTION:
                connection.append(value)
            elif kind == _K_VIA:
                vias.append(value)
            elif kind == _K_FORWARDED:
                has_forwarded = True
                if lower == b"x-forwarded-for":
                    xff.append(value)
                elif lower == b"forwarded":
                    prior.append(value)
            elif kind == _K_EXPECT:
                expect = value.lower() == b"100-continue"
            # else another hop-by-hop field: dropped
        if size > self.head_limit:
            self._raise(Rejection(431, "Request header fields too large"))
        if connection and not (len(connection) == 1 and connection[0].lower() in _PLAIN):
            named = _connection_tokens([(b"connection", value) for value in connection])
            if not named <= _HOP_BY_HOP:
                kept = [field for field in kept if field[0].lower() not in named]
        # llhttp refuses all of these already; checked again so a parser leniency or
        # upgrade can never let an ambiguous message through.
        if lengths and codings:
            self._raise(_bad("Both Content-Length and Transfer-Encoding"))
        if len(lengths) > 1 or len(codings) > 1:
            self._raise(_bad("Repeated Content-Length or Transfer-Encoding"))
        framing: Framing = "none"
        length: int | None = None
        if lengths:
            if not (lengths[0].isdigit() and len(lengths[0]) <= 18):
                self._raise(_bad("Invalid Content-Length"))
            length = int(lengths[0])
            framing = "length"
        if codings:
            if codings[0].lower() != b"chunked" or version != b"1.1":
                self._raise(_bad("Transfer-Encoding other than chunked"))
            framing = "chunked"
        if len(hosts) > 1:
            self._raise(_bad("Repeated Host"))
        if not hosts and version == b"1.1":
            self._raise(_bad("Missing Host"))
        host_name = ""
        if hosts:
            if hosts[0] == self._last_host[0]:  # keep-alive: the same Host again
                host_name = self._last_host[1]
            else:
                match = _HOST.fullmatch(hosts[0])
                if match is None:
                    self._raise(_bad("Invalid Host"))
                    raise AssertionError  # unreachable, for the type checker
                host_name = match[1].lower().rstrip(b".").decode("ascii")
                self._last_host = (hosts[0], host_name)
        target = self._check_target(method, hosts[0] if hosts else None)
        # positional: with keywords the compiled constructor builds a dict per request
        return RequestHead(
            method,
            target,
            version,
            fields,
            host_name,
            framing,
            length,
            parser.should_keep_alive(),  # keep_alive
            expect and version == b"1.1",  # expect_continue
            kept,  # forward_fields
            has_forwarded,
            b", ".join([*vias, VIA]) if vias else VIA,  # via
            b", ".join(xff).decode("latin-1") if xff else "",  # prior_xff
            b", ".join(prior).decode("latin-1") if prior else "",  # prior_forwarded
        )

    def _check_target(self, method: bytes, host: bytes | None) -> bytes:
        url = self._url
        if url.startswith(b"/"):
            return url
        if url == b"*" and method == b"OPTIONS":
            return url
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._raise(_bad("Invalid request target"))
        schema = (parsed.schema or b"").lower()
        if schema not in _DEFAULT_PORT or not parsed.host:
            self._raise(_bad("Invalid request target"))
        port = parsed.port or _DEFAULT_PORT[schema]
        match = _HOST.fullmatch(host or b"")
        if match is None:
            self._raise(_bad("Absolute-form target without a valid Host"))
            raise AssertionError
        host_port = int(match[2]) if match[2] else _DEFAULT_PORT[schema]
        target_host = parsed.host.lower()
        if b":" in target_host and not target_host.startswith(b"["):
            target_host = b"[" + target_host + b"]"  # llhttp drops IPv6 brackets
        if target_host != match[1].lower() or port != host_port:
            self._raise(_bad("Request target and Host disagree"))
        path = parsed.path or b"/"
        return path + (b"?" + parsed.query if parsed.query is not None else b"")

    def _upgrade(self, rest: bytes) -> None:
        head = self._current
        if head is None or not _wants_websocket(head.fields):
            # an upgrade to something else (h2c...): llhttp has stopped; refuse rather
            # than guess where the message ends
            self._fail(_bad("Unsupported upgrade"))
            return
        line = b"%b %b HTTP/%b\r\n" % (head.method, head.target, head.version)
        if self._events and self._events[-1] is head:
            self._events.pop()
        self._events.append(Upgrade(line + _render_fields(head.fields) + b"\r\n", rest, head))
        self._closing = True

    def _raise(self, rejection: Rejection) -> NoReturn:
        self._error = rejection
        raise rejection

    def _fail(self, rejection: Rejection) -> None:
        self._error = rejection


class _Stop(Exception):
    """Raised from a callback to stop llhttp after a message that ends the connection."""


def _wants_websocket(fields: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"upgrade"
        and b"websocket" in [t.strip(_OWS).lower() for t in value.split(b",")]
        for name, value in fields
    )


# ------------------------------------------------------------------ responses


@dataclass(slots=True)
class Informational:
    """A 1xx answer other than 101 (e.g. 100 Continue), to relay before the final one."""

    status: int
    fields: list[tuple[bytes, bytes]]

    def render(self) -> bytes:
        fields = _end_to_end(self.fields, drop_forwarded=False)
        return b"HTTP/1.1 %d %b\r\n%b\r\n" % (
            self.status,
            _reason(self.status),
            _render_fields(fields),
        )


@dataclass(slots=True, init=False)
class ResponseHead:
    """A backend's final response head; `framing` is how its body ends on the backend
    side ("none" for HEAD, 204, 304; "close" when it is read until the backend closes)."""

    status: int
    reason: bytes
    fields: list[tuple[bytes, bytes]]
    framing: Framing
    content_length: int | None

    def __init__(
        self,
        status: int,
        reason: bytes,
        fields: list[tuple[bytes, bytes]],
        framing: Framing,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        self.framing = framing
        self.content_length = content_length

    def keep_alive_timeout(self) -> float | None:
        """The backend's `Keep-Alive: timeout=N` in seconds, for the pool (`put(ttl=)`);
        None when absent or unreadable."""
        for name, value in self.fields:
            if name.lower() != b"keep-alive":
                continue
            for param in value.split(b","):
                key, _, number = param.strip(_OWS).partition(b"=")
                if key.lower() == b"timeout" and number.strip(_OWS).isdigit():
                    return float(number.strip(_OWS))
        return None

    def client_framing(self, client_version: bytes) -> Framing:
        """How the body is framed toward the client: a body read to the backend's close
        is chunked for an HTTP/1.1 client (its connection survives), and an HTTP/1.0
        client gets chunked bodies read to close."""
        if self.framing in ("chunked", "close"):
            return "chunked" if client_version == b"1.1" else "close"
        return self.framing

    def render(self, *, client_version: bytes, keep_alive: bool) -> bytes:
        """The head for the client: hop-by-hop fields dropped, Via added, framing per
        `client_framing`, `Connection: close` when the client connection ends after it."""
        # The common answer in one pass: no Connection field, or `Connection: keep-alive`
        # (which names only a hop-by-hop field); anything else takes the general path.
        parts = [b"HTTP/1.1 %d %b\r\n" % (self.status, self.reason)]
        vias: list[bytes] = []
        for name, value in self.fields:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                if lower == b"connection" and value.lower() != b"keep-alive":
                    return self._render(client_version, keep_alive)
                continue
            if lower == b"via":
                vias.append(value)
                continue
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        vias.append(VIA)
        parts.append(b"Via: %b\r\n" % b", ".join(vias))
        framing = self.client_framing(client_version)
        if self.content_length is not None and self.status != 204:
            parts.append(b"Content-Length: %d\r\n" % self.content_length)  # HEAD/304 too
        elif framing == "chunked":
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if not keep_alive or framing == "close":
            parts.append(b"Connection: close\r\n")
        elif client_version == b"1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _render(self, client_version: bytes, keep_alive: bool) -> bytes:
        """`render` for any head: the fields a Connection field names are dropped too."""
        fields = _end_to_end(self.fields, drop_forwarded=False)
        vias = [value for name, value in fields if name.lower() == b"via"]
        fields = [(name, value) for name, value in fields if name.lower() != b"via"]
        fields.append((b"Via", b", ".join([*vias, VIA])))
        framing = self.client_framing(client_version)
        if self.content_length is not None and self.status != 204:
            fields.append((b"Content-Length", b"%d" % self.content_length))  # HEAD/304 too
        elif framing == "chunked":
            fields.append((b"Transfer-Encoding", b"chunked"))
        if not keep_alive or framing == "close":
            fields.append((b"Connection", b"close"))
        elif client_version == b"1.0":
            fields.append((b"Connection", b"keep-alive"))
        return b"HTTP/1.1 %d %b\r\n%b\r\n" % (self.status, self.reason, _render_fields(fields))


ResponseEvent = Informational | ResponseHead | Body | EndOfMessage


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _bad_gateway(reason: str) -> Rejection:
    return Rejection(502, reason, label="bad_response")


class ResponseReader:
    """One backend response to one request (`method` decides whether a body follows):
    `feed` bytes, get events; `feed_eof` when the backend closed. Raises `Rejection`
    (502) when the answer cannot be relayed.

    `reusable` says whether the backend connection may carry another request: only when
    this response was read to its very end, the backend allows keep-alive, and nothing
    followed it.
    """

    def __init__(self, method: bytes, *, head_limit: int = RESPONSE_HEAD_LIMIT) -> None:
        self.method = method
        self.head_limit = head_limit
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[ResponseEvent] = []
        self._error: Rejection | None = None
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._began = False
        self._reason = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head: ResponseHead | None = None
        self._informational = False
        self._keep_alive = False
        self._body_bytes = 0
        self.done = False
        self._extra = False  # bytes after the end of the response
        self._complete = False  # llhttp itself ended the message (not only our framing)

    def restart(self, method: bytes) -> bool:
        """Ready this reader for the next response on the same connection (its parser
        kept: one fewer parser per request). False, and nothing changed, unless the last
        response was read cleanly to its end by llhttp too (after a HEAD answer llhttp
        still expects the body its Content-Length names): then use a new reader."""
        if not (self._complete and self.reusable):
            return False
        self.method = method
        self._events = []
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._began = False
        self._reason = b""
        self._fields = []
        self._head = None
        self._informational = False
        self._keep_alive = False
        self._body_bytes = 0
        self.done = False
        self._complete = False
        return True

    @property
    def head(self) -> ResponseHead | None:
        """The final response head, once read."""
        return self._head

    @property
    def reusable(self) -> bool:
        return (
            self.done
            and self._keep_alive
            and not self._extra
            and self._error is None
            and self._head is not None
            and self._head.framing != "close"
        )

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse `data`; return the events it completes. Raises Rejection."""
        error = self._error  # a local: mypyc must not narrow the attribute to None below
        if error is not None:
            raise error
        if not data:
            return []
        if self.done:
            self._extra = True
            return []
        self._events = []
        self._began = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_bad_gateway("Backend switched protocols on a plain request"))
        except httptools.HttpParserError as exc:
            if self._error is None and not self._extra:
                self._fail(_bad_gateway(f"Malformed backend response: {exc}"))
        if self._in_head and self._error is None:
            self._head_bytes += self._head_size if self._began else len(data)
            if self._head_bytes > self.head_limit:
                self._fail(_bad_gateway("Backend response head too large"))
        if self._error is not None:
            raise self._error
        return self._events

    def feed_eof(self) -> list[ResponseEvent]:
        """The backend closed: the end of a read-to-close body, or a truncated answer."""
        if self._error is not None:
            raise self._error
        if self.done:
            return []
        if self._head is not None and self._head.framing == "close":
            self.done = True
            return [EndOfMessage()]
        self._raise(_bad_gateway("Backend closed the connection before the response ended"))
        return []

    # -------- llhttp callbacks

    def on_message_begin(self) -> None:
        if self.done:
            self._extra = True
            raise _Stop
        self._began = True
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._reason = b""
        self._fields = []

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_size += len(reason) + 15

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: dropped
        self._fields.append((name, value.rstrip(_OWS)))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.head_limit:
            self._raise(_bad_gateway("Backend response head too large"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._raise(_bad_gateway("Backend switched protocols on a plain request"))
            self._informational = True
            self._events.append(Informational(status, self._fields))
            return
        self._informational = False
        self._keep_alive = self._parser.should_keep_alive()
        length: int | None = None
        codings: list[bytes] = []
        for name, value in self._fields:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)  # llhttp has checked it is one valid number
            elif lower == b"transfer-encoding":
                codings.extend(t.strip(_OWS).lower() for t in value.split(b","))
        framing: Framing
        if self.method == b"HEAD" or status in (204, 304):
            framing = "none"
        elif codings:
            framing = "chunked" if codings[-1] == b"chunked" else "close"
            length = None
        elif length is not None:
            framing = "length"
        else:
            framing = "close"
        self._head = ResponseHead(status, self._reason, self._fields, framing, length)
        self._events.append(self._head)
        if framing == "none" or (framing == "length" and length == 0):
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.done:
            self._extra = True
            return
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._events.append(EndOfMessage())

    def _raise(self, rejection: Rejection) -> NoReturn:
        self._error = rejection
        raise rejection

    def _fail(self, rejection: Rejection) -> None:
        self._error = rejection
        self._events = []
