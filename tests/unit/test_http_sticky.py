"""The sticky cookie on plain HTTP: when a response renews it (dataplane.sticky)."""

from __future__ import annotations

import pytest

from dataplane.sticky import StickyCookies
from lbwire.snapshot import StickySession

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
KEY = "10.0.0.1:8080"
OTHER = "10.0.0.2:8080"
SECRET = "s3cret"


def cookies(mode: str = "insert", secret: str | None = SECRET) -> StickyCookies:
    policy = StickySession(mode=mode, cookie_name="lb", secret=secret, max_age_seconds=600)
    return StickyCookies(policy, endpoint_keys=(KEY, OTHER))


def request(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"Host", b"h"), (b"Cookie", b"a=1; lb=" + value.encode())]


@pytest.mark.parametrize(
    ("age", "fresh"),
    [(0, True), (299, True), (300, False), (599, False)],
)
def test_cookie_is_fresh_until_half_its_max_age(age: int, fresh: bool) -> None:
    jar = cookies()
    token = jar.issue(KEY, now=NOW - age)
    assert jar.cookie_for_fields(request(token), now=NOW) == (KEY, fresh)


def test_expired_forged_or_absent_cookie_names_no_endpoint() -> None:
    jar = cookies()
    expired = jar.issue(KEY, now=NOW - 600)
    forged = cookies(secret="other").issue(KEY, now=NOW)
    for fields in (request(expired), request(forged), [(b"Host", b"h")]):
        assert jar.cookie_for_fields(fields, now=NOW) == (None, False)
    assert jar.endpoint_for_fields(request(expired), now=NOW) is None


def test_a_stale_cookie_gets_a_new_one_a_fresh_one_none() -> None:
    jar = cookies()
    stale = jar.cookie_for_fields(request(jar.issue(KEY, now=NOW - 400)), now=NOW)
    fresh = jar.cookie_for_fields(request(jar.issue(KEY, now=NOW - 10)), now=NOW)
    response = [(b"Content-Length", b"0")]
    assert jar.response_fields(KEY, response, stale == (KEY, True), now=NOW) != response
    assert jar.response_fields(KEY, response, fresh == (KEY, True), now=NOW) is response


def test_unsigned_server_mode_cookie_is_always_fresh() -> None:
    """It carries no expiry; the backend's own cookie decides its life."""
    jar = cookies(mode="server", secret=None)
    (set_cookie,) = jar.response_fields(KEY, [(b"Set-Cookie", b"lb=app; Path=/")], False)
    value = set_cookie[1].split(b";")[0].removeprefix(b"lb=").decode()
    assert jar.cookie_for_fields(request(value), now=NOW) == (KEY, True)


def test_disabled_policy_reads_no_cookie() -> None:
    jar = StickyCookies(StickySession(), endpoint_keys=(KEY,))
    assert jar.cookie_for_fields(request("anything"), now=NOW) == (None, False)
