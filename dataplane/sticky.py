"""Sticky sessions: the cookie that sends a client back to the endpoint it had.

This module owns the token format, its HMAC signature and the rewriting of `Cookie`
and `Set-Cookie` headers for the two modes:

- insert: the load balancer sets its own cookie on the 101 and removes it from
  requests before they reach a backend.
- server: the backend's own cookie (named in the policy) is prefixed on the way out
  with `<token>~` and the prefix is stripped on the way in, so the backend only ever
  sees the value it set (HAProxy's `cookie ... prefix`).

Tokens are `<base64url endpoint key>.<expiry unix seconds>.<base64url HMAC-SHA256/128>`
under the configured secret, so any replica or worker sharing the secret accepts a
cookie another one issued. Expiry uses the wall clock because tokens cross processes
and hosts. Server mode without a secret carries an unsigned opaque endpoint id (see
`StickyCookies`).

It is pure: it must not pick a fallback endpoint (the balancer does), check
eligibility, or read anything but the headers it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Collection

from websockets.datastructures import Headers

from lbwire.snapshot import StickyMode, StickySession

PREFIX_SEPARATOR = "~"
"""Between our token and the backend's value in server mode; never in a token."""

MAX_COOKIE_VALUE = 4096
"""Longer values are not ours (browsers cap a cookie near 4 KiB); parsing stops there."""

_MAC_BYTES = 16
_SIGNED_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,400})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})")
_UNSIGNED_TOKEN = re.compile(r"[A-Za-z0-9_-]{12}")
_DOMAIN = b"wslb-sticky-v1\x00"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def opaque_id(endpoint_key: str) -> str:
    """Unsigned stand-in for an endpoint key: does not show the backend address."""
    return _b64encode(hashlib.blake2b(endpoint_key.encode(), digest_size=9).digest())


def _unquote(value: str) -> tuple[str, bool]:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1], True
    return value, False


def _requote(value: str, quoted: bool) -> str:
    return f'"{value}"' if quoted else value


def _is_our_token(text: str) -> bool:
    """Shaped like a token of either kind (signature not checked): safe to strip."""
    return bool(_SIGNED_TOKEN.fullmatch(text) or _UNSIGNED_TOKEN.fullmatch(text))


class StickyCookies:
    """Reads and writes the sticky cookie of one listener.

    `secure` marks the inserted cookie `Secure` (an HTTPS listener). `endpoint_keys`
    is consulted live (pass the proxy's endpoint mapping) only in server mode without
    a secret: there the cookie holds an unsigned opaque id of the endpoint, accepted
    only when it names an endpoint that exists. A client can then only steer itself to
    an endpoint it could have been balanced to anyway, and the backend address is not
    disclosed; signing with an empty key would look like protection while giving none.
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
        self._max_age = policy.max_age_seconds
        self._secret = policy.secret.encode() if policy.secret else None
        self._secure = secure
        self._endpoint_keys = endpoint_keys
        self._opaque_ids: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self._mode is not StickyMode.NONE

    # --- tokens -----------------------------------------------------------------------

    def _mac(self, body: str) -> str:
        assert self._secret is not None
        message = _DOMAIN + self._name.encode() + b"\x00" + body.encode()
        return _b64encode(hmac.digest(self._secret, message, hashlib.sha256)[:_MAC_BYTES])

    def issue(self, endpoint_key: str, now: float | None = None) -> str:
        """A token naming `endpoint_key`, valid for the policy's max age."""
        if self._secret is None:
            return opaque_id(endpoint_key)
        expiry = int(time.time() if now is None else now) + self._max_age
        body = f"{_b64encode(endpoint_key.encode())}.{expiry}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The endpoint key a token names, or None when it is malformed, forged,
        signed with another secret or expired."""
        if self._secret is None:
            return self._key_for_opaque_id(token)
        match = _SIGNED_TOKEN.fullmatch(token)
        if match is None:
            return None
        encoded_key, expiry, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(f"{encoded_key}.{expiry}")):
            return None
        if int(expiry) <= (time.time() if now is None else now):
            return None
        try:
            return _b64decode(encoded_key).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _key_for_opaque_id(self, token: str) -> str | None:
        if not _UNSIGNED_TOKEN.fullmatch(token):
            return None
        for key in self._endpoint_keys:
            known = self._opaque_ids.get(key)
            if known is None:
                known = self._opaque_ids[key] = opaque_id(key)
            if hmac.compare_digest(known, token):
                return key
        return None

    # --- requests ---------------------------------------------------------------------

    def endpoint_for(self, headers: Headers, now: float | None = None) -> str | None:
        """The endpoint key the client's cookie asks for, or None (no cookie, tampered,
        expired, unknown). Never raises on garbage."""
        if not self.enabled:
            return None
        for value in self._our_cookie_values(headers):
            if self._mode is StickyMode.SERVER:
                token, separator, _ = value.partition(PREFIX_SEPARATOR)
                if not separator:
                    continue
            else:
                token = value
            key = self.verify(token, now)
            if key is not None:
                return key
        return None

    def _our_cookie_values(self, headers: Headers) -> list[str]:
        values = []
        for header in headers.get_all("Cookie"):
            for name, value in _cookie_pairs(header):
                if name == self._name and len(value) <= MAX_COOKIE_VALUE:
                    values.append(_unquote(value)[0])
        return values

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
            attributes = f"Max-Age={self._max_age}; Path=/; HttpOnly; SameSite=Lax"
            if self._secure:
                attributes += "; Secure"
            headers["Set-Cookie"] = f"{self._name}={self.issue(endpoint_key, now)}; {attributes}"
        elif self._mode is StickyMode.SERVER:
            originals = headers.get_all("Set-Cookie")
            rewritten = [self._prefix_set_cookie(item, endpoint_key, now) for item in originals]
            if rewritten != originals:
                del headers["Set-Cookie"]
                for item in rewritten:
                    headers["Set-Cookie"] = item

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
    for attribute in attributes.split(";"):
        key, _, value = attribute.partition("=")
        digits = value.strip().lstrip("-")
        if key.strip().lower() == "max-age" and digits.isascii() and digits.isdecimal():
            return int(value.strip()) <= 0
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
