"""Sticky sessions: the cookie that sends a client back to the endpoint it had.

This module owns the token format, its HMAC signature and the rewriting of `Cookie`
and `Set-Cookie` for the two modes, on the WebSocket path (`Headers`) and on the HTTP
path (http1's `(name, value)` byte fields):

- insert: the load balancer sets its own cookie (on the 101, and on an HTTP response
  when the request had no valid cookie for the endpoint that answered, or one past half
  its max age) and removes it from requests before they reach a backend.
- server: the backend's own cookie (named in the policy) is prefixed on the way out
  with `<token>~` and the prefix is stripped on the way in, so the backend only ever
  sees the value it set (HAProxy's `cookie ... prefix`).

Tokens name no backend address. A signed token is `<id>.<expiry unix seconds>.<mac>`:
`id` is a keyed hash of the endpoint key ("ip:port") under the secret (HMAC-SHA256,
96 bits, its own domain string), `mac` an HMAC-SHA256/128 of the cookie name, id and
expiry (another domain string). Only a holder of the secret can tell which endpoint an
id stands for: every replica and worker sharing the secret resolves it through a table
of the ids of the endpoints it currently has (each key hashed once, then one dict
lookup per request). Expiry uses the wall clock because tokens cross processes and
hosts. Cookies of the earlier format (which carried base64 of "ip:port") fail to verify:
such a client is balanced again and gets a new cookie; in server mode their prefix is
still stripped, so the backend keeps its value. Server mode without a secret carries an
unsigned id (an unkeyed hash: it hides the address from a glance, not from someone who
tries every address of a small network); see `StickyCookies`.

It is pure: it must not pick a fallback endpoint (the balancer does), check
eligibility, or read anything but the headers it is given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Collection

from websockets.datastructures import Headers

from lbwire.snapshot import StickyMode, StickySession

PREFIX_SEPARATOR = "~"
"""Between our token and the backend's value in server mode; never in a token."""

MAX_COOKIE_VALUE = 4096
"""Longer values are not ours (browsers cap a cookie near 4 KiB); parsing stops there."""

Fields = list[tuple[bytes, bytes]]
"""http1's header fields: names as received (any case), values trimmed."""

_MAC_BYTES = 16
_ID_BYTES = 12
_SIGNED_TOKEN = re.compile(r"([A-Za-z0-9_-]{16})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})")
# The earlier signed format (base64 of the endpoint key): never accepted, only recognised
# so that server mode still strips it from the backend's cookie.
_ANY_SIGNED_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,400}\.[0-9]{1,12}\.[A-Za-z0-9_-]{22}")
_UNSIGNED_TOKEN = re.compile(r"[A-Za-z0-9_-]{12}")
_MAC_DOMAIN = b"wslb-sticky-v2 mac\x00"
_ID_DOMAIN = b"wslb-sticky-v2 endpoint id\x00"
_COOKIE = b"cookie"
_SET_COOKIE = b"set-cookie"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def opaque_id(endpoint_key: str) -> str:
    """Unsigned stand-in for an endpoint key (server mode without a secret)."""
    return _b64encode(hashlib.blake2b(endpoint_key.encode(), digest_size=9).digest())


def _unquote(value: str) -> tuple[str, bool]:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1], True
    return value, False


def _requote(value: str, quoted: bool) -> str:
    return f'"{value}"' if quoted else value


def _is_our_token(text: str) -> bool:
    """Shaped like a token of any kind or age (signature not checked): safe to strip."""
    return bool(_ANY_SIGNED_TOKEN.fullmatch(text) or _UNSIGNED_TOKEN.fullmatch(text))


