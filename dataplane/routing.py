"""Forwarding rules (host and path to a backend group) and certificate choice by SNI.

Pure and precompiled: a `Router` is built once per snapshot and answers each request
with a few dict lookups (one per host suffix, one per path segment), never a scan of
the rules. It knows names only: no groups, backends or certificates themselves.

Most specific match wins (docs/http.md):

1. host: an exact host beats a wildcard, a longer wildcard (`*.a.example.com`) beats a
   shorter one (`*.example.com`), and any wildcard beats a rule with no host;
2. then, within the most specific host that has a matching path: an exact path beats a
   prefix, and a longer prefix beats a shorter one;
3. between rules with the same host and path, the first in order wins (the others are
   reported in `Router.shadowed`); nothing matching goes to the default group.

A wildcard host `*.example.com` matches one or more labels in front of `example.com`
(`a.example.com`, `a.b.example.com`) but not `example.com` itself, as Gateway API
hostnames do. Paths are matched as received (case-sensitive, no percent-decoding or
dot-segment removal), segment-aware: prefix `/api` matches `/api`, `/api/` and `/api/x`,
never `/apix`. A certificate's wildcard name covers exactly one label (RFC 6125 §6.4.3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PathMatch = Literal["prefix", "exact"]

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class RuleError(ValueError):
    """A rule or certificate name that cannot be compiled; `index` says which one."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"rule {index}: {message}")
        self.index = index


@dataclass(frozen=True, slots=True)
class Rule:
    """One forwarding rule; `host` None (or empty) means any host."""

    group: str
    host: str | None = None
    path: str = "/"
    match: PathMatch = "prefix"


@dataclass(frozen=True, slots=True)
class Route:
    """The answer for one request: the group, and the index of the rule that chose it
    (None for the default group), for metrics and logs."""

    group: str
    rule: int | None


def normalise_host(host: str) -> str:
    """A host as the rules compare it: lowercase, without port or trailing dot."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0].rstrip(".")


class _PathTable:
    """The paths of one host: exact paths and segment prefixes, each to a rule index."""

    __slots__ = ("exact", "prefix")

    def __init__(self) -> None:
        self.exact: dict[str, int] = {}
        self.prefix: dict[str, int] = {}

    def add(self, path: str, match: PathMatch, index: int) -> bool:
        """Add a rule; False when an earlier rule already has this path."""
        table = self.exact if match == "exact" else self.prefix
        key = path if match == "exact" or path == "/" else path.rstrip("/")
        if key in table:
            return False
        table[key] = index
        return True

    def lookup(self, path: str) -> int | None:
        found = self.exact.get(path)
        if found is not None or not self.prefix:
            return found
        prefix = self.prefix
        candidate = path
        while True:
            found = prefix.get(candidate)
            if found is not None:
                return found
            cut = candidate.rfind("/")
            if cut <= 0:
                return prefix.get("/")
            candidate = candidate[:cut]


class Router:
    """Ordered forwarding rules compiled for lookup; see the module docstring."""

    __slots__ = (
        "_any",
        "_exact",
        "_max_wildcard_labels",
        "_wildcard",
        "default",
        "rules",
        "shadowed",
    )

    def __init__(self, rules: Sequence[Rule], default: str) -> None:
        self.rules = tuple(rules)
        self.default = default
        self.shadowed: list[int] = []
        self._exact: dict[str, _PathTable] = {}
        self._wildcard: dict[str, _PathTable] = {}  # suffix without "*.", e.g. "example.com"
        self._any = _PathTable()
        self._max_wildcard_labels = 0
        for index, rule in enumerate(self.rules):
            table = self._table_for(index, rule.host)
            if not rule.path.startswith("/") or any(c in rule.path for c in "?# \t"):
                raise RuleError(index, f"path must start with / and hold no query: {rule.path!r}")
            if rule.match not in ("prefix", "exact"):
                raise RuleError(index, f"path match must be prefix or exact: {rule.match!r}")
            if not table.add(rule.path, rule.match, index):
                self.shadowed.append(index)

    def _table_for(self, index: int, host: str | None) -> _PathTable:
        if not host:
            return self._any
        name = host.lower().rstrip(".")
        if name.startswith("*."):
            suffix = name[2:]
            if not _NAME.fullmatch(suffix):
                raise RuleError(index, f"invalid wildcard host {host!r}")
            self._max_wildcard_labels = max(self._max_wildcard_labels, suffix.count(".") + 1)
            return self._wildcard.setdefault(suffix, _PathTable())
        if not _NAME.fullmatch(name):
            raise RuleError(index, f"invalid host {host!r} (a DNS name or *.name)")
        return self._exact.setdefault(name, _PathTable())

    def route(self, host: str, target: str) -> Route:
        """The group for a request: `host` as normalise_host gives it (http1.RequestHead
        .host is), `target` the request target (a query is ignored)."""
        cut = target.find("?")
        path = target if cut < 0 else target[:cut]
        table = self._exact.get(host)
        if table is not None:
            found = table.lookup(path)
            if found is not None:
                return Route(self.rules[found].group, found)
        if self._wildcard:
            labels = host.split(".")
            # longest suffix first; a wildcard needs at least one label in front of it
            for start in range(max(1, len(labels) - self._max_wildcard_labels), len(labels)):
                table = self._wildcard.get(".".join(labels[start:]))
                if table is not None:
                    found = table.lookup(path)
                    if found is not None:
                        return Route(self.rules[found].group, found)
        found = self._any.lookup(path)
        if found is not None:
            return Route(self.rules[found].group, found)
        return Route(self.default, None)


class CertificateChooser:
    """Which certificate answers a TLS ClientHello, by its server name (SNI).

    `certificates` are (id, names) in order; the first is the default (no SNI, or no
    name matches). An exact name beats a wildcard; between equal names the earlier
    certificate wins.
    """

    __slots__ = ("_exact", "_wildcard", "default")

    def __init__(self, certificates: Sequence[tuple[str, Sequence[str]]]) -> None:
        if not certificates:
            raise RuleError(0, "at least one certificate is needed")
        self.default = certificates[0][0]
        self._exact: dict[str, str] = {}
        self._wildcard: dict[str, str] = {}
        for index, (cert_id, names) in enumerate(certificates):
            for raw in names:
                name = raw.lower().rstrip(".")
                if name.startswith("*."):
                    if not _NAME.fullmatch(name[2:]):
                        raise RuleError(index, f"invalid certificate name {raw!r}")
                    self._wildcard.setdefault(name[2:], cert_id)
                elif _NAME.fullmatch(name):
                    self._exact.setdefault(name, cert_id)
                else:
                    raise RuleError(index, f"invalid certificate name {raw!r}")

    def choose(self, server_name: str | None) -> str:
        """The certificate id for a ClientHello's server name (None: no SNI sent)."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is not None:
            return found
        _, dot, parent = name.partition(".")
        if dot:
            found = self._wildcard.get(parent)
            if found is not None:
                return found
        return self.default
