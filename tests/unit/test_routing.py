"""Forwarding rules and SNI certificate choice: most specific match wins."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.routing import (
    CertificateChooser,
    Route,
    Router,
    Rule,
    RuleError,
    normalise_host,
)

pytestmark = pytest.mark.unit


def group(router: Router, host: str, target: str) -> str:
    return router.route(host, target).group


def test_no_rules_goes_to_the_default_group() -> None:
    assert Router([], "web").route("a.example.com", "/x") == Route("web", None)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/x/y", "api"),
        ("/api?q=1", "api"),
        ("/apix", "web"),
        ("/ap", "web"),
        ("/", "web"),
        ("/other/api", "web"),
    ],
)
def test_prefix_is_segment_aware(target: str, expected: str) -> None:
    router = Router([Rule("api", path="/api")], "web")
    assert group(router, "h", target) == expected


def test_prefix_with_trailing_slash_is_the_same_prefix() -> None:
    router = Router([Rule("api", path="/api/")], "web")
    assert group(router, "h", "/api") == "api"
    assert group(router, "h", "/api/x") == "api"
    assert group(router, "h", "/apix") == "web"


def test_exact_path_matches_only_itself() -> None:
    router = Router([Rule("health", path="/healthz", match="exact")], "web")
    assert group(router, "h", "/healthz") == "health"
    assert group(router, "h", "/healthz?full=1") == "health"
    assert group(router, "h", "/healthz/") == "web"
    assert group(router, "h", "/healthz/x") == "web"


def test_longest_prefix_wins_whatever_the_order() -> None:
    rules = [Rule("root", path="/"), Rule("api", path="/api"), Rule("v2", path="/api/v2")]
    for ordered in (rules, rules[::-1]):
        router = Router(ordered, "default")
        assert group(router, "h", "/api/v2/x") == "v2"
        assert group(router, "h", "/api/v1") == "api"
        assert group(router, "h", "/static") == "root"


def test_exact_path_beats_a_prefix_of_the_same_host() -> None:
    router = Router([Rule("prefix", path="/ws"), Rule("exact", path="/ws", match="exact")], "d")
    assert group(router, "h", "/ws") == "exact"
    assert group(router, "h", "/ws/room") == "prefix"


def test_exact_host_beats_wildcard_beats_any() -> None:
    router = Router(
        [
            Rule("any", path="/"),
            Rule("wild", host="*.example.com"),
            Rule("exact", host="app.example.com"),
        ],
        "default",
    )
    assert group(router, "app.example.com", "/") == "exact"
    assert group(router, "api.example.com", "/") == "wild"
    assert group(router, "example.com", "/") == "any"
    assert group(router, "other.org", "/") == "any"


def test_host_outranks_path_length() -> None:
    """A rule for the exact host wins over a longer path on any host."""
    router = Router([Rule("deep", path="/api/v1/users"), Rule("host", host="a.example")], "d")
    assert group(router, "a.example", "/api/v1/users") == "host"
    assert group(router, "b.example", "/api/v1/users") == "deep"


def test_less_specific_host_answers_when_the_specific_one_has_no_matching_path() -> None:
    router = Router(
        [Rule("exact-api", host="a.example.com", path="/api"), Rule("wild", host="*.example.com")],
        "default",
    )
    assert group(router, "a.example.com", "/api/x") == "exact-api"
    assert group(router, "a.example.com", "/page") == "wild"
    assert group(router, "b.example.com", "/api/x") == "wild"


def test_wildcard_matches_one_or_more_labels_not_the_bare_domain() -> None:
    router = Router([Rule("wild", host="*.example.com")], "default")
    assert group(router, "a.example.com", "/") == "wild"
    assert group(router, "a.b.example.com", "/") == "wild"
    assert group(router, "example.com", "/") == "default"
    assert group(router, "badexample.com", "/") == "default"
    assert group(router, "", "/") == "default"


def test_longer_wildcard_beats_shorter() -> None:
    router = Router(
        [Rule("short", host="*.example.com"), Rule("long", host="*.eu.example.com")], "d"
    )
    assert group(router, "x.eu.example.com", "/") == "long"
    assert group(router, "x.us.example.com", "/") == "short"
    assert group(router, "eu.example.com", "/") == "short"


def test_hosts_are_case_insensitive() -> None:
    router = Router([Rule("a", host="App.Example.COM.")], "d")
    assert group(router, normalise_host("APP.example.com:8443"), "/") == "a"


def test_route_names_the_rule_that_chose() -> None:
    router = Router([Rule("a", path="/a"), Rule("b", path="/b")], "d")
    assert router.route("h", "/b/x") == Route("b", 1)


def test_first_of_two_identical_rules_wins_and_the_second_is_shadowed() -> None:
    router = Router(
        [
            Rule("first", host="a.example", path="/x"),
            Rule("second", host="A.example", path="/x/"),
            Rule("other", host="a.example", path="/x", match="exact"),
        ],
        "d",
    )
    assert group(router, "a.example", "/x/y") == "first"
    assert router.shadowed == [1]


@pytest.mark.parametrize(
    "rule",
    [
        Rule("g", host="a..example"),
        Rule("g", host="*.*.example"),
        Rule("g", host="a.*.example"),
        Rule("g", host="exa mple"),
        Rule("g", host="-a.example"),
        Rule("g", path="api"),
        Rule("g", path="/api?x=1"),
        Rule("g", path="/a b"),
    ],
)
def test_invalid_rule_is_refused_with_its_index(rule: Rule) -> None:
    with pytest.raises(RuleError) as caught:
        Router([Rule("ok"), rule], "d")
    assert caught.value.index == 1


def test_normalise_host() -> None:
    assert normalise_host("A.Example.com:80") == "a.example.com"
    assert normalise_host("a.example.com.") == "a.example.com"
    assert normalise_host("[::1]:8080") == "[::1]"


_SEGMENTS = st.lists(st.sampled_from(["a", "b", "api", "ap", "v1"]), max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_SEGMENTS, st.sampled_from(["prefix", "exact"])), max_size=6),
    _SEGMENTS,
)
def test_lookup_agrees_with_a_plain_scan(
    rules: list[tuple[list[str], str]], path: list[str]
) -> None:
    """The compiled lookup gives what scanning every rule for the longest match gives."""
    compiled = [
        Rule(f"g{i}", path="/" + "/".join(segs), match="exact" if kind == "exact" else "prefix")
        for i, (segs, kind) in enumerate(rules)
    ]
    target = "/" + "/".join(path)

    def matches(rule: Rule) -> bool:
        if rule.match == "exact":
            return target == rule.path
        prefix = rule.path.rstrip("/")
        return prefix == "" or target == prefix or target.startswith(prefix + "/")

    candidates = [(i, r) for i, r in enumerate(compiled) if matches(r)]
    # exact first, then longest prefix, then earliest
    candidates.sort(key=lambda ir: (ir[1].match != "exact", -len(ir[1].path.rstrip("/")), ir[0]))
    expected = candidates[0][1].group if candidates else "default"
    assert group(Router(compiled, "default"), "h", target) == expected


# ------------------------------------------------------------------ SNI


def chooser() -> CertificateChooser:
    return CertificateChooser(
        [
            ("main", ["example.com", "www.example.com"]),
            ("wild", ["*.example.com"]),
            ("api", ["api.example.com"]),
            ("other", ["*.example.org", "example.org"]),
        ]
    )


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("www.example.com", "main"),
        ("api.example.com", "api"),
        ("API.Example.com.", "api"),
        ("shop.example.com", "wild"),
        ("a.b.example.com", "main"),  # a certificate wildcard covers one label only
        ("example.org", "other"),
        ("x.example.org", "other"),
        ("unknown.net", "main"),
        ("", "main"),
        (None, "main"),
    ],
)
def test_certificate_by_server_name(server_name: str | None, expected: str) -> None:
    assert chooser().choose(server_name) == expected


def test_first_certificate_with_a_name_wins() -> None:
    certs = CertificateChooser([("a", ["x.example"]), ("b", ["x.example", "y.example"])])
    assert certs.choose("x.example") == "a"
    assert certs.choose("y.example") == "b"


def test_certificate_names_are_checked() -> None:
    with pytest.raises(RuleError):
        CertificateChooser([("a", ["ok.example"]), ("b", ["bad name"])])
    with pytest.raises(RuleError):
        CertificateChooser([])