class _EndpointIds:
    """Endpoint ids both ways over a live collection of endpoint keys.

    A key is hashed once, when first seen; an id resolves with one dict lookup. An
    unknown id costs one pass of dict lookups over the current keys (to pick up keys
    added since), never a hash per key. Only keys still in the collection resolve."""

    __slots__ = ("_id_of", "_key_of", "_keys", "_make")

    def __init__(self, keys: Collection[str], make: Callable[[str], str]) -> None:
        self._keys = keys
        self._make = make
        self._id_of: dict[str, str] = {}
        self._key_of: dict[str, str] = {}

    def id_for(self, key: str) -> str:
        found = self._id_of.get(key)
        return found if found is not None else self._remember(key)

    def key_for(self, endpoint_id: str) -> str | None:
        key = self._key_of.get(endpoint_id)
        if key is None:
            self._sync()
            key = self._key_of.get(endpoint_id)
            if key is None:
                return None
        return key if key in self._keys else None

    def _remember(self, key: str) -> str:
        if len(self._id_of) > 2 * len(self._keys) + 64:
            # Keys come and go with snapshots: forget the ones that left.
            self._id_of = {k: i for k, i in self._id_of.items() if k in self._keys}
            self._key_of = {i: k for k, i in self._id_of.items()}
        endpoint_id = self._id_of[key] = self._make(key)
        self._key_of[endpoint_id] = key
        return endpoint_id

    def _sync(self) -> None:
        for key in self._keys:
            if key not in self._id_of:
                self._remember(key)


