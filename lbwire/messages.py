"""Config-channel messages (subprotocol `wslb.config.v1`), one JSON object per text frame.

    data plane -> controller   hello{node, loadBalancer, lastAppliedVersion, lastAppliedDigest}
    controller -> data plane   snapshot{version, nonce, digest, snapshot}
    data plane -> controller   ack{version, nonce}
                               nack{nonce, appliedVersion, error{reason, message, listeners}}

This module only encodes and decodes; it raises ProtocolError for anything malformed so
that neither side ever crashes on a peer's bad message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError

from lbwire.errors import ProtocolError
from lbwire.snapshot import Model, Snapshot

SUBPROTOCOL = "wslb.config.v1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a snapshot with thousands of endpoints and certificates


class Hello(Model):
    type: Literal["hello"] = "hello"
    node: Annotated[str, Field(min_length=1, max_length=253)]
    load_balancer: Annotated[str, Field(min_length=1, max_length=253)]  # namespace/name
    last_applied_version: str | None = None
    last_applied_digest: str | None = None


class SnapshotMessage(Model):
    """The snapshot body stays a plain dict here: the data plane validates it with
    `parse_snapshot` so that a bad field becomes a precise nack, not a protocol error."""

    type: Literal["snapshot"] = "snapshot"
    version: str
    nonce: str
    digest: str
    snapshot: dict[str, Any]

    @classmethod
    def of(cls, snapshot: Snapshot, nonce: str) -> SnapshotMessage:
        return cls(
            version=snapshot.version,
            nonce=nonce,
            digest=snapshot.digest(),
            snapshot=snapshot.to_wire(),
        )


class Ack(Model):
    type: Literal["ack"] = "ack"
    version: str
    nonce: str


class NackError(Model):
    reason: str  # PascalCase, e.g. InvalidConfig, BindFailed
    message: str
    listeners: list[str] = []


class Nack(Model):
    type: Literal["nack"] = "nack"
    nonce: str
    applied_version: str | None = None
    error: NackError


Message = Annotated[Hello | SnapshotMessage | Ack | Nack, Field(discriminator="type")]
_ADAPTER: TypeAdapter[Hello | SnapshotMessage | Ack | Nack] = TypeAdapter(Message)


def encode(message: Hello | SnapshotMessage | Ack | Nack) -> str:
    return json.dumps(message.model_dump(mode="json", by_alias=True), separators=(",", ":"))


def decode(text: str | bytes) -> Hello | SnapshotMessage | Ack | Nack:
    """Parse one message; raise ProtocolError (never anything else) when malformed."""
    try:
        data: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProtocolError(f"bad message at {where or '(root)'}: {first['msg']}") from None
