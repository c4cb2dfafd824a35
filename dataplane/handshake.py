"""The client's opening handshake: parse, validate, rewrite for the backend, or reject.

Parsing and RFC 6455 validation are the `websockets` library's (its HTTP/1.1 parser and
its `ServerProtocol.process_request` checks); this module maps its exceptions to the
HTTP statuses a load balancer answers with, and renders the request forwarded to the
backend with X-Forwarded-* headers. Sans-I/O: bytes in, bytes or a rejection out.

`fast_request` recognises the common, plainly valid upgrade with a few C-level scans and
no header objects; anything it is not sure of (a second Upgrade, an extension offer, a
body, odd spacing) goes to the full parser, so every answer stays the full parser's.
"""

from __future__ import annotations

import http
import re
from dataclasses import dataclass, field

from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidMethod,
    InvalidProtocol,
    InvalidUpgrade,
    SecurityError,
)
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# origin-form request target: printable ASCII only, so nothing can smuggle a line break
_ORIGIN_FORM = re.compile(r"/[!-~]*")

# One shared validator: process_request is synchronous and only sets a few attributes
# we never read, so sharing it across connections on one event loop is safe and saves
# building a protocol object per handshake.
_VALIDATOR = ServerProtocol()

_HOP_BY_HOP_FORWARDED = (
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Real-IP",
    "Forwarded",
)