class StickyCookies:
    """Reads and writes the sticky cookie of one listener (or backend group).

    `secure` marks the inserted cookie `Secure` (an HTTPS listener). `endpoint_keys`
    (pass the proxy's live endpoint mapping) are the endpoints a token may resolve to;
    it is read at each lookup, so snapshots that change endpoints need no new object.
    In server mode without a secret the cookie holds an unsigned id, accepted only when
    it names an endpoint that exists: a client can then only steer itself to an
    endpoint it could have been balanced to anyway; signing with an empty key would
    look like protection while giving none.
    """

    def __init__(
        self,
        policy: StickySession,
        *,
        secure: bool = False,
        endpoint_keys: Collection[str] = (),
    ) -> None:
        self._mode = policy.mode
        self._name = policy.cookie_name
        self._name_bytes = policy.cookie_name.encode("ascii")
        self._max_age = policy.max_age_seconds
        self._secret = policy.secret.encode() if policy.secret else None
        self._secure = secure
        self._ids = _EndpointIds(
            endpoint_keys, opaque_id if self._secret is None else self._keyed_id
        )

    @property
    def enabled(self) -> bool:
        return self._mode is not StickyMode.NONE

    # --- tokens -----------------------------------------------------------------------

    def _keyed_id(self, endpoint_key: str) -> str:
        assert self._secret is not None
        digest = hmac.digest(self._secret, _ID_DOMAIN + endpoint_key.encode(), hashlib.sha256)
        return _b64encode(digest[:_ID_BYTES])

    def _mac(self, body: str) -> str:
        assert self._secret is not None
        message = _MAC_DOMAIN + self._name_bytes + b"\x00" + body.encode()
        return _b64encode(hmac.digest(self._secret, message, hashlib.sha256)[:_MAC_BYTES])

    def issue(self, endpoint_key: str, now: float | None = None) -> str:
        """A token naming `endpoint_key`, valid for the policy's max age."""
        endpoint_id = self._ids.id_for(endpoint_key)
        if self._secret is None:
            return endpoint_id
        expiry = int(time.time() if now is None else now) + self._max_age
        body = f"{endpoint_id}.{expiry}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The endpoint key a token names, or None when it is malformed, forged, signed
        with another secret, expired, or names no current endpoint."""
        found = self._verify(token, time.time() if now is None else now)
        return found[0] if found is not None else None

    def _verify(self, token: str, now: float) -> tuple[str, bool] | None:
        """`verify`, and whether the token is still fresh: more than half its max age
        left (an unsigned token carries no expiry: always fresh)."""
        if self._secret is None:
            key = self._ids.key_for(token) if _UNSIGNED_TOKEN.fullmatch(token) else None
            return (key, True) if key is not None else None
        match = _SIGNED_TOKEN.fullmatch(token)
        if match is None:
            return None
        endpoint_id, expiry_text, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(f"{endpoint_id}.{expiry_text}")):
            return None
        expiry = int(expiry_text)
        if expiry <= now:
            return None
        key = self._ids.key_for(endpoint_id)
        return (key, 2 * (expiry - now) > self._max_age) if key is not None else None

    # --- requests ---------------------------------------------------------------------

    def endpoint_for(self, headers: Headers, now: float | None = None) -> str | None:
        """The endpoint key the client's cookie asks for, or None (no cookie, tampered,
        expired, unknown). Never raises on garbage."""
        if not self.enabled:
            return None
        for header in headers.get_all("Cookie"):
            found = self._endpoint_in(header, time.time() if now is None else now)
            if found is not None:
                return found[0]
        return None

    def endpoint_for_fields(self, fields: Fields, now: float | None = None) -> str | None:
        """`endpoint_for` on http1 fields (any name case; bytes read as Latin-1, so no
        byte sequence raises)."""
        return self.cookie_for_fields(fields, now)[0]

    def cookie_for_fields(
        self, fields: Fields, now: float | None = None
    ) -> tuple[str | None, bool]:
        """`endpoint_for_fields`, and whether that cookie is fresh: more than half its max
        age left. A response to a request whose cookie is not fresh gets a new one
        (`response_fields`), so a client that keeps coming back stays pinned past the
        first max age, and one Set-Cookie per half max age is all it costs."""
        if not self.enabled:
            return None, False
        name = self._name_bytes
        for field_name, value in fields:
            if name in value and field_name.lower() == _COOKIE:
                found = self._endpoint_in(
                    value.decode("latin-1"), time.time() if now is None else now
                )
                if found is not None:
                    return found
        return None, False

    def _endpoint_in(self, header: str, now: float) -> tuple[str, bool] | None:
        for name, value in _cookie_pairs(header):
            if name != self._name or len(value) > MAX_COOKIE_VALUE:
                continue
            value = _unquote(value)[0]
            if self._mode is StickyMode.SERVER:
                token, separator, _ = value.partition(PREFIX_SEPARATOR)
                if not separator:
                    continue
            else:
                token = value
            found = self._verify(token, now)
            if found is not None:
                return found
        return None

    def rewrite_request(self, headers: Headers) -> None:
        """Before forwarding: insert mode drops our cookie so backends never see it;
        server mode restores the backend's own value."""
        if not self.enabled:
            return
        originals = headers.get_all("Cookie")
        if not any(self._name in header for header in originals):
            return
        rewritten = [self._rewrite_cookie_header(header) for header in originals]
        if rewritten == originals:
            return
        del headers["Cookie"]
        for header in rewritten:
            if header:
                headers["Cookie"] = header

    def strip_request_fields(self, fields: Fields) -> Fields:
        """`rewrite_request` on http1 fields: a new list with our cookie removed (insert)
        or the backend's value restored (server); a Cookie field left empty is dropped.
        `fields` itself is never changed, and comes back as is when nothing changes."""
        if not self.enabled:
            return fields
        name = self._name_bytes
        result: Fields | None = None
        for index, (field_name, value) in enumerate(fields):
            if name not in value or field_name.lower() != _COOKIE:
                if result is not None:
                    result.append((field_name, value))
                continue
            header = value.decode("latin-1")
            rewritten = self._rewrite_cookie_header(header)
            if rewritten == header and result is None:
                continue
            if result is None:
                result = fields[:index]
            if rewritten:
                result.append((field_name, rewritten.encode("latin-1")))
        return fields if result is None else result

    def _rewrite_cookie_header(self, header: str) -> str:
        kept: list[str] = []
        for name, value in _cookie_pairs(header):
            if name == self._name:
                if self._mode is StickyMode.INSERT:
                    continue
                value = _strip_prefix(value)
            kept.append(f"{name}={value}" if name else value)
        return "; ".join(kept)

    # --- responses --------------------------------------------------------------------

    def rewrite_response(
        self, endpoint_key: str, headers: Headers, now: float | None = None
    ) -> None:
        """On the backend's 101: insert mode adds our cookie; server mode prefixes the
        backend's cookie, if it sets one, with a token for `endpoint_key`."""
        if self._mode is StickyMode.INSERT:
            headers["Set-Cookie"] = self._inserted(endpoint_key, now)
        elif self._mode is StickyMode.SERVER:
            originals = headers.get_all("Set-Cookie")
            rewritten = [self._prefix_set_cookie(item, endpoint_key, now) for item in originals]
            if rewritten != originals:
                del headers["Set-Cookie"]
                for item in rewritten:
                    headers["Set-Cookie"] = item

    def response_fields(
        self,
        endpoint_key: str,
        fields: Fields,
        had_valid_cookie: bool,
        now: float | None = None,
    ) -> Fields:
        """On an HTTP response from `endpoint_key`: insert mode adds our Set-Cookie unless
        the request already had a valid, fresh cookie for this endpoint (pass the
        endpoint and freshness of `cookie_for_fields(request)`: key == endpoint_key and
        fresh). So a cookie is renewed once it is past half its max age, as a WebSocket
        upgrade renews it. Server mode prefixes the backend's Set-Cookie of the policy's
        name. Returns a new list when it changes anything, else `fields` itself (never
        changed in place)."""
        if self._mode is StickyMode.INSERT:
            if had_valid_cookie:
                return fields
            return [*fields, (b"Set-Cookie", self._inserted(endpoint_key, now).encode())]
        if self._mode is not StickyMode.SERVER:
            return fields
        name = self._name_bytes
        result: Fields | None = None
        for index, (field_name, value) in enumerate(fields):
            if name in value and field_name.lower() == _SET_COOKIE:
                original = value.decode("latin-1")
                prefixed = self._prefix_set_cookie(original, endpoint_key, now)
                if prefixed != original:
                    if result is None:
                        result = fields[:index]
                    result.append((field_name, prefixed.encode("latin-1")))
                    continue
            if result is not None:
                result.append((field_name, value))
        return fields if result is None else result

    def _inserted(self, endpoint_key: str, now: float | None) -> str:
        attributes = f"Max-Age={self._max_age}; Path=/; HttpOnly; SameSite=Lax"
        if self._secure:
            attributes += "; Secure"
        return f"{self._name}={self.issue(endpoint_key, now)}; {attributes}"

    def _prefix_set_cookie(self, set_cookie: str, endpoint_key: str, now: float | None) -> str:
        pair, semicolon, attributes = set_cookie.partition(";")
        name, equals, value = pair.partition("=")
        if not equals or name.strip() != self._name:
            return set_cookie
        inner, quoted = _unquote(value.strip())
        if not inner or _deletes_cookie(attributes):
            return set_cookie
        token = self.issue(endpoint_key, now)
        prefixed = _requote(f"{token}{PREFIX_SEPARATOR}{_strip_prefix(inner)}", quoted)
        return f"{name.strip()}={prefixed}{semicolon}{attributes}"


def _strip_prefix(value: str) -> str:
    """The backend's value without our `<token>~` prefix; unchanged when the part
    before `~` is not shaped like our token (the value may contain `~` itself)."""
    inner, quoted = _unquote(value)
    token, separator, original = inner.partition(PREFIX_SEPARATOR)
    if separator and _is_our_token(token):
        return _requote(original, quoted)
    return value


def _deletes_cookie(attributes: str) -> bool:
    """A `Max-Age` of zero or less; read without int() so no length of digits raises."""
    for attribute in attributes.split(";"):
        key, _, value = attribute.partition("=")
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        if key.strip().lower() == "max-age" and digits.isascii() and digits.isdecimal():
            return text.startswith("-") or not digits.strip("0")
    return False


def _cookie_pairs(header: str) -> list[tuple[str, str]]:
    """`a=1; b=2` as [(name, value)], tolerant of stray spaces and empty pieces; a piece
    without `=` comes back as ("", piece) so it can be forwarded unchanged."""
    pairs = []
    for piece in header.split(";"):
        piece = piece.strip()
        if not piece:
            continue
        name, equals, value = piece.partition("=")
        if equals:
            pairs.append((name.strip(), value.strip()))
        else:
            pairs.append(("", piece))
    return pairs
