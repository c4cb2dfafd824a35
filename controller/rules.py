"""Which forwarding rules of a Listener conflict, computed from the spec alone.

Two rules conflict when they have the same host, path and path type: the data plane's
router (docs/http.md, "Forwarding rules") gives such requests to the earlier rule, so the
later one never gets a request (it is shadowed). This mirrors the router's comparison (host
lowercase without a trailing dot, a prefix path without its trailing slash) without
importing the data plane, which the import contract forbids. It must not do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.models import RuleSpec
from lbwire.snapshot import PathType


@dataclass(frozen=True)
class Shadowed:
    """A rule that never matches, and the earlier rule that takes its requests."""

    rule: str
    by: str


def match_key(rule: RuleSpec) -> tuple[str, str, str]:
    """(host, path type, path) as the router compares them."""
    host = (rule.match.host or "").lower().rstrip(".")
    path = rule.match.path
    if rule.match.path_type is PathType.PREFIX and path != "/":
        path = path.rstrip("/")
    return host, rule.match.path_type.value, path


def shadowed(rules: Sequence[RuleSpec]) -> list[Shadowed]:
    """Every rule whose match an earlier rule already has, in spec order."""
    first: dict[tuple[str, str, str], str] = {}
    found = []
    for rule in rules:
        key = match_key(rule)
        if key in first:
            found.append(Shadowed(rule.name, first[key]))
        else:
            first[key] = rule.name
    return found


def describe(found: Sequence[Shadowed]) -> str:
    """A condition message naming each shadowed rule and the rule that wins."""
    return "; ".join(
        f"rule {item.rule} has the same host, path and pathType as the earlier rule "
        f"{item.by} and never matches"
        for item in found
    )
