"""HTTP/1.1 framing for the proxy: requests, the smuggling table, responses, reuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.handshake import Rejection, _forwarded_lines, parse_request
from dataplane.http1 import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    Framing,
    Informational,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    Upgrade,
    _forwarded_tail,
    frame_chunk,
)

pytestmark = pytest.mark.unit


def feed_all(data: bytes, **limits: int) -> list[object]:
    return list(RequestReader(**limits).feed(data))


def only_head(events: list[object]) -> RequestHead:
    heads = [event for event in events if isinstance(event, RequestHead)]
    assert len(heads) == 1
    return heads[0]


def refusal(data: bytes, **limits: int) -> Rejection:
    reader = RequestReader(**limits)
    with pytest.raises(Rejection) as caught:
        reader.feed(data)
    # the connection is to be closed: the reader refuses everything after
    with pytest.raises(Rejection):
        reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    return caught.value


# ------------------------------------------------------------------ requests


def test_keepalive_get_gives_head_and_end() -> None:
    events = feed_all(b"GET /x?y=1 HTTP/1.1\r\nHost: App.Example.com:8080\r\nAccept: */*\r\n\r\n")
    assert len(events) == 2
    head, end = events
    assert isinstance(head, RequestHead)
    assert isinstance(end, EndOfMessage)
    assert head.method == b"GET"
    assert head.target == b"/x?y=1"
    assert head.version == b"1.1"
    assert head.host == "app.example.com"
    assert head.keep_alive
    assert head.framing == "none"
    assert head.fields == [(b"Host", b"App.Example.com:8080"), (b"Accept", b"*/*")]


def test_header_values_lose_surrounding_blanks() -> None:
    head = only_head(feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \t b c \t \r\n\r\n"))
    assert head.field(b"x-a") == b"b c"


def test_content_length_body_comes_out_in_pieces() -> None:
    reader = RequestReader()
    first = reader.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    assert isinstance(first[0], RequestHead)
    assert first[0].framing == "length"
    assert first[0].content_length == 5
    assert first[1:] == [Body(b"ab")]
    assert reader.feed(b"cde") == [Body(b"cde"), EndOfMessage()]


def test_chunked_body_is_decoded_and_trailers_dropped() -> None:
    events = feed_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.framing == "chunked"
    assert events[1:] == [Body(b"abc"), Body(b"de"), EndOfMessage()]
    assert head.field(b"x-trailer") is None


def test_pipelined_requests_come_out_in_order() -> None:
    events = feed_all(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    targets = [event.target for event in events if isinstance(event, RequestHead)]
    assert targets == [b"/1", b"/2", b"/3"]
    assert events[3] == Body(b"z")
    assert sum(isinstance(event, EndOfMessage) for event in events) == 3


def test_each_request_on_a_connection_has_its_own_host() -> None:
    reader = RequestReader()
    events = reader.feed(
        b"GET / HTTP/1.1\r\nHost: A.example\r\n\r\nGET / HTTP/1.1\r\nHost: A.example\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: b.example:8080\r\n\r\n"
    )
    hosts = [event.host for event in events if isinstance(event, RequestHead)]
    assert hosts == ["a.example", "a.example", "b.example"]
    with pytest.raises(Rejection):
        reader.feed(b"GET / HTTP/1.1\r\nHost: a example\r\n\r\n")


def test_connection_naming_only_keepalive_keeps_other_fields() -> None:
    head = only_head(
        feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive\r\nX-A: 1\r\n\r\n")
    )
    out = head.render(client_ip="1.1.1.1", scheme="http", port=80, forwarded=False)
    assert out == b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nVia: 1.1 wslb\r\n\r\n"


def test_connection_close_ends_keepalive_and_ignores_what_follows() -> None:
    reader = RequestReader()
    events = reader.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
    )
    assert len(events) == 2
    assert isinstance(events[0], RequestHead)
    assert not events[0].keep_alive
    assert reader.feed(b"GET /more HTTP/1.1\r\nHost: a\r\n\r\n") == []


def test_http10_request_is_not_kept_alive_and_needs_no_host() -> None:
    head = only_head(feed_all(b"GET / HTTP/1.0\r\n\r\nGET /next HTTP/1.0\r\n\r\n"))
    assert head.version == b"1.0"
    assert not head.keep_alive
    assert head.host == ""


def test_expect_continue_is_reported() -> None:
    head = only_head(
        feed_all(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    )
    assert head.expect_continue
    assert not only_head(feed_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")).expect_continue


def test_render_drops_hop_by_hop_and_adds_via_and_forwarded() -> None:
    head = only_head(
        feed_all(
            b"POST /p HTTP/1.1\r\nHost: a\r\n"
            b"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
            b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n"
            b"Via: 1.0 edge\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n"
            b"X-Real-IP: 6.6.6.6\r\nCookie: c=1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    )
    out = head.render(client_ip="192.0.2.7", scheme="https", port=443, forwarded=True)
    assert out == (
        b"POST /p HTTP/1.1\r\n"
        b"Host: a\r\n"
        b"Cookie: c=1\r\n"
        b"Via: 1.0 edge, 1.1 wslb\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Port: 443\r\n"
        b"X-Real-IP: 192.0.2.7\r\n"
        b"Forwarded: for=10.0.0.1, for=192.0.2.7;proto=https\r\n"
        b"\r\n"
    )
    again = feed_all(out + LAST_CHUNK)  # a valid request for a strict parser
    assert again[-1] == EndOfMessage()


@pytest.mark.parametrize("client_ip", ["192.0.2.7", "2001:db8::1"])
@pytest.mark.parametrize("prior_xff", ["", "10.0.0.1, 10.0.0.2"])
@pytest.mark.parametrize("prior_forwarded", ["", 'for="[2001:db8::9]";proto=http'])
def test_plain_requests_add_the_forwarded_fields_the_websocket_path_adds(
    client_ip: str, prior_xff: str, prior_forwarded: str
) -> None:
    """http1 keeps a compiled copy of handshake._forwarded_lines: the two must agree."""
    for scheme, port in (("http", 80), ("https", 8443)):
        args = (client_ip, scheme, port, prior_xff, prior_forwarded)
        assert _forwarded_tail(*args) == _forwarded_lines(*args)


def test_render_without_forwarding_keeps_client_fields_and_states_length() -> None:
    head = only_head(
        feed_all(
            b"PUT / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 3\r\n\r\n"
        )
    )
    out = head.render(client_ip="192.0.2.7", scheme="http", port=80, forwarded=False)
    assert out == (
        b"PUT / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"Via: 1.1 wslb\r\nContent-Length: 3\r\n\r\n"
    )


def test_absolute_form_agreeing_with_host_is_forwarded_in_origin_form() -> None:
    head = only_head(feed_all(b"GET http://A.example:80/x?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n"))
    assert head.target == b"/x?q=1"
    assert head.host == "a.example"


@pytest.mark.parametrize(
    "request_line_and_host",
    [
        b"GET http://a.example:8080/ HTTP/1.1\r\nHost: a.example\r\n",
        b"GET https://a.example/ HTTP/1.1\r\nHost: a.example:80\r\n",
        b"GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n",
        b"GET a.example:80 HTTP/1.1\r\nHost: a.example\r\n",
    ],
)
def test_absolute_form_disagreeing_or_odd_is_refused(request_line_and_host: bytes) -> None:
    assert refusal(request_line_and_host + b"\r\n").status == 400


def test_asterisk_form_only_for_options() -> None:
    assert only_head(feed_all(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")).target == b"*"
    assert refusal(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n").status == 400


def test_websocket_upgrade_is_handed_over_with_the_bytes_after_it() -> None:
    reader = RequestReader()
    head = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    events = reader.feed(b"GET /before HTTP/1.1\r\nHost: a\r\n\r\n" + head + b"\x81\x80")
    assert isinstance(events[0], RequestHead)
    assert events[1] == EndOfMessage()
    assert events[2:] == [Upgrade(head, b"\x81\x80")]
    assert parse_request(head).path == "/chat"
    assert reader.feed(b"more") == []


def test_upgrade_header_without_connection_upgrade_is_a_plain_request() -> None:
    events = feed_all(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert not any(isinstance(event, Upgrade) for event in events)
    head = only_head(events)
    assert b"Upgrade" not in head.render(
        client_ip="1.1.1.1", scheme="http", port=80, forwarded=False
    )


def test_non_websocket_upgrade_is_refused() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    assert refusal(data).status == 400


# ------------------------------------------------------------------ the smuggling table

SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "cl_repeated_same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\nx",
    "cl_repeated_different": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxy",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    "cl_plus_sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    "cl_hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\nx",
    "cl_negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "cl_empty": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    "cl_huge": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te_gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te_chunked_not_last": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    "te_chunked_twice_one_field": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te_repeated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "te_in_http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "obs_fold_tab": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
    "bare_lf_request_line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare_lf_field": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "nul_in_name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x00A: b\r\n\r\n",
    "ctl_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
    "del_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n",
    "nul_in_target": b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "space_in_name": b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
    "absolute_host_mismatch": b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute_without_host": b"GET http://evil.example/ HTTP/1.1\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\n\r\n",
    "repeated_host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "invalid_host": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host_with_path": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "chunk_size_garbage": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1;\x00\r\nx\r\n0\r\n\r\n",
    "chunk_size_not_hex": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"g\r\nx\r\n0\r\n\r\n",
    "chunk_data_overrun": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nxy\r\n0\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "garbage_version": b"GET / HTTP/1.x\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_shaped_request_is_refused_with_400_and_close(name: str) -> None:
    data = SMUGGLING[name]
    rejection = refusal(data)
    assert rejection.status == 400, name
    assert b"Connection: close\r\n" in rejection.render()


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_shaped_request_yields_no_head_even_byte_by_byte(name: str) -> None:
    """Fed one byte at a time, the refusal still comes before any head is forwarded."""
    reader = RequestReader()
    heads: list[RequestHead] = []

    def bytewise(data: bytes) -> None:
        for i in range(len(data)):
            events = reader.feed(data[i : i + 1])
            heads.extend(event for event in events if isinstance(event, RequestHead))

    with pytest.raises(Rejection) as caught:
        bytewise(SMUGGLING[name])
    assert caught.value.status == 400
    # a head may only have escaped when its own framing was sound (the body is broken)
    assert all(head.framing == "chunked" for head in heads), name


# Cases only llhttp's strict mode catches (the layer does not scan bytes again).
_PARSER_ONLY = {
    "bare_lf_field",
    "bare_lf_request_line",
    "ctl_in_value",
    "del_in_value",
    "nul_in_value",
    "obs_fold",
    "obs_fold_tab",
}


@pytest.mark.parametrize("name", sorted(set(SMUGGLING) - _PARSER_ONLY))
def test_framing_checks_hold_even_over_a_lenient_parser(name: str) -> None:
    """http1's own checks refuse these even when llhttp's leniencies are all on."""
    reader = RequestReader()
    reader._parser.set_dangerous_leniencies(
        lenient_headers=True,
        lenient_chunked_length=True,
        lenient_transfer_encoding=True,
        lenient_optional_cr_before_lf=True,
        lenient_optional_lf_after_cr=True,
        lenient_data_after_close=True,
        lenient_keep_alive=True,
    )
    with pytest.raises(Rejection) as caught:
        reader.feed(SMUGGLING[name])
    assert caught.value.status == 400


def test_http2_version_is_505_and_connect_is_405() -> None:
    assert refusal(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n").status == 505
    assert refusal(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").status == 405


# ------------------------------------------------------------------ limits


def test_head_over_the_limit_is_431() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 2000 + b"\r\n\r\n"
    assert refusal(big, head_limit=1024).status == 431
    assert only_head(feed_all(big, head_limit=4096)).field(b"cookie") == b"c" * 2000


def test_long_target_is_431_even_in_pieces() -> None:
    reader = RequestReader(head_limit=1024)
    reader.feed(b"GET /" + b"a" * 600)
    with pytest.raises(Rejection) as caught:
        reader.feed(b"b" * 600)
    assert caught.value.status == 431


def test_pipelined_head_after_a_message_in_one_read_is_431() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 2000 + b"\r\n\r\n"
    assert refusal(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + big, head_limit=1024).status == 431


def test_trickled_head_over_the_limit_is_431_before_it_ends() -> None:
    reader = RequestReader(head_limit=1024)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    fed = 0

    def trickle() -> None:
        nonlocal fed
        for _ in range(200):
            reader.feed(b"y" * 10)
            fed += 10

    with pytest.raises(Rejection) as caught:
        trickle()
    assert fed < 1024
    assert caught.value.status == 431
    assert caught.value.label == "header_too_large"


def test_limit_counts_each_head_of_a_pipeline_separately() -> None:
    one = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 200 + b"\r\n\r\n"
    events = feed_all(one * 20, head_limit=512)
    assert sum(isinstance(event, RequestHead) for event in events) == 20


def test_too_many_fields_is_431() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    assert refusal(data, max_fields=10).status == 431
    assert len(only_head(feed_all(data, max_fields=30)).fields) == 21


def test_declared_body_over_the_limit_is_413_before_the_head_goes_out() -> None:
    reader = RequestReader(max_body=10)
    with pytest.raises(Rejection) as caught:
        reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert caught.value.status == 413
    assert caught.value.label == "body_too_large"


def test_chunked_body_growing_over_the_limit_is_413() -> None:
    reader = RequestReader(max_body=10)
    events = reader.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n"
    )
    assert events[1:] == [Body(b"abcdef")]
    with pytest.raises(Rejection) as caught:
        reader.feed(b"6\r\nghijkl\r\n")
    assert caught.value.status == 413


def test_body_at_the_limit_passes() -> None:
    events = feed_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789", max_body=10
    )
    assert events[-1] == EndOfMessage()


# ------------------------------------------------------------------ split anywhere

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_names = st.text(_TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: (
        n.lower()
        not in {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect"}
    )
)
_values = st.text("abcdefghijklmnopqrstuvwxyz0123456789 =;,/", max_size=30).map(str.strip)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]))
    path = "/" + draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789/._-~?=&", max_size=40))
    fields = draw(st.lists(st.tuples(_names, _values), max_size=8))
    head = f"{method} {path} HTTP/1.1\r\nHost: {draw(st.sampled_from(['a', 'b.example:81']))}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields)
    body = draw(st.binary(max_size=200))
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    if kind == "length":
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if kind == "chunked":
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        encoded = b"".join(frame_chunk(piece) for piece in pieces) + LAST_CHUNK
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + encoded
    return (head + "\r\n").encode()


def _normalised(events: list[object]) -> list[object]:
    """Adjacent body pieces joined: where a split falls inside a body is not meaningful."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + event.data)
        else:
            out.append(event)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_requests(), min_size=1, max_size=3),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_requests_split_anywhere_parse_as_whole(requests: list[bytes], cuts: list[int]) -> None:
    data = b"".join(requests)
    whole = _normalised(feed_all(data))
    assert sum(isinstance(event, EndOfMessage) for event in whole) == len(requests)
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    reader = RequestReader()
    pieces: list[object] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        pieces.extend(reader.feed(data[start:end]))
    assert _normalised(pieces) == whole


