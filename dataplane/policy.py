"""Who may connect: the source-address ACL and the allowed WebSocket Origins.

This module owns the two admission decisions a listener makes from the client's
address and its `Origin` header. It is pure: it must not read sockets or build HTTP
answers (the proxy turns a refusal into a 403).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from lbwire.snapshot import SourceRanges

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_client_ip(text: str) -> IPAddress | None:
    """The client's address, IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4
    client) unwrapped to IPv4 so one IPv4 rule covers both; None for garbage."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _networks(cidrs: Sequence[str]) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """CIDRs split by family; a mapped IPv6 range (::ffff:a.b.c.d/n, n >= 96) also
    becomes its IPv4 range, since client addresses are unwrapped the same way."""
    v4: list[IPNetwork] = []
    v6: list[IPNetwork] = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
            continue
        v6.append(network)
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            v4.append(ipaddress.IPv4Network((mapped, network.prefixlen - 96), strict=False))
    return v4, v6


class SourceFilter:
    """Source CIDR ACL: deny wins; an empty allow list allows every address not
    denied; an address that does not parse is refused."""

    def __init__(self, ranges: SourceRanges) -> None:
        self._allow_v4, self._allow_v6 = _networks(ranges.allow)
        self._deny_v4, self._deny_v6 = _networks(ranges.deny)
        self._allow_all = not ranges.allow
        self.restricts = bool(ranges.allow or ranges.deny)
        """False when no range is configured: callers skip the check (a hot path)."""

    def allows(self, ip: str) -> bool:
        address = parse_client_ip(ip)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv4Address):
            deny, allow = self._deny_v4, self._allow_v4
        else:
            deny, allow = self._deny_v6, self._allow_v6
        if any(address in network for network in deny):
            return False
        return self._allow_all or any(address in network for network in allow)


def _origin_parts(text: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin, lower-cased, default port dropped; None when
    it is not scheme://host[:port]."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, host, port


class OriginPolicy:
    """Allowed browser Origins for the upgrade (cross-site WebSocket hijacking guard).

    Entries are exact origins (`https://app.example.com`, scheme and host compared
    case-insensitively, default ports equal to none), `https://*.example.com` for any
    subdomain (not the apex), or `*` for any origin. An empty list allows everything.

    A request without `Origin` is refused when the list is not empty: browsers always
    send it on a WebSocket upgrade, so its absence means a non-browser client, and an
    operator who lists origins asked to admit browsers from those sites only. List `*`
    to require an Origin without restricting it.
    """

    def __init__(self, allowed: Sequence[str]) -> None:
        self._allow_all = not allowed
        self._any_origin = "*" in allowed
        self._exact: set[tuple[str, str, int | None]] = set()
        self._wildcards: list[tuple[str, str, int | None]] = []
        self._literal: set[str] = set()
        for entry in allowed:
            if entry == "*":
                continue
            wildcard = "://*." in entry
            parts = _origin_parts(entry.replace("://*.", "://", 1) if wildcard else entry)
            if parts is None:
                # Not scheme://host (e.g. "null"): compared as written, case-insensitively.
                self._literal.add(entry.strip().lower())
            elif wildcard:
                scheme, host, port = parts
                self._wildcards.append((scheme, "." + host, port))
            else:
                self._exact.add(parts)

    def allows(self, origin: str | None) -> bool:
        if self._allow_all:
            return True
        if origin is None:
            return False
        if self._any_origin:
            return True
        if origin.strip().lower() in self._literal:
            return True
        parts = _origin_parts(origin)
        if parts is None:
            return False
        if parts in self._exact:
            return True
        scheme, host, port = parts
        return any(
            scheme == w_scheme and port == w_port and host.endswith(suffix)
            for w_scheme, suffix, w_port in self._wildcards
        )
