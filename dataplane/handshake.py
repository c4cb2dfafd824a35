"""The client's opening handshake: parse, validate, rewrite for the backend, or reject.

Parsing and RFC 6455 validation are the `websockets` library's (its HTTP/1.1 parser and
its `ServerProtocol.process_request` checks); this module maps its exceptions to the
HTTP statuses a load balancer answers with, and renders the request forwarded to the
backend with X-Forwarded-* headers. Sans-I/O: bytes in, bytes or a rejection out.

`fast_request` recognises the common, plainly valid upgrade with a few C-level scans and
no header objects; anything it is not sure of (a second Upgrade, a subprotocol offer, a
body, odd spacing) goes to the full parser, so every answer stays the full parser's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

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

if TYPE_CHECKING:
    from mypy_extensions import i64

from dataplane.rejection import Rejection as Rejection  # re-exported: http_proxy imports it here

HEAD_END: Final = b"\r\n\r\n"
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

_FAST_MAX: Final = 8192  # one websockets line limit: no line of a shorter head can be too long
_FAST_MAX_FIELDS: Final = 128  # websockets' MAX_NUM_HEADERS
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# 1 at each byte value that may appear in a field name (RFC 9110 tchar), else 0.
_IS_TOKEN: Final = bytes(1 if byte in _TOKEN_CHARS else 0 for byte in range(256))
_FAST_FIELD = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?)"
    rb"[ \t]*\r\n"
)
# What the fast path does with a field, by lowercased name: the fields its checks read
# (each must appear once), those only the full parser judges (bodies, subprotocol
# offers), the forwarding ones (their presence is noted), and the rest (0). An extension
# offer is one of the rest: the validator negotiates no extension and never reads it
# (the backend's 101 decides, and the relay learns the outcome from it).
# (module constants declared Final: compiled, each use is a C static, not a dict lookup)
_HOST: Final = 1
_UPGRADE: Final = 2
_CONNECTION: Final = 3
_KEY: Final = 4
_VERSION: Final = 5
_ORIGIN: Final = 6
_FULL_ONLY: Final = 7
_FORWARDED: Final = 8
_FAST_NAMES: Final = {
    b"host": _HOST,
    b"upgrade": _UPGRADE,
    b"connection": _CONNECTION,
    b"sec-websocket-key": _KEY,
    b"sec-websocket-version": _VERSION,
    b"origin": _ORIGIN,
    **dict.fromkeys(
        (
            b"transfer-encoding",
            b"content-length",
            b"sec-websocket-protocol",
        ),
        _FULL_ONLY,
    ),
    **dict.fromkeys(
        (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-port", b"x-real-ip", b"forwarded"),
        _FORWARDED,
    ),
}
# The usual spellings of those and of other common fields, looked up as received: only a
# name not found here is lowercased (a method call per field line otherwise).
_FAST_SPELLINGS: Final = {
    **{
        name.title().replace(b"Websocket", b"WebSocket"): kind for name, kind in _FAST_NAMES.items()
    },
    **_FAST_NAMES,
    b"X-Real-IP": _FORWARDED,
    **dict.fromkeys(
        (
            b"User-Agent",
            b"Accept",
            b"Accept-Encoding",
            b"Accept-Language",
            b"Cache-Control",
            b"Pragma",
            b"Cookie",
            b"Referer",
            b"Sec-WebSocket-Extensions",
            b"sec-websocket-extensions",
            b"user-agent",
            b"accept",
            b"accept-encoding",
            b"accept-language",
            b"cache-control",
            b"pragma",
            b"cookie",
        ),
        0,
    ),
}
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# 1 at each byte value of the base64 alphabet, else 0 (a Sec-WebSocket-Key's characters).
_IS_BASE64: Final = bytes(1 if byte in _BASE64_CHARS else 0 for byte in range(256))
_FAST_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")


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


def _canonical_field(head: bytes, colon: int, end: int) -> bool:
    """The field line whose colon is at `colon` and value ends at `end` reads "Name:
    value": one space after the colon, no other blank around the value (what rendering
    the field would give)."""
    if end == colon + 2:
        return head[colon + 1] == 32  # "Name: " with an empty value
    if end < colon + 2 or head[colon + 1] != 32:
        return False
    second = head[colon + 2]
    last = head[end - 1]
    return second != 32 and second != 9 and last != 32 and last != 9


def fast_request(head: bytes) -> FastRequest | None:
    """The request if it is a plainly valid upgrade, else None (use the full parser).

    One pass over the bytes (compiled, a few instructions each): the request line, then
    field lines of a token name, a colon and a value of printable ASCII or tab, each
    ended by CRLF, then the empty line; only the few fields the checks read are sliced,
    and no method is called per field line when its name is spelled as usual."""
    size: i64 = len(head)
    if size > _FAST_MAX or size < 16 or head[:5] != b"GET /":
        return None
    pos: i64 = 5
    while pos < size and 0x21 <= head[pos] <= 0x7E:
        pos += 1
    if head[pos : pos + 11] != b" HTTP/1.1\r\n":
        return None
    path_end: i64 = pos
    pos += 11
    host: bytes | None = None
    upgrade: bytes | None = None
    connection: bytes | None = None
    key: bytes | None = None
    version: bytes | None = None
    origin: bytes | None = None
    forwarded = False
    canonical = True  # every field reads "Name: value": the head may be forwarded as is
    fields: i64 = 0
    while True:
        if pos + 1 >= size:
            return None
        if head[pos] == 13:  # the empty line: it must end the head
            if head[pos + 1] != 10 or pos + 2 != size:
                return None
            break
        name_start: i64 = pos
        while pos < size and _IS_TOKEN[head[pos]]:
            pos += 1
        if pos == name_start or pos >= size or head[pos] != 58:  # a token, then ":"
            return None
        colon: i64 = pos
        pos += 1
        while pos < size:
            char: i64 = head[pos]
            if char == 13:
                break
            if (char < 0x20 and char != 9) or char > 0x7E:
                return None
            pos += 1
        if pos + 1 >= size or head[pos + 1] != 10:
            return None
        end: i64 = pos
        pos += 2
        fields += 1
        if fields > _FAST_MAX_FIELDS:
            return None
        if canonical and not _canonical_field(head, colon, end):
            canonical = False
        name = head[name_start:colon]
        kind = _FAST_SPELLINGS.get(name)
        if kind is None:
            kind = _FAST_NAMES.get(name.lower(), 0)
        if kind == 0:
            continue
        if kind == _FULL_ONLY:
            return None
        if kind == _FORWARDED:
            forwarded = True
            continue
        # The value without the blanks around it (what strip(b" \t") gives).
        start: i64 = colon + 1
        while start < end and (head[start] == 32 or head[start] == 9):
            start += 1
        stop: i64 = end
        while stop > start and (head[stop - 1] == 32 or head[stop - 1] == 9):
            stop -= 1
        value = head[start:stop]
        if kind == _HOST:
            if host is not None:
                return None
            host = value
        elif kind == _UPGRADE:
            if upgrade is not None:
                return None
            upgrade = value
        elif kind == _CONNECTION:
            if connection is not None:
                return None
            connection = value
        elif kind == _KEY:
            if key is not None:
                return None
            key = value
        elif kind == _VERSION:
            if version is not None:
                return None
            version = value
        else:
            if origin is not None:
                return None
            origin = value
    if upgrade is None or (upgrade != b"websocket" and upgrade.lower() != b"websocket"):
        return None
    if version != b"13" or key is None or not _is_key(key) or not host:
        return None
    if connection is None:
        connection = b""
    if connection != b"Upgrade" and connection.lower() != b"upgrade":
        tokens = [token.strip(b" \t") for token in connection.split(b",")]
        if not all(_FAST_TOKEN.fullmatch(token) for token in tokens):
            return None
        if b"upgrade" not in [token.lower() for token in tokens]:
            return None
    return FastRequest(
        head,
        head[4:path_end].decode(),
        host.decode(),
        [] if origin is None else [origin.decode()],
        forwarded,
        canonical,
    )


def _is_key(key: bytes) -> bool:
    """A Sec-WebSocket-Key as websockets accepts it: 16 bytes in base64 (22 characters of
    its alphabet, then "==")."""
    if len(key) != 24 or key[22] != 61 or key[23] != 61:
        return False
    return all(_IS_BASE64[key[index]] for index in range(22))


# ------------------------------------------------------------------ full parser


def head_summary(head: bytes) -> tuple[str, str, str, list[str]]:
    """(method, target, Host, X-Forwarded-For values) of a head, for the access log: its
    lines split once (a `find` per line was a method call each, compiled or not) and only
    a line that starts with h or x compared; never raising on a head the parsers refused.
    Only lines ended by CRLF count, up to the empty line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    method = parts[0].decode("latin-1") if len(parts) == 3 else ""
    target = parts[1].decode("latin-1") if len(parts) == 3 else ""
    host = ""
    host_seen = False  # the first Host field counts, even an empty one
    chain: list[str] = []
    for index in range(1, len(lines) - 1):  # the last piece has no CRLF after it
        line = lines[index]
        if not line:
            break  # the empty line
        first = line[0] | 0x20  # lowercased, for a letter
        if first == 0x68 and not host_seen and line[:5].lower() == b"host:":
            host = line[5:].strip(b" \t").decode("latin-1")
            host_seen = True
        elif (
            first == 0x78
            and len(chain) < _FAST_MAX_FIELDS
            and line[:16].lower() == (b"x-forwarded-for:")
        ):
            chain.append(line[16:].strip(b" \t").decode("latin-1"))
    return method, target, host, chain


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


_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_101(head: bytes) -> bool:
    """A 101 whose every line holds only tab, printable ASCII or latin-1 and ends in CRLF:
    what the scans below accept for a 101, in one pass over the bytes (compiled, a few
    instructions each; a regex was ~6k instructions per handshake)."""
    size: i64 = len(head)
    if size < 15 or not head.startswith(b"HTTP/1.") or not 0x30 <= head[7] <= 0x39:
        return False
    if not head.startswith(b" 101 ", 8):
        return False
    pos: i64 = 13
    while pos < size:
        char: i64 = head[pos]
        if char == 13:
            if pos + 1 >= size or head[pos + 1] != 10:
                return False
            pos += 2
            continue
        if (char < 0x20 and char != 9) or char == 0x7F:
            return False
        pos += 1
    return head[size - 1] == 10


def parse_status_line(head: bytes) -> int:
    """The status code of a backend's response head; ValueError when not HTTP/1.x or
    when the head holds control characters or bare CR/LF (cheap scans, no parsing)."""
    if _clean_101(head):
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
