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

import re
from dataclasses import dataclass

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

from dataplane.rejection import Rejection as Rejection  # re-exported: http_proxy imports it here

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


# ------------------------------------------------------------------ fast path

_FAST_MAX = 8192  # one websockets line limit: no line of a shorter head can be too long
_FAST_MAX_FIELDS = 128  # websockets' MAX_NUM_HEADERS
_FAST_LINE = re.compile(rb"GET (/[!-~]*) HTTP/1\.1")
# Controls but tab, CR and LF become NUL, the rest stays: a NUL after this table means the
# head holds a control (CR and LF are checked to come in pairs). `translate` with a table is
# one C loop; with a delete set it builds its table per call (several times slower).
_FAST_CONTROLS = bytes(
    0 if (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F else byte
    for byte in range(256)
)
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FAST_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?)"
    rb"[ \t]*\r\n"
)
# What the fast path does with a field, by lowercased name.
_ONCE, _FULL_ONLY, _FORWARDED = 1, 2, 3
_FAST_NAMES = {
    # The checks read these: each must appear once for the fast path to decide.
    **dict.fromkeys(
        (b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version"),
        _ONCE,
    ),
    b"origin": _ONCE,
    # Only the full parser judges these (bodies, extension and subprotocol offers).
    **dict.fromkeys(
        (
            b"transfer-encoding",
            b"content-length",
            b"sec-websocket-extensions",
            b"sec-websocket-protocol",
        ),
        _FULL_ONLY,
    ),
    **dict.fromkeys(
        (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-port", b"x-real-ip", b"forwarded"),
        _FORWARDED,
    ),
}
_FAST_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
_FAST_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")


class FastRequest:
    """A plainly valid upgrade recognised by `fast_request`: its head as received, the
    path, Host and Origin values; the fields, or a `Headers`, only when someone asks."""

    __slots__ = (
        "_fields",
        "_headers",
        "_items",
        "canonical",
        "forwarded",
        "head",
        "host",
        "method",
        "origins",
        "path",
    )

    def __init__(
        self,
        head: bytes,
        path: str,
        host: str,
        origins: list[str],
        forwarded: bool,
        canonical: bool,
    ) -> None:
        self.method = "GET"
        self.head = head
        self.path = path
        self.host = host
        self.origins = origins
        self.forwarded = forwarded  # it carries X-Forwarded-* or Forwarded fields
        self.canonical = canonical  # every field reads "Name: value": rendering is a no-op
        self._fields: list[tuple[bytes, bytes]] | None = None
        self._items: list[tuple[str, str]] | None = None
        self._headers: Headers | None = None

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """(name, value) of every field line, as received (blanks around values dropped)."""
        if self._fields is None:
            head = self.head
            pos = head.find(b"\r\n") + 2
            end = len(head) - 2
            fields = []
            while pos < end:
                match = _FAST_FIELD.match(head, pos, end)
                if match is None:  # not reached: _FAST_HEAD accepted every line
                    break
                fields.append((match[1], match[2]))
                pos = match.end()
            self._fields = fields
        return self._fields

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


def _canonical_field(text: bytes, colon: int) -> bool:
    """The field line reads "Name: value": one space after the colon, no other blank
    around the value (what rendering the field would give)."""
    size = len(text)
    if size == colon + 2:
        return text[colon + 1] == 32  # "Name: " with an empty value
    if size < colon + 2 or text[colon + 1] != 32:
        return False
    return text[colon + 2] not in (32, 9) and text[size - 1] not in (32, 9)


def fast_request(head: bytes) -> FastRequest | None:
    """The request if it is a plainly valid upgrade, else None (use the full parser).

    C-level scans of the whole head first (only printable ASCII, tab and CRLF pairs: a
    field value then needs no check of its own), then one pass over the lines: a token
    name and a colon each, and the few fields the checks read."""
    if len(head) > _FAST_MAX or not head.isascii() or b"\0" in head.translate(_FAST_CONTROLS):
        return None
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf or crlf - 2 > _FAST_MAX_FIELDS:
        return None
    lines = head.split(b"\r\n")  # the request line, the fields, b"", b""
    line = _FAST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    seen: dict[bytes, bytes] = {}
    forwarded = False
    canonical = True  # every field reads "Name: value": the head may be forwarded as is
    for index in range(1, crlf - 1):
        text = lines[index]
        colon = text.find(b":")
        if colon <= 0:
            return None
        name = text[:colon]
        if not name.replace(b"-", b"").isalnum() and name.translate(None, _TOKEN_CHARS):
            return None  # (the usual name is letters and hyphens: one C check, no table)
        if canonical and not _canonical_field(text, colon):
            canonical = False
        lower = name.lower()
        kind = _FAST_NAMES.get(lower)
        if kind is None:
            continue
        if kind == _ONCE:
            if lower in seen:
                return None
            seen[lower] = text[colon + 1 :].strip(b" \t")
        elif kind == _FULL_ONLY:
            return None
        else:
            forwarded = True
    if (
        seen.get(b"upgrade", b"").lower() != b"websocket"
        or seen.get(b"sec-websocket-version") != b"13"
        or _FAST_KEY.fullmatch(seen.get(b"sec-websocket-key", b"")) is None
    ):
        return None
    host = seen.get(b"host")
    if not host:
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
        line[1].decode(),
        host.decode(),
        [] if origin is None else [origin.decode()],
        forwarded,
        canonical,
    )


# ------------------------------------------------------------------ full parser


def head_summary(head: bytes) -> tuple[str, str, str, list[str]]:
    """(method, target, Host, X-Forwarded-For values) of a head, for the access log: a
    few C-level searches of the lowercased head (a case-insensitive regex scanned every
    byte), never raising on a head the parsers refused."""
    line_end = head.find(b"\r\n")
    parts = head[: line_end if line_end >= 0 else len(head)].split(b" ")
    method = parts[0].decode("latin-1") if len(parts) == 3 else ""
    target = parts[1].decode("latin-1") if len(parts) == 3 else ""
    lower = head.lower()
    host = _field_values(head, lower, b"\r\nhost:", 1)
    return (
        method,
        target,
        host[0] if host else "",
        _field_values(head, lower, b"\r\nx-forwarded-for:", _FAST_MAX_FIELDS),
    )


def _field_values(head: bytes, lower: bytes, prefix: bytes, most: int) -> list[str]:
    """The values (blanks around them dropped) of the first `most` fields whose line
    starts with `prefix` (CRLF, lowercased name, colon) in `lower`, read from `head`."""
    values: list[str] = []
    start = lower.find(prefix)
    while start >= 0 and len(values) < most:
        value_start = start + len(prefix)
        end = head.find(b"\r\n", value_start)
        if end < 0:
            break
        values.append(head[value_start:end].strip(b" \t").decode("latin-1"))
        start = lower.find(prefix, end)
    return values


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
    # An explicit, never backward, end: compiled, a slice whose end falls before its
    # start raised SystemError (a head with no field: "HTTP/1.1 200 OK\r\n\r\n").
    fields_end = max(line_end + 2, len(head) - 4)
    for line in head[line_end + 2 : fields_end].split(b"\r\n"):
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
