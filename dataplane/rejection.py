"""A load balancer's own error answer before any backend is involved: `Rejection`.

Its own module (plain Python) because it is an exception dataclass, which mypyc cannot
compile, while the handshake and HTTP modules that raise it are compiled.
"""

from __future__ import annotations

import http
from dataclasses import dataclass, field


@dataclass
class Rejection(Exception):
    """An HTTP error answer to a client, before any backend is involved; `label` is the
    reason counted in the rejections metric (derived from the status when not given)."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = "header_too_large" if self.status == 431 else "bad_request"

    def render(self) -> bytes:
        return render_response(self.status, self.reason, self.headers)


def render_response(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> bytes:
    """A short plain-text HTTP/1.1 response that closes the connection."""
    phrase = http.HTTPStatus(status).phrase
    body = (text.rstrip("\n") + "\n").encode()
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Server: wslb",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