@dataclass
class Rejection(Exception):
    """An HTTP error answer to a client, before any backend is involved; `label` is the
    reason counted in the rejections metric (derived from the status when not given)."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = "header_too_large" if self.status == 431 else "bad_request"

    def render(self) -> bytes:
        return render_response(self.status, self.reason, self.headers)


def render_response(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    """A short plain-text HTTP/1.1 response that closes the connection."""
    phrase = http.HTTPStatus(status).phrase
    body = (text.rstrip("\n") + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Server: wslb",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------ fast path

_FAST_MAX = 8192  # one websockets line limit: no line of a shorter head can be too long
_FAST_MAX_FIELDS = 128  # websockets' MAX_NUM_HEADERS
_FAST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1\r\n")
# A field line: the value without its surrounding blanks, matched greedily (no lazy
# quantifier: it made this scan several times slower).
_FAST_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?)[ \t]*\r\n"
)
_FAST_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
_FAST_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Headers the checks read: each must appear once for the fast path to decide.
_ONCE = frozenset(
    {b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"origin"}
)
# Headers only the full parser judges (bodies, extension and subprotocol offers).
_FULL_ONLY = frozenset(
    {
        b"transfer-encoding",
        b"content-length",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    }
)


class FastRequest:
    """A plainly valid upgrade recognised by `fast_request`: its head as received, the
    path, the Origin values, and the fields or a `Headers` only when someone asks."""

    __slots__ = (
        "_headers",
        "_items",
        "canonical",
        "fields",
        "forwarded",
        "head",
        "method",
        "origins",
        "path",
    )

    def __init__(
        self,
        head: bytes,
        path: str,
        fields: list[tuple[bytes, bytes]],
        origins: list[str],
        forwarded: bool,
        canonical: bool,
    ) -> None:
        self.method = "GET"
        self.head = head
        self.path = path
        self.fields = fields
        self.origins = origins
        self.forwarded = forwarded  # it carries X-Forwarded-* or Forwarded fields
        self.canonical = canonical  # every field reads "Name: value": rendering is a no-op
        self._items: list[tuple[str, str]] | None = None
        self._headers: Headers | None = None

    @property
    def items(self) -> list[tuple[str, str]]:
        if self._items is None:
            self._items = [(name.decode(), value.decode()) for name, value in self.fields]
        return self._items

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            headers = Headers()
            for name, value in self.items:
                headers[name] = value
            self._headers = headers
        return self._headers

    def raw_items(self) -> list[tuple[str, str]]:
        """The fields as they will be forwarded (after any rewrite of `headers`)."""
        if self._headers is not None:
            return list(self._headers.raw_items())
        return self.items

    @property
    def unchanged(self) -> bool:
        """The received head is what rendering would give: it may be forwarded as is."""
        return self.canonical and self._headers is None


def fast_request(head: bytes) -> FastRequest | None:
    """The request if it is a plainly valid upgrade, else None (use the full parser)."""
    if len(head) > _FAST_MAX or not head.isascii():
        return None
    lines = head.count(b"\n")
    if head.count(b"\r") != lines or head.count(b"\r\n") != lines:
        return None
    line = _FAST_LINE.match(head)
    if line is None:
        return None
    pos = line.end()
    end = len(head) - 2
    seen: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    forwarded = False
    canonical = True
    while pos < end:
        # Anchored at each field: a search (finditer) would rescan from every offset of a line
        # that is not a field, quadratic in its length (8 KiB of it: 0.3 s of a worker's loop).
        match = _FAST_FIELD.match(head, pos, end)
        if match is None or len(fields) >= _FAST_MAX_FIELDS:
            return None  # not a plain field line, or more fields than the full parser allows
        pos = match.end()
        raw_name: bytes = match[1]
        raw_value: bytes = match[2]
        fields.append((raw_name, raw_value))
        if pos - match.start() != len(raw_name) + len(raw_value) + 4:
            canonical = False  # blanks other than one space after the colon
        lower = raw_name.lower()
        if lower in _ONCE:
            if lower in seen:
                return None
            seen[lower] = raw_value
        elif lower in _FULL_ONLY:
            return None
        elif lower in _FORWARDED_BYTES:
            forwarded = True
    if (
        seen.get(b"upgrade", b"").lower() != b"websocket"
        or seen.get(b"sec-websocket-version") != b"13"
        or _FAST_KEY.fullmatch(seen.get(b"sec-websocket-key", b"")) is None
        or not seen.get(b"host")
    ):
        return None
    connection = seen.get(b"connection", b"")
    if connection.lower() != b"upgrade":
        tokens = [token.strip(b" \t") for token in connection.split(b",")]
        if not all(_FAST_TOKEN.fullmatch(token) for token in tokens):
            return None
        if b"upgrade" not in [token.lower() for token in tokens]:
            return None
    origin = seen.get(b"origin")
    return FastRequest(
        head,
        line.group(1).decode(),
        fields,
        [] if origin is None else [origin.decode()],
        forwarded,
        canonical,
    )


# ------------------------------------------------------------------ full parser


_HOST_FIELD = re.compile(rb"\r\nhost:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.IGNORECASE)
_XFF_FIELD = re.compile(rb"\r\nx-forwarded-for:[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)", re.IGNORECASE)


def head_summary(head: bytes) -> tuple[str, str, str, list[str]]:
    """(method, target, Host, X-Forwarded-For values) of a head, for the access log: a
    few searches (~1 us, a parse was ~7), never raising on a head the parsers refused."""
    line_end = head.find(b"\r\n")
    parts = head[: line_end if line_end >= 0 else len(head)].split(b" ")
    method = parts[0].decode("latin-1") if len(parts) == 3 else ""
    target = parts[1].decode("latin-1") if len(parts) == 3 else ""
    host = _HOST_FIELD.search(head)
    return (
        method,
        target,
        host[1].decode("latin-1") if host else "",
        [value.decode("latin-1") for value in _XFF_FIELD.findall(head)],
    )


def parse_request(head: bytes) -> Request:
    """Parse a complete request head (ending in CRLF CRLF) with websockets' parser."""
    reader = StreamReader()
    reader.feed_data(head)
    reader.feed_eof()
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request: Request = done.value
        return request
    except SecurityError as exc:
        raise Rejection(431, f"Request header fields too large: {exc}") from None
    except EOFError:
        raise Rejection(400, "Incomplete HTTP request") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejection(400, f"Malformed HTTP request: {exc}") from None
    except NotImplementedError as exc:
        raise Rejection(400, f"Unsupported HTTP request: {exc}") from None
    raise Rejection(400, "Incomplete HTTP request")


def validate_upgrade(request: Request) -> None:
    """Check an RFC 6455 §4.2.1 upgrade; raise Rejection with the status to answer."""
    try:
        _VALIDATOR.process_request(request)
    except InvalidMethod as exc:
        raise Rejection(405, f"Method not allowed: {exc}", [("Allow", "GET")]) from None
    except InvalidProtocol as exc:
        raise Rejection(505, f"HTTP version not supported: {exc}") from None
    except InvalidUpgrade as exc:
        raise Rejection(
            426,
            f"This endpoint only accepts WebSocket connections: {exc}",
            [("Upgrade", "websocket")],
        ) from None
    except InvalidHeader as exc:
        if exc.name == "Sec-WebSocket-Version":
            raise Rejection(
                426,
                "Unsupported WebSocket version; this server speaks version 13",
                [("Sec-WebSocket-Version", "13")],
            ) from None
        raise Rejection(400, f"Invalid WebSocket handshake: {exc}") from None
    except InvalidHandshake as exc:
        raise Rejection(400, f"Invalid WebSocket handshake: {exc}") from None
    try:
        host = request.headers.get("Host")
    except Exception:
        raise Rejection(400, "Invalid WebSocket handshake: multiple Host headers") from None
    if not host:
        raise Rejection(400, "Invalid WebSocket handshake: missing Host header")
    if not _ORIGIN_FORM.fullmatch(request.path):
        raise Rejection(400, "Invalid request target")


