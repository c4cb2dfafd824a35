# ruff: noqa: E501  (the table reads best one row per line)
"""The opening handshake without sockets: every malformed request gets its answer.

The table is the contract for any faster validation path: each row must keep its status,
its extra headers and its metric label.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.http11 import Request

from dataplane.handshake import (
    Rejection,
    fast_request,
    head_summary,
    parse_backend_head,
    parse_request,
    parse_status_line,
    render_request,
    validate_upgrade,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
VALID = [
    "GET /chat?room=1 HTTP/1.1",
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
]


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def replaced(old: str, new: str | None) -> bytes:
    lines = [line for line in VALID if not line.startswith(old)]
    index = next(i for i, line in enumerate(VALID) if line.startswith(old))
    if new is not None:
        lines.insert(index, new)
    return head(*lines)


def answer(data: bytes) -> Request | Rejection:
    try:
        request = parse_request(data)
        validate_upgrade(request)
    except Rejection as rejection:
        return rejection
    return request


# fmt: off
# name: (request head, status, headers the answer must carry, metric label)
TABLE: dict[str, tuple[bytes, int, dict[str, str], str]] = {
    "plain GET": (head("GET / HTTP/1.1", "Host: x", "Accept: */*"), 426, {"Upgrade": "websocket"}, "bad_request"),
    "no Connection: Upgrade": (replaced("Connection", None), 426, {"Upgrade": "websocket"}, "bad_request"),
    "Upgrade: h2c": (replaced("Upgrade", "Upgrade: h2c"), 426, {"Upgrade": "websocket"}, "bad_request"),
    "version 8": (replaced("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"), 426, {"Sec-WebSocket-Version": "13"}, "bad_request"),
    "no version": (replaced("Sec-WebSocket-Version", None), 426, {"Sec-WebSocket-Version": "13"}, "bad_request"),
    "no key": (replaced("Sec-WebSocket-Key", None), 400, {}, "bad_request"),
    "short key": (replaced("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ="), 400, {}, "bad_request"),
    "key not base64": (replaced("Sec-WebSocket-Key", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!"), 400, {}, "bad_request"),
    "two keys": (head(*VALID, f"Sec-WebSocket-Key: {KEY}"), 400, {}, "bad_request"),
    "POST": (replaced("GET", "POST / HTTP/1.1"), 405, {"Allow": "GET"}, "bad_request"),
    "no Host": (replaced("Host", None), 400, {}, "bad_request"),
    "empty Host": (replaced("Host", "Host: "), 400, {}, "bad_request"),
    "two Hosts": (head(*VALID, "Host: evil.example.com"), 400, {}, "bad_request"),
    "HTTP/1.0": (replaced("GET", "GET / HTTP/1.0"), 505, {}, "bad_request"),
    "HTTP/2.0": (replaced("GET", "GET / HTTP/2.0"), 400, {}, "bad_request"),
    "garbage request line": (b"\x16\x03\x01 hello there\r\nfoo\r\n\r\n", 400, {}, "bad_request"),
    "absolute-form target": (replaced("GET", "GET http://example.com/ HTTP/1.1"), 400, {}, "bad_request"),
    "asterisk target": (replaced("GET", "GET * HTTP/1.1"), 400, {}, "bad_request"),
    "bare CR in target": (replaced("GET", "GET /a\rb HTTP/1.1"), 400, {}, "bad_request"),
    "space in target": (replaced("GET", "GET /a b HTTP/1.1"), 400, {}, "bad_request"),
    "header without colon": (head(*VALID, "X-Broken"), 400, {}, "bad_request"),
    "space before colon": (head(*VALID, "X-Bad : 1"), 400, {}, "bad_request"),
    "control character in value": (head(*VALID, "X-Bad: a\x01b"), 400, {}, "bad_request"),
    "obsolete line folding": (head(*VALID, "X-Fold: a", " b"), 400, {}, "bad_request"),
    "no final empty line": (("\r\n".join(VALID) + "\r\n").encode(), 400, {}, "bad_request"),
    "too many headers": (head(*VALID, *(f"X-{i}: {i}" for i in range(200))), 431, {}, "header_too_large"),
}
# fmt: on


@pytest.mark.parametrize("name", list(TABLE), ids=list(TABLE))
def test_malformed_request_gets_its_status_headers_and_label(name: str) -> None:
    data, status, headers, label = TABLE[name]
    result = answer(data)
    assert isinstance(result, Rejection), result
    assert result.status == status, result
    assert dict(result.headers).items() >= headers.items(), result.headers
    assert result.label == label
    rendered = result.render()
    assert rendered.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in rendered


def test_valid_upgrade_is_accepted_and_forwarded_with_x_forwarded_headers() -> None:
    result = answer(head(*VALID, "X-Forwarded-For: 10.0.0.1"))
    assert isinstance(result, Request)
    assert result.path == "/chat?room=1"
    forwarded = render_request(
        result, client_ip="192.0.2.7", scheme="https", port=443, forwarded=True
    )
    lines = forwarded.decode().split("\r\n")
    assert lines[0] == "GET /chat?room=1 HTTP/1.1"
    assert "X-Forwarded-For: 10.0.0.1, 192.0.2.7" in lines
    assert "X-Forwarded-Proto: https" in lines
    assert "Forwarded: for=192.0.2.7;proto=https" in lines
    assert forwarded.endswith(b"\r\n\r\n")


def test_a_rejection_carries_its_own_label() -> None:
    assert Rejection(403, "Origin not allowed", label="origin").label == "origin"
    assert Rejection(431, "too large").label == "header_too_large"
    assert Rejection(400, "bad").label == "bad_request"


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.0 404 Not Found", b"HTTP/1.1 200 "],
)
def test_backend_status_lines_are_read(status_line: bytes) -> None:
    assert parse_status_line(status_line + b"\r\n\r\n") == int(status_line.split()[1])


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/2 101 x\r\n\r\n",
        b"HTTP/1.1 1O1 x\r\n\r\n",
        b"HTTP/1.1 101 x\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 101 x\r\nX: a\x00\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
)
def test_bad_backend_heads_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_status_line(bad)
    with pytest.raises(ValueError):
        parse_backend_head(bad)


# ---------------------------------------------------------------------- the fast path


@pytest.mark.parametrize("name", list(TABLE), ids=list(TABLE))
def test_fast_path_never_accepts_a_malformed_request(name: str) -> None:
    assert fast_request(TABLE[name][0]) is None


VALID_VARIANTS = {
    "minimal": head(*VALID),
    "with origin and others": head(*VALID, "Origin: https://a.example", "User-Agent: x/1"),
    "connection list": replaced("Connection", "Connection: keep-alive, Upgrade"),
    "odd case": replaced("Upgrade", "upgrade:   WebSocket  "),
    "forwarded headers": head(*VALID, "X-Forwarded-For: 10.0.0.1", "Forwarded: for=10.0.0.1"),
    "a browser's": head(
        *VALID,
        "Pragma: no-cache",
        "Cache-Control: no-cache",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0",
        "Origin: https://a.example",
        "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-US,en;q=0.9",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    ),
}


@pytest.mark.parametrize("name", list(VALID_VARIANTS), ids=list(VALID_VARIANTS))
def test_fast_path_gives_what_the_full_parser_gives(name: str) -> None:
    data = VALID_VARIANTS[name]
    fast = fast_request(data)
    assert fast is not None
    full = parse_request(data)
    validate_upgrade(full)
    assert (fast.method, fast.path) == (full.method, full.path)
    assert fast.raw_items() == list(full.headers.raw_items())
    assert fast.origins == full.headers.get_all("Origin")
    for forwarded in (True, False):
        kwargs = {"client_ip": "192.0.2.1", "scheme": "http", "port": 80, "forwarded": forwarded}
        assert render_request(fast, **kwargs) == render_request(full, **kwargs)  # type: ignore[arg-type]


def test_fast_path_leaves_subprotocol_offers_to_the_full_parser() -> None:
    """The validator parses Sec-WebSocket-Protocol (a malformed list is a 400)."""
    offer = head(*VALID, "Sec-WebSocket-Protocol: chat")
    assert fast_request(offer) is None
    assert isinstance(answer(offer), Request)
    assert isinstance(answer(head(*VALID, "Sec-WebSocket-Protocol: ((")), Rejection)


def test_fast_path_takes_extension_offers_as_the_validator_does() -> None:
    """Every browser offers permessage-deflate. The validator, which negotiates no
    extension, never reads the offer (any value passes): the fast path forwards it the
    same way, so a browser's handshake needs no full parse (~37 us each, pure Python)."""
    for value in ("permessage-deflate; client_max_window_bits", ";;;not((a list"):
        offer = head(*VALID, f"Sec-WebSocket-Extensions: {value}")
        fast = fast_request(offer)
        assert fast is not None
        full = answer(offer)
        assert isinstance(full, Request)
        assert fast.raw_items() == list(full.headers.raw_items())


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(0, 400),
    removed=st.integers(0, 3),
    inserted=st.binary(max_size=4) | st.sampled_from([b"\r\n", b" ", b":", b",", b"\t", b"\n"]),
)
def test_fast_path_accepts_only_what_the_full_parser_accepts_identically(
    position: int, removed: int, inserted: bytes
) -> None:
    """Mutate a valid head anywhere: when the fast path still accepts it, the full
    parser must accept it too and read the same path and fields."""
    base = head(*VALID, "Origin: https://a.example", "X-Extra: 1")
    position %= len(base)
    data = base[:position] + inserted + base[position + removed :]
    if not data.endswith(b"\r\n\r\n") or data.count(b"\r\n\r\n") != 1:
        return  # the tunnel only ever passes one complete head
    fast = fast_request(data)
    if fast is None:
        return
    full = answer(data)
    assert isinstance(full, Request), (data, full)
    assert fast.path == full.path
    assert fast.raw_items() == list(full.headers.raw_items())
    assert fast.origins == full.headers.get_all("Origin")


