"""Sticky-session cookies of dataplane.sticky."""

from __future__ import annotations

from collections.abc import Collection

import pytest
from websockets.datastructures import Headers

from dataplane.sticky import PREFIX_SEPARATOR, StickyCookies, opaque_id
from lbwire.snapshot import StickySession

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
KEY = "10.0.0.1:8080"


SECRET = "s3cret"


def insert_cookies(
    secret: str = SECRET, max_age: int = 3600, *, secure: bool = False
) -> StickyCookies:
    policy = StickySession(mode="insert", secret=secret, max_age_seconds=max_age)
    return StickyCookies(policy, secure=secure)


def server_cookies(secret: str | None = SECRET, keys: Collection[str] = ()) -> StickyCookies:
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
    cookie = issued_cookie(cookies, key="[2001:db8::7]:443")
    assert cookies.endpoint_for(request_with(f"a=1; {cookie}; b=2"), now=NOW) == (
        "[2001:db8::7]:443"
    )


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
    other_key = issued_cookie(cookies, key="10.0.0.2:8080").split("=", 1)[1].split(".")[0]
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
    keys = (KEY, "10.0.0.2:8080")
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
        server_cookies(secret=None, keys=("10.0.0.2:8080",)).endpoint_for(
            request_with(f"SESSION={value}")
        )
        is None
    )


def test_server_mode_without_secret_reads_endpoint_keys_live() -> None:
    keys: dict[str, object] = {}
    cookies = server_cookies(secret=None, keys=keys)
    request = request_with(f"SESSION={opaque_id(KEY)}{PREFIX_SEPARATOR}abc")
    assert cookies.endpoint_for(request) is None
    keys[KEY] = object()
    assert cookies.endpoint_for(request) == KEY
