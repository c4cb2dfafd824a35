"""Sticky-session cookies of dataplane.sticky."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection

import pytest
from websockets.datastructures import Headers

from dataplane.sticky import MAX_COOKIE_VALUE, PREFIX_SEPARATOR, StickyCookies, opaque_id
from lbwire.snapshot import StickySession

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
KEY = "10.0.0.1:8080"


OTHER = "10.0.0.2:8080"
IPV6 = "[2001:db8::7]:443"
KEYS = (KEY, OTHER, IPV6)
SECRET = "s3cret"


def insert_cookies(
    secret: str = SECRET,
    max_age: int = 3600,
    *,
    secure: bool = False,
    keys: Collection[str] = KEYS,
) -> StickyCookies:
    policy = StickySession(mode="insert", secret=secret, max_age_seconds=max_age)
    return StickyCookies(policy, secure=secure, endpoint_keys=keys)


def server_cookies(secret: str | None = SECRET, keys: Collection[str] = KEYS) -> StickyCookies:
    policy = StickySession(mode="server", cookie_name="SESSION", secret=secret)
    return StickyCookies(policy, endpoint_keys=keys)


def issued_cookie(cookies: StickyCookies, key: str = KEY, now: float = NOW) -> str:
    """The `name=value` pair a 101 from `key` sets."""
    response = Headers()
    cookies.rewrite_response(key, response, now=now)
    (set_cookie,) = response.get_all("Set-Cookie")
    return set_cookie.split(";", 1)[0]


def request_with(cookie: str) -> Headers:
    return Headers(Cookie=cookie)


# --- insert mode ----------------------------------------------------------------------


def test_insert_cookie_round_trips_to_the_endpoint() -> None:
    cookies = insert_cookies()
    cookie = issued_cookie(cookies)
    assert cookie.startswith("WSLB_STICKY=")
    assert cookies.endpoint_for(request_with(cookie), now=NOW + 10) == KEY


def test_insert_cookie_round_trips_an_ipv6_endpoint_key() -> None:
    cookies = insert_cookies()
    cookie = issued_cookie(cookies, key=IPV6)
    assert cookies.endpoint_for(request_with(f"a=1; {cookie}; b=2"), now=NOW) == IPV6


def test_insert_set_cookie_has_max_age_path_httponly_samesite() -> None:
    response = Headers()
    insert_cookies(max_age=120).rewrite_response(KEY, response, now=NOW)
    attributes = response["Set-Cookie"].split("; ")[1:]
    assert attributes == ["Max-Age=120", "Path=/", "HttpOnly", "SameSite=Lax"]


def test_insert_set_cookie_is_secure_on_https_listeners() -> None:
    response = Headers()
    insert_cookies(secure=True).rewrite_response(KEY, response, now=NOW)
    assert response["Set-Cookie"].endswith("; Secure")


def test_cookie_issued_by_one_instance_is_accepted_by_another_with_the_same_secret() -> None:
    """Replicas and workers each build their own StickyCookies from the same policy."""
    cookie = issued_cookie(insert_cookies(secret="shared"))
    assert insert_cookies(secret="shared").endpoint_for(request_with(cookie), now=NOW) == KEY


def test_cookie_signed_with_another_secret_is_refused() -> None:
    cookie = issued_cookie(insert_cookies(secret="one"))
    assert insert_cookies(secret="two").endpoint_for(request_with(cookie), now=NOW) is None


def test_expired_cookie_is_refused() -> None:
    cookies = insert_cookies(max_age=60)
    cookie = issued_cookie(cookies)
    assert cookies.endpoint_for(request_with(cookie), now=NOW + 59) == KEY
    assert cookies.endpoint_for(request_with(cookie), now=NOW + 60) is None


def test_tampered_endpoint_or_expiry_is_refused() -> None:
    cookies = insert_cookies()
    name, value = issued_cookie(cookies).split("=", 1)
    encoded_key, expiry, mac = value.split(".")
    other_key = issued_cookie(cookies, key=OTHER).split("=", 1)[1].split(".")[0]
    forged = [
        f"{other_key}.{expiry}.{mac}",
        f"{encoded_key}.{int(expiry) + 86400}.{mac}",
        f"{encoded_key}.{expiry}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"{encoded_key}.{expiry}",
    ]
    for value in forged:
        assert cookies.endpoint_for(request_with(f"{name}={value}"), now=NOW) is None, value


@pytest.mark.parametrize(
    "cookie",
    [
        "",
        "WSLB_STICKY",
        "WSLB_STICKY=",
        "WSLB_STICKY=garbage",
        "WSLB_STICKY=a.b.c",
        "WSLB_STICKY=....",
        'WSLB_STICKY="',
        "WSLB_STICKY=" + "A" * 100_000,
        "WSLB_STICKY=%%%.1.AAAAAAAAAAAAAAAAAAAAAA",
        "WSLB_STICKY=\xff\xfe.1.x",
        ";;;=;=",
    ],
)
def test_garbage_cookie_gives_none_without_raising(cookie: str) -> None:
    assert insert_cookies().endpoint_for(Headers([("Cookie", cookie)]), now=NOW) is None


def test_valid_cookie_found_among_several_cookie_headers_and_stale_duplicates() -> None:
    cookies = insert_cookies()
    good = issued_cookie(cookies)
    headers = Headers([("Cookie", "WSLB_STICKY=stale; x=1"), ("Cookie", f"y=2; {good}")])
    assert cookies.endpoint_for(headers, now=NOW) == KEY


def test_insert_mode_removes_our_cookie_before_the_backend_sees_it() -> None:
    cookies = insert_cookies()
    good = issued_cookie(cookies)
    headers = Headers([("Host", "h"), ("Cookie", f"a=1; {good}; b=2"), ("Cookie", good)])
    cookies.rewrite_request(headers)
    assert headers.get_all("Cookie") == ["a=1; b=2"]
    assert headers["Host"] == "h"


def test_insert_mode_leaves_requests_without_our_cookie_untouched() -> None:
    headers = Headers([("Cookie", "a=1;b=2"), ("Host", "h")])
    insert_cookies().rewrite_request(headers)
    assert list(headers.raw_items()) == [("Cookie", "a=1;b=2"), ("Host", "h")]


def test_disabled_policy_reads_and_writes_nothing() -> None:
    cookies = StickyCookies(StickySession())
    headers = Headers(Cookie="WSLB_STICKY=x")
    response = Headers()
    cookies.rewrite_request(headers)
    cookies.rewrite_response(KEY, response)
    assert cookies.endpoint_for(headers) is None
    assert headers["Cookie"] == "WSLB_STICKY=x"
    assert "Set-Cookie" not in response


# --- server mode ----------------------------------------------------------------------


def backend_101(*set_cookies: str) -> Headers:
    return Headers([("Upgrade", "websocket")] + [("Set-Cookie", item) for item in set_cookies])


def test_server_mode_prefixes_the_backend_cookie_and_routes_back() -> None:
    cookies = server_cookies()
    response = backend_101("SESSION=abc123; Path=/; HttpOnly", "other=1")
    cookies.rewrite_response(KEY, response, now=NOW)
    session, other = response.get_all("Set-Cookie")
    assert other == "other=1"
    assert session.endswith(f"{PREFIX_SEPARATOR}abc123; Path=/; HttpOnly")
    value = session.split(";", 1)[0].split("=", 1)[1]

    request = request_with(f"other=1; SESSION={value}")
    assert server_cookies().endpoint_for(request, now=NOW + 5) == KEY
    cookies.rewrite_request(request)
    assert request["Cookie"] == "other=1; SESSION=abc123"


def test_server_mode_ignores_responses_that_do_not_set_the_cookie() -> None:
    response = backend_101("other=1; Path=/")
    server_cookies().rewrite_response(KEY, response, now=NOW)
    assert response.get_all("Set-Cookie") == ["other=1; Path=/"]


def test_server_mode_leaves_cookie_deletions_alone() -> None:
    response = backend_101("SESSION=; Max-Age=0", "SESSION=x; Max-Age=0")
    server_cookies().rewrite_response(KEY, response, now=NOW)
    assert response.get_all("Set-Cookie") == ["SESSION=; Max-Age=0", "SESSION=x; Max-Age=0"]


def test_server_mode_keeps_quotes_and_tildes_of_the_backend_value() -> None:
    cookies = server_cookies()
    response = backend_101('SESSION="a~b"')
    cookies.rewrite_response(KEY, response, now=NOW)
    value = response["Set-Cookie"].split("=", 1)[1]
    request = request_with(f"SESSION={value}")
    assert cookies.endpoint_for(request, now=NOW) == KEY
    cookies.rewrite_request(request)
    assert request["Cookie"] == 'SESSION="a~b"'


def test_server_mode_passes_unprefixed_backend_cookies_through() -> None:
    """A value set before the load balancer existed may contain `~`; it is not ours."""
    cookies = server_cookies()
    request = request_with("SESSION=plain~value")
    assert cookies.endpoint_for(request, now=NOW) is None
    cookies.rewrite_request(request)
    assert request["Cookie"] == "SESSION=plain~value"


def test_server_mode_strips_a_forged_prefix_but_does_not_route_on_it() -> None:
    cookies = server_cookies()
    forged = f"{opaque_id(KEY)}{PREFIX_SEPARATOR}abc"  # unsigned shape, but a secret is set
    request = request_with(f"SESSION={forged}")
    assert cookies.endpoint_for(request, now=NOW) is None
    cookies.rewrite_request(request)
    assert request["Cookie"] == "SESSION=abc"


def test_server_mode_without_secret_carries_an_opaque_id_of_a_known_endpoint() -> None:
    keys = (KEY, OTHER)
    cookies = server_cookies(secret=None, keys=keys)
    response = backend_101("SESSION=abc")
    cookies.rewrite_response(KEY, response, now=NOW)
    value = response["Set-Cookie"].split("=", 1)[1]
    assert "10.0.0.1" not in value
    assert server_cookies(secret=None, keys=keys).endpoint_for(
        request_with(f"SESSION={value}")
    ) == (KEY)
    # An id of an endpoint that is not (or no longer) configured routes nowhere.
    assert (
        server_cookies(secret=None, keys=(OTHER,)).endpoint_for(request_with(f"SESSION={value}"))
        is None
    )


def test_server_mode_without_secret_reads_endpoint_keys_live() -> None:
    keys: dict[str, object] = {}
    cookies = server_cookies(secret=None, keys=keys)
    request = request_with(f"SESSION={opaque_id(KEY)}{PREFIX_SEPARATOR}abc")
    assert cookies.endpoint_for(request) is None
    keys[KEY] = object()
    assert cookies.endpoint_for(request) == KEY


# --- opaque tokens --------------------------------------------------------------------


def legacy_token(key: str, expiry: int, secret: str = SECRET, name: str = "WSLB_STICKY") -> str:
    """A token of the earlier format: base64url of the endpoint key, readable by anyone."""
    encoded = base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode()
    body = f"{encoded}.{expiry}"
    message = b"wslb-sticky-v1\x00" + name.encode() + b"\x00" + body.encode()
    mac = hmac.digest(secret.encode(), message, hashlib.sha256)[:16]
    return f"{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def decodable_parts(token: str) -> list[bytes]:
    parts = []
    for part in token.replace("~", ".").split("."):
        parts.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        parts.append(part.encode())
    return parts


@pytest.mark.parametrize("key", [KEY, IPV6])
def test_signed_token_names_no_backend_address(key: str) -> None:
    token = issued_cookie(insert_cookies(), key=key).split("=", 1)[1]
    address = key.rsplit(":", 1)[0].strip("[]")
    for part in decodable_parts(token):
        assert address.encode() not in part
        assert key.encode() not in part
    assert token.split(".")[0] != opaque_id(key)  # keyed: not the unkeyed hash either


def test_endpoint_id_depends_on_the_secret() -> None:
    """Without the secret, nobody can list the ids of candidate addresses."""
    one = issued_cookie(insert_cookies(secret="one")).split("=", 1)[1].split(".")[0]
    two = issued_cookie(insert_cookies(secret="two")).split("=", 1)[1].split(".")[0]
    again = issued_cookie(insert_cookies(secret="one"), now=NOW + 99).split("=", 1)[1]
    assert one != two
    assert again.split(".")[0] == one


def test_cookie_of_the_earlier_format_is_refused_and_the_client_rebalanced() -> None:
    cookies = insert_cookies()
    old = legacy_token(KEY, int(NOW) + 600)
    assert cookies.endpoint_for(request_with(f"WSLB_STICKY={old}"), now=NOW) is None
    assert cookies.endpoint_for_fields([(b"Cookie", b"WSLB_STICKY=" + old.encode())]) is None


def test_server_mode_strips_a_prefix_of_the_earlier_format() -> None:
    """The backend keeps its own value across the upgrade of the load balancer."""
    cookies = server_cookies()
    old = legacy_token(KEY, int(NOW) + 600, name="SESSION")
    request = request_with(f"SESSION={old}{PREFIX_SEPARATOR}abc")
    assert cookies.endpoint_for(request, now=NOW) is None
    cookies.rewrite_request(request)
    assert request["Cookie"] == "SESSION=abc"


def test_token_resolves_through_the_live_endpoint_keys() -> None:
    keys: dict[str, object] = {}
    issuer = insert_cookies(keys=KEYS)
    reader = insert_cookies(keys=keys)
    request = request_with(issued_cookie(issuer))
    assert reader.endpoint_for(request, now=NOW) is None
    keys[KEY] = object()
    assert reader.endpoint_for(request, now=NOW) == KEY
    del keys[KEY]
    assert reader.endpoint_for(request, now=NOW) is None, "an endpoint that left resolves nowhere"


def test_each_endpoint_key_is_hashed_once_however_many_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = StickyCookies._keyed_id

    def counting(self: StickyCookies, key: str) -> str:
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(StickyCookies, "_keyed_id", counting)
    keys = [f"10.1.{i // 250}.{i % 250}:80" for i in range(500)]
    issuer, reader = insert_cookies(keys=keys), insert_cookies(keys=keys)
    requests = [request_with(issued_cookie(issuer, key=key)) for key in keys[::50]]
    for _ in range(20):
        for request, key in zip(requests, keys[::50], strict=True):
            assert reader.endpoint_for(request, now=NOW) == key
    assert len(calls) == len(requests) + len(keys)  # the issuer's, then the reader's table


def test_server_mode_without_secret_keeps_its_unsigned_opaque_id() -> None:
    cookies = server_cookies(secret=None)
    response = backend_101("SESSION=abc")
    cookies.rewrite_response(KEY, response, now=NOW)
    value = response["Set-Cookie"].split("=", 1)[1]
    assert value == f"{opaque_id(KEY)}{PREFIX_SEPARATOR}abc"


# --- http1 fields ---------------------------------------------------------------------


def cookie_field(cookies: StickyCookies, key: str = KEY, now: float = NOW) -> bytes:
    """The `name=value` pair an HTTP response from `key` sets (insert mode)."""
    (added,) = cookies.response_fields(key, [], had_valid_cookie=False, now=now)
    assert added[0] == b"Set-Cookie"
    return added[1].split(b";", 1)[0]


@pytest.mark.parametrize("name", [b"Cookie", b"cookie", b"COOKIE"])
def test_fields_cookie_routes_back_whatever_the_field_name_case(name: bytes) -> None:
    cookies = insert_cookies()
    fields = [(b"Host", b"h"), (name, b"a=1; " + cookie_field(cookies, OTHER))]
    assert cookies.endpoint_for_fields(fields, now=NOW) == OTHER


def test_fields_cookie_found_among_several_cookie_fields_stale_and_quoted() -> None:
    cookies = insert_cookies()
    pair = cookie_field(cookies)
    name, value = pair.split(b"=", 1)
    fields = [
        (b"Cookie", b"WSLB_STICKY=stale; x=1"),
        (b"Cookie", b"WSLB_STICKY=" + b"A" * (MAX_COOKIE_VALUE + 1)),
        (b"Cookie", b"y=2; " + name + b'="' + value + b'"'),
    ]
    assert cookies.endpoint_for_fields(fields, now=NOW) == KEY


def test_http_and_websocket_cookies_are_the_same_cookie() -> None:
    """An HTTP response's cookie steers the upgrade, and the 101's steers HTTP."""
    cookies = insert_cookies()
    from_http = cookie_field(cookies, OTHER).decode()
    assert cookies.endpoint_for(request_with(from_http), now=NOW) == OTHER
    from_ws = issued_cookie(cookies, IPV6).encode()
    assert cookies.endpoint_for_fields([(b"Cookie", from_ws)], now=NOW) == IPV6


def test_fields_expired_or_other_secret_cookie_gives_none() -> None:
    cookies = insert_cookies(max_age=60)
    pair = cookie_field(cookies)
    assert cookies.endpoint_for_fields([(b"Cookie", pair)], now=NOW + 60) is None
    assert insert_cookies(secret="x").endpoint_for_fields([(b"Cookie", pair)], now=NOW) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"WSLB_STICKY",
        b"WSLB_STICKY=",
        b"WSLB_STICKY=\xff\xfe\x00.1.x",
        b"WSLB_STICKY=" + b"\xc3" * 10_000,
        b'WSLB_STICKY="',
        b"WSLB_STICKY=" + b"9" * 5000 + b".1.AAAAAAAAAAAAAAAAAAAAAA",
        b"WSLB_STICKY=AAAAAAAAAAAAAAAA." + b"9" * 13 + b".AAAAAAAAAAAAAAAAAAAAAA",
        b";;;=;=WSLB_STICKY;",
    ],
)
def test_fields_garbage_cookie_gives_none_and_strips_without_raising(value: bytes) -> None:
    cookies = insert_cookies()
    fields = [(b"Cookie", value)]
    assert cookies.endpoint_for_fields(fields, now=NOW) is None
    for field in cookies.strip_request_fields(fields):
        assert b"WSLB_STICKY=" not in field[1]
    assert server_cookies().endpoint_for_fields([(b"Cookie", b"SESSION" + value)]) is None


def test_strip_request_fields_insert_mode_removes_only_our_cookie() -> None:
    cookies = insert_cookies()
    pair = cookie_field(cookies)
    fields = [
        (b"Host", b"h"),
        (b"Cookie", b"a=1; " + pair + b"; b=2"),
        (b"X-Other", b"WSLB_STICKY=is not a cookie here"),
        (b"cookie", pair),
        (b"Accept", b"*/*"),
    ]
    before = list(fields)
    stripped = cookies.strip_request_fields(fields)
    assert stripped == [
        (b"Host", b"h"),
        (b"Cookie", b"a=1; b=2"),
        (b"X-Other", b"WSLB_STICKY=is not a cookie here"),
        (b"Accept", b"*/*"),
    ]
    assert fields == before, "the caller's list is not changed"


def test_strip_request_fields_returns_the_same_list_without_our_cookie() -> None:
    fields = [(b"Cookie", b"a=1;b=2"), (b"Host", b"h")]
    assert insert_cookies().strip_request_fields(fields) is fields
    assert StickyCookies(StickySession()).strip_request_fields(fields) is fields


def test_strip_request_fields_server_mode_restores_the_backend_value() -> None:
    cookies = server_cookies()
    response = cookies.response_fields(KEY, [(b"Set-Cookie", b'SESSION="a~b"; Path=/')], False)
    value = response[0][1].split(b";", 1)[0].split(b"=", 1)[1]
    fields = [(b"Cookie", b"SESSION=" + value + b"; z=9")]
    assert cookies.endpoint_for_fields(fields) == KEY
    assert cookies.strip_request_fields(fields) == [(b"Cookie", b'SESSION="a~b"; z=9')]


def test_response_fields_insert_mode_adds_a_cookie_only_when_needed() -> None:
    cookies = insert_cookies(max_age=120)
    fields = [(b"Content-Type", b"text/plain")]
    assert cookies.response_fields(KEY, fields, had_valid_cookie=True, now=NOW) is fields
    added = cookies.response_fields(KEY, fields, had_valid_cookie=False, now=NOW)
    assert added[:1] == fields and fields == [(b"Content-Type", b"text/plain")]
    name, value = added[1]
    assert name == b"Set-Cookie"
    assert value.split(b"; ")[1:] == [b"Max-Age=120", b"Path=/", b"HttpOnly", b"SameSite=Lax"]
    assert cookies.endpoint_for_fields([(b"Cookie", value.split(b";")[0])], now=NOW) == KEY


def test_response_fields_insert_mode_is_secure_on_https() -> None:
    added = insert_cookies(secure=True).response_fields(KEY, [], False, now=NOW)
    assert added[0][1].endswith(b"; SameSite=Lax; Secure")


def test_response_fields_server_mode_prefixes_the_backend_cookie() -> None:
    cookies = server_cookies()
    fields = [
        (b"set-cookie", b"other=1"),
        (b"Set-Cookie", b"SESSION=abc; Path=/; HttpOnly"),
        (b"Set-Cookie", b"SESSION=; Max-Age=0"),
        (b"Set-Cookie", b"SESSION=x; Max-Age=" + b"9" * 5000),
    ]
    out = cookies.response_fields(OTHER, fields, had_valid_cookie=True, now=NOW)
    assert out[0] == fields[0] and out[2] == fields[2]
    assert out[1][0] == b"Set-Cookie"
    assert out[1][1].endswith(b"~abc; Path=/; HttpOnly")
    assert b"~x; Max-Age=" in out[3][1]
    request = [(b"Cookie", out[1][1].split(b";", 1)[0])]
    assert cookies.endpoint_for_fields(request, now=NOW + 1) == OTHER
    assert cookies.strip_request_fields(request) == [(b"Cookie", b"SESSION=abc")]


def test_response_fields_server_mode_without_the_cookie_returns_the_same_list() -> None:
    fields = [(b"Set-Cookie", b"other=SESSION")]
    assert server_cookies().response_fields(KEY, fields, False) is fields


def test_response_fields_of_a_disabled_policy_are_unchanged() -> None:
    fields = [(b"Set-Cookie", b"WSLB_STICKY=x")]
    cookies = StickyCookies(StickySession())
    assert cookies.response_fields(KEY, fields, False) is fields
    assert cookies.endpoint_for_fields([(b"Cookie", b"WSLB_STICKY=x")]) is None