# ------------------------------------------------------------------ responses


def read_response(
    method: bytes, *chunks: bytes, eof: bool = False
) -> tuple[list[object], ResponseReader]:
    reader = ResponseReader(method)
    events: list[object] = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    if eof:
        events.extend(reader.feed_eof())
    return events, reader


def test_content_length_response_read_to_its_end_is_reusable() -> None:
    events, reader = read_response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"cd")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.framing, head.content_length) == (
        200,
        b"OK",
        "length",
        4,
    )
    assert events[1:] == [Body(b"ab"), Body(b"cd"), EndOfMessage()]
    assert reader.reusable


def test_response_not_read_to_its_end_is_not_reusable() -> None:
    events, reader = read_response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert EndOfMessage() not in events
    assert not reader.reusable


def test_chunked_response_is_decoded_and_reusable() -> None:
    events, reader = read_response(
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"0\r\nX-T: 1\r\n\r\n",
    )
    assert events[1:] == [Body(b"abc"), EndOfMessage()]
    assert reader.reusable


def test_read_to_close_response_ends_at_eof_and_is_not_reusable() -> None:
    events, reader = read_response(b"GET", b"HTTP/1.1 200 OK\r\n\r\nabc", b"def", eof=True)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.framing == "close"
    assert events[1:] == [Body(b"abc"), Body(b"def"), EndOfMessage()]
    assert reader.done
    assert not reader.reusable