def render_request(
    request: Request | FastRequest,
    *,
    client_ip: str,
    scheme: str,
    port: int,
    forwarded: bool,
) -> bytes:
    """The request forwarded to the backend, over HTTP/1.1, with X-Forwarded-* added."""
    if isinstance(request, FastRequest) and request.unchanged:
        if not forwarded:
            return request.head
        if not request.forwarded:
            return request.head[:-2] + _forwarded_lines(client_ip, scheme, port, "", "")
    lines = [f"{request.method} {request.path} HTTP/1.1"]
    items = (
        request.raw_items()
        if isinstance(request, FastRequest)
        else list(request.headers.raw_items())
    )
    prior_xff = ", ".join(value for name, value in items if name.lower() == "x-forwarded-for")
    prior_forwarded = ", ".join(value for name, value in items if name.lower() == "forwarded")
    for name, value in items:
        if forwarded and name.lower() in _FORWARDED_LOWER:
            continue
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    if forwarded:
        return head + _forwarded_lines(client_ip, scheme, port, prior_xff, prior_forwarded)
    return head + b"\r\n"


def _forwarded_lines(
    client_ip: str, scheme: str, port: int, prior_xff: str, prior_forwarded: str
) -> bytes:
    """The X-Forwarded-* and Forwarded fields the proxy adds, and the head's end."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    ours = f"for={node};proto={scheme}"
    return (
        f"X-Forwarded-For: {prior_xff + ', ' if prior_xff else ''}{client_ip}\r\n"
        f"X-Forwarded-Proto: {scheme}\r\n"
        f"X-Forwarded-Port: {port}\r\n"
        f"X-Real-IP: {client_ip}\r\n"
        f"Forwarded: {prior_forwarded + ', ' if prior_forwarded else ''}{ours}\r\n\r\n"
    ).encode("latin-1")


_FORWARDED_LOWER = frozenset(name.lower() for name in _HOP_BY_HOP_FORWARDED)
_FORWARDED_BYTES = frozenset(name.encode() for name in _FORWARDED_LOWER)


@dataclass(frozen=True)
class BackendAnswer:
    """The status line and header block of the backend's answer to the upgrade."""

    status: int
    head: bytes
    headers: Headers
    content_length: int | None


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# A 101 whose every line holds only tab, printable ASCII or latin-1 and ends in CRLF: what
# the scans below accept for a 101, in one pass.
_CLEAN_101 = re.compile(
    rb"HTTP/1\.[0-9] 101 [\t\x20-\x7e\x80-\xff]*\r\n(?:[\t\x20-\x7e\x80-\xff]*\r\n)*"
)


def parse_status_line(head: bytes) -> int:
    """The status code of a backend's response head; ValueError when not HTTP/1.x or
    when the head holds control characters or bare CR/LF (cheap scans, no parsing)."""
    if _CLEAN_101.fullmatch(head) is not None:
        return 101  # the usual answer, checked in one scan
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or _CONTROL.search(head):
        raise ValueError("control characters in the response head")
    status_line = head[: head.find(b"\r\n")].decode("latin-1")
    parts = status_line.split(" ", 2)
    code = parts[1] if len(parts) >= 2 else ""
    valid = len(code) == 3 and code.isascii() and code.isdecimal()
    if not parts[0].startswith("HTTP/1.") or not valid:
        raise ValueError(f"bad status line {status_line[:80]!r}")
    return int(code)


def parse_backend_head(head: bytes) -> BackendAnswer:
    """Parse the backend's response head; raise ValueError when it is not HTTP/1.x."""
    status = parse_status_line(head)
    line_end = head.find(b"\r\n")
    headers = Headers()
    for line in head[line_end + 2 : -4].split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError("bad header line")
        try:
            headers[name.decode("latin-1")] = value.decode("latin-1").strip()
        except InvalidHeader as exc:
            raise ValueError(f"bad header: {exc}") from None
    length = headers.get_all("Content-Length")
    content_length = (
        int(length[0])
        if len(length) == 1 and length[0].isascii() and length[0].isdecimal()
        else None
    )
    return BackendAnswer(status, head, headers, content_length)


def render_backend_head(answer: BackendAnswer, status_line: bytes | None = None) -> bytes:
    """Re-render a (possibly modified) backend head."""
    first = status_line or answer.head[: answer.head.find(b"\r\n")]
    lines = [first.decode("latin-1")]
    lines.extend(f"{name}: {value}" for name, value in answer.headers.raw_items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
