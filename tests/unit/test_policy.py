"""Source ACL and Origin checks of dataplane.policy."""

from __future__ import annotations

import pytest

from dataplane.policy import OriginPolicy, SourceFilter, parse_client_ip
from lbwire.snapshot import SourceRanges

pytestmark = pytest.mark.unit


def source_filter(allow: list[str] | None = None, deny: list[str] | None = None) -> SourceFilter:
    return SourceFilter(SourceRanges(allow=allow or [], deny=deny or []))


# --- source ranges --------------------------------------------------------------------


def test_empty_ranges_allow_every_address() -> None:
    acl = source_filter()
    assert acl.allows("203.0.113.9")
    assert acl.allows("2001:db8::1")


def test_allow_list_admits_only_its_ranges() -> None:
    acl = source_filter(allow=["10.0.0.0/8", "192.168.1.7/32"])
    assert acl.allows("10.200.3.4")
    assert acl.allows("192.168.1.7")
    assert not acl.allows("192.168.1.8")
    assert not acl.allows("11.0.0.1")


def test_deny_wins_over_allow() -> None:
    acl = source_filter(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert acl.allows("10.2.0.1")
    assert not acl.allows("10.1.2.3")


def test_deny_with_empty_allow_refuses_only_denied() -> None:
    acl = source_filter(deny=["198.51.100.0/24", "2001:db8:bad::/48"])
    assert not acl.allows("198.51.100.20")
    assert not acl.allows("2001:db8:bad::5")
    assert acl.allows("198.51.101.20")
    assert acl.allows("2001:db8:900d::5")


def test_ipv6_ranges_match_ipv6_clients_and_not_ipv4() -> None:
    acl = source_filter(allow=["2001:db8::/32"])
    assert acl.allows("2001:db8:1:2::3")
    assert acl.allows("2001:DB8::1")
    assert not acl.allows("2001:db9::1")
    assert not acl.allows("10.0.0.1")


def test_ipv4_mapped_ipv6_client_is_matched_as_ipv4() -> None:
    acl = source_filter(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert acl.allows("::ffff:10.1.2.3")
    assert not acl.allows("::ffff:10.9.0.1")
    assert not acl.allows("::ffff:11.0.0.1")
    assert parse_client_ip("::ffff:1.2.3.4") == parse_client_ip("1.2.3.4")


def test_mapped_ipv6_rule_also_covers_plain_ipv4_clients() -> None:
    acl = source_filter(deny=["::ffff:192.0.2.0/120"])
    assert not acl.allows("192.0.2.44")
    assert not acl.allows("::ffff:192.0.2.44")
    assert acl.allows("192.0.3.44")


@pytest.mark.parametrize("garbage", ["", "localhost", "1.2.3", "10.0.0.1/8", "::g", " 1.2.3.4x"])
def test_garbage_source_address_is_refused_even_when_all_are_allowed(garbage: str) -> None:
    assert not source_filter().allows(garbage)


# --- origins --------------------------------------------------------------------------


def test_empty_origin_list_allows_any_origin_and_none() -> None:
    policy = OriginPolicy([])
    assert policy.allows("https://evil.example")
    assert policy.allows(None)


def test_listed_origin_is_matched_exactly_with_case_insensitive_scheme_and_host() -> None:
    policy = OriginPolicy(["https://App.Example.com"])
    assert policy.allows("https://app.example.com")
    assert policy.allows("HTTPS://APP.EXAMPLE.COM")
    assert policy.allows("https://app.example.com:443")
    assert not policy.allows("http://app.example.com")
    assert not policy.allows("https://app.example.com:8443")
    assert not policy.allows("https://app.example.com.evil.net")
    assert not policy.allows("https://other.example.com")


def test_origin_with_explicit_port_needs_that_port() -> None:
    policy = OriginPolicy(["http://localhost:3000"])
    assert policy.allows("http://localhost:3000")
    assert not policy.allows("http://localhost")


def test_wildcard_origin_matches_subdomains_but_not_apex_or_lookalikes() -> None:
    policy = OriginPolicy(["https://*.example.com"])
    assert policy.allows("https://a.example.com")
    assert policy.allows("https://a.b.example.com")
    assert not policy.allows("https://example.com")
    assert not policy.allows("https://badexample.com")
    assert not policy.allows("http://a.example.com")
    assert not policy.allows("https://a.example.com.evil.net")


def test_missing_origin_is_refused_when_origins_are_listed() -> None:
    assert not OriginPolicy(["https://example.com"]).allows(None)
    assert not OriginPolicy(["*"]).allows(None)


def test_star_allows_any_present_origin() -> None:
    assert OriginPolicy(["*"]).allows("https://anything.test")


def test_null_origin_only_when_listed_literally() -> None:
    assert not OriginPolicy(["https://example.com"]).allows("null")
    assert OriginPolicy(["null"]).allows("null")


@pytest.mark.parametrize("garbage", ["", "example.com", "https://", "https://x:99999", "::"])
def test_garbage_origin_is_refused(garbage: str) -> None:
    assert not OriginPolicy(["https://example.com", "https://*.example.com"]).allows(garbage)