def test_truncated_response_is_502_at_eof() -> None:
    reader = ResponseReader(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    with pytest.raises(Rejection) as caught:
        reader.feed_eof()
    assert caught.value.status == 502
    assert not reader.reusable


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
    ],
)
def test_bodiless_responses_end_at_their_head(method: bytes, answer: bytes) -> None:
    events, reader = read_response(method, answer)
    assert isinstance(events[0], ResponseHead)
    assert events[0].framing == "none"
    assert events[1:] == [EndOfMessage()]
    assert reader.reusable


def test_head_response_keeps_its_content_length_for_the_client() -> None:
    events, _ = read_response(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    head = events[0]
    assert isinstance(head, ResponseHead)
    out = head.render(client_version=b"1.1", keep_alive=True)
    assert out == b"HTTP/1.1 200 OK\r\nVia: 1.1 wslb\r\nContent-Length: 1000\r\n\r\n"


def test_bytes_after_a_bodiless_response_make_it_not_reusable() -> None:
    _, reader = read_response(b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"abc")
    assert reader.done
    assert not reader.reusable


def test_bytes_after_a_complete_response_make_it_not_reusable() -> None:
    events, reader = read_response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1")
    assert events[1:] == [Body(b"a"), EndOfMessage()]
    assert not reader.reusable


def test_continue_then_final_answer_in_one_read() -> None:
    events, reader = read_response(
        b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    assert events[0] == Informational(100, [])
    assert events[0].render() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert isinstance(events[1], ResponseHead)
    assert events[1].status == 201
    assert events[2:] == [EndOfMessage()]
    assert reader.reusable


def test_backend_connection_close_is_not_reusable() -> None:
    _, reader = read_response(
        b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert reader.done
    assert not reader.reusable


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"v" * 70000 + b"\r\n\r\n",
    ],
)
def test_unrelayable_response_is_502(answer: bytes) -> None:
    reader = ResponseReader(b"GET")
    with pytest.raises(Rejection) as caught:
        reader.feed(answer)
    assert caught.value.status == 502
    assert not reader.reusable


def test_response_render_drops_hop_by_hop_and_chunks_read_to_close_for_http11() -> None:
    events, _ = read_response(
        b"GET",
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Internal\r\nX-Internal: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Type: text/plain\r\n\r\nbody",
    )
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.client_framing(b"1.1") == "chunked"
    assert head.render(client_version=b"1.1", keep_alive=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.1 wslb\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert head.client_framing(b"1.0") == "close"
    assert head.render(client_version=b"1.0", keep_alive=True).endswith(
        b"Via: 1.1 wslb\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"Keep-Alive: timeout=5, max=100\r\n", 5.0),
        (b"keep-alive: max=100 , TIMEOUT = 2\r\n", None),
        (b"Keep-Alive: max=100, timeout=2\r\n", 2.0),
        (b"Keep-Alive: timeout=soon\r\n", None),
        (b"", None),
    ],
)
def test_backend_keepalive_timeout_is_read(fields: bytes, expected: float | None) -> None:
    events, _ = read_response(
        b"GET", b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"
    )
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.keep_alive_timeout() == expected


def test_response_render_says_close_when_the_client_connection_ends() -> None:
    events, _ = read_response(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head.render(client_version=b"1.1", keep_alive=False) == (
        b"HTTP/1.1 200 OK\r\nVia: 1.1 wslb\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def test_frame_chunk() -> None:
    assert frame_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert frame_chunk(b"") == b""


@st.composite
def _responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(request method, a valid response with a self-delimited body)."""
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    fields = draw(st.lists(st.tuples(_names, _values), max_size=6))
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    if draw(st.booleans()):
        head = "HTTP/1.1 100 Continue\r\n\r\n" + head
    body = draw(st.binary(max_size=200))
    if status in (204, 304) or method == b"HEAD":
        return method, (head + f"Content-Length: {len(body)}\r\n\r\n").encode()
    if draw(st.booleans()):
        return method, (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    encoded = frame_chunk(body) + LAST_CHUNK
    return method, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + encoded


@settings(max_examples=300, deadline=None)
@given(_responses(), st.lists(st.integers(min_value=0, max_value=1000), max_size=6))
def test_responses_split_anywhere_parse_as_whole(
    response: tuple[bytes, bytes], cuts: list[int]
) -> None:
    method, data = response
    whole_reader = ResponseReader(method)
    whole = _normalised(list(whole_reader.feed(data)))
    assert whole[-1] == EndOfMessage()
    assert whole_reader.reusable
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    reader = ResponseReader(method)
    pieces: list[object] = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        pieces.extend(reader.feed(data[start:end]))
    assert _normalised(pieces) == whole
    assert reader.reusable


def test_requests_completed_before_a_refused_one_are_salvaged_in_order() -> None:
    reader = RequestReader()
    good = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    with pytest.raises(Rejection) as refused:
        reader.feed(good + bad)
    assert refused.value.status == 400
    assert [type(event) for event in reader.salvaged] == [RequestHead, EndOfMessage]
    head = reader.salvaged[0]
    assert isinstance(head, RequestHead) and head.target == b"/a"
    with pytest.raises(Rejection):
        reader.feed(good)
    assert reader.salvaged == []  # nothing is salvaged once the reader refuses everything


_CONNECTION_VALUES = st.sampled_from(
    [b"keep-alive", b"Keep-Alive", b"close", b"close, X-A", b"x-a", b"keep-alive, x-b", b""]
)
_HOP_NAMES = st.sampled_from(
    [b"Connection", b"Keep-Alive", b"Via", b"X-A", b"x-b", b"Close", b"Transfer-Encoding"]
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(_HOP_NAMES, _names.map(str.encode)),
            st.one_of(_CONNECTION_VALUES, _values.map(str.encode)),
        ),
        max_size=8,
    ),
    st.sampled_from([200, 204, 304, 404]),
    st.sampled_from(["none", "length", "chunked", "close"]),
    st.sampled_from([b"1.1", b"1.0"]),
    st.booleans(),
)
def test_response_render_fast_path_gives_the_general_answer(
    fields: list[tuple[bytes, bytes]],
    status: int,
    framing: Framing,
    version: bytes,
    keep_alive: bool,
) -> None:
    """The one-pass render of a common head is byte for byte the general one (which also
    drops the fields a Connection field names), for any fields."""
    length = 3 if framing == "length" else None
    head = ResponseHead(status, b"Whatever", fields, framing, length)
    general = head._render(version, keep_alive)
    assert head.render(client_version=version, keep_alive=keep_alive) == general


def test_a_response_reader_restarts_for_the_next_answer_on_its_connection() -> None:
    """Restarted, a reader parses the next response as a new one would; after a HEAD
    answer (llhttp still waits for the body its Content-Length names) it refuses."""
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    second = b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nbye"
    reader = ResponseReader(b"GET")
    reader.feed(first)
    assert reader.restart(b"POST")
    assert reader.head is None and not reader.done
    again = _normalised(list(reader.feed(second)))
    assert again == _normalised(list(ResponseReader(b"POST").feed(second)))
    assert reader.reusable and reader.head is not None and reader.head.status == 404
    head = ResponseReader(b"HEAD")
    head.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert head.reusable and not head.restart(b"GET")
    unfinished = ResponseReader(b"GET")
    unfinished.feed(first[:-1])
    assert not unfinished.restart(b"GET")