def reference_status(head: bytes) -> int | None:
    """The scans parse_status_line did before its one-pass check for a clean 101."""
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None
    if re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head):
        return None
    parts = head[: head.find(b"\r\n")].decode("latin-1").split(" ", 2)
    code = parts[1] if len(parts) >= 2 else ""
    if not parts[0].startswith("HTTP/1.") or not (len(code) == 3 and code.isdecimal()):
        return None
    return int(code)


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(0, 200),
    removed=st.integers(0, 2),
    inserted=st.binary(max_size=3) | st.sampled_from([b"\r", b"\n", b"\t", b"\x7f", b"\xe9"]),
)
def test_backend_status_checks_agree_with_the_full_scans(
    position: int, removed: int, inserted: bytes
) -> None:
    base = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX: y\r\n\r\n"
    position %= len(base)
    head = base[:position] + inserted + base[position + removed :]
    expected = reference_status(head)
    try:
        got: int | None = parse_status_line(head)
    except ValueError:
        got = None
    assert got == expected, head


def test_fast_path_is_linear_in_a_line_that_is_not_a_field() -> None:
    """A colon-less 8 KiB line (within the head limit) goes to the full parser at once: a
    search that restarts at every offset took 0.3 s of the event loop for it, from one client
    request. The bound is two orders of magnitude above the linear cost, far below the old."""
    head = b"GET / HTTP/1.1\r\n" + b"a" * (8192 - 22) + b"\r\n\r\n"
    started = time.perf_counter()
    assert fast_request(head) is None
    assert time.perf_counter() - started < 0.05


def test_head_summary_reads_what_the_access_log_needs() -> None:
    head = (
        b"GET /chat?room=1 HTTP/1.1\r\nhost:  chat.example.com \r\nUpgrade: websocket\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nx-forwarded-for:198.51.100.2, 10.0.0.1\r\n\r\n"
    )
    assert head_summary(head) == (
        "GET",
        "/chat?room=1",
        "chat.example.com",
        ["203.0.113.9", "198.51.100.2, 10.0.0.1"],
    )


def test_head_summary_of_a_malformed_head_is_empty_not_an_error() -> None:
    assert head_summary(b"garbage\r\n\r\n") == ("", "", "", [])
    assert head_summary(b"GET / HTTP/1.1\r\n\r\n") == ("GET", "/", "", [])
