"""The push session: what the controller has sent one data plane and what it applied.

Rules (DESIGN §3): every snapshot is the whole desired state; at most one is in flight;
a newer desired state replaces a pending one; an unchanged digest sends nothing; an ack
or nack with a stale nonce is ignored; a nacked digest is not sent again until the
desired state changes. Sans-I/O: the config server feeds events in and sends what comes
out.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from lbwire.messages import Ack, Nack, NackError, SnapshotMessage
from lbwire.snapshot import Snapshot


def new_nonce() -> str:
    return secrets.token_hex(8)


@dataclass
class PushSession:
    node: str
    load_balancer: str
    applied_version: str | None = None
    applied_digest: str | None = None
    applied: Snapshot | None = None  # known content of what the data plane runs
    in_flight: tuple[str, Snapshot] | None = None  # (nonce, snapshot)
    pending: Snapshot | None = None
    last_error: NackError | None = None
    rejected_digest: str | None = None
    nonce_factory: Callable[[], str] = field(default=new_nonce, repr=False)

    def offer(self, snapshot: Snapshot) -> SnapshotMessage | None:
        """The desired state changed (or a data plane just said hello)."""
        digest = snapshot.digest()
        if self.in_flight is not None:
            in_flight_digest = self.in_flight[1].digest()
            self.pending = None if digest == in_flight_digest else snapshot
            return None
        if digest == self.applied_digest:
            self.pending = None
            if self.applied is None:
                # The data plane came back with exactly this content (hello after a
                # controller or data-plane restart): nothing to send, content now known.
                self.applied = snapshot
                self.applied_version = self.applied_version or snapshot.version
            return None
        if digest == self.rejected_digest:
            self.pending = None
            return None
        return self._send(snapshot)

    def on_ack(self, ack: Ack) -> SnapshotMessage | None:
        if self.in_flight is None or ack.nonce != self.in_flight[0]:
            return None  # stale
        snapshot = self.in_flight[1]
        self.in_flight = None
        self.applied = snapshot
        self.applied_version = snapshot.version
        self.applied_digest = snapshot.digest()
        self.last_error = None
        self.rejected_digest = None
        return self._next()

    def on_nack(self, nack: Nack) -> SnapshotMessage | None:
        if self.in_flight is None or nack.nonce != self.in_flight[0]:
            return None  # stale
        self.rejected_digest = self.in_flight[1].digest()
        self.in_flight = None
        self.last_error = nack.error
        return self._next()

    def _next(self) -> SnapshotMessage | None:
        pending, self.pending = self.pending, None
        return self.offer(pending) if pending is not None else None

    def _send(self, snapshot: Snapshot) -> SnapshotMessage:
        nonce = self.nonce_factory()
        self.in_flight = (nonce, snapshot)
        return SnapshotMessage.of(snapshot, nonce)

    def applied_generations(self) -> dict[str, int]:
        """Listener name -> generation in the snapshot this data plane acked."""
        if self.applied is None:
            return {}
        return {item.name: item.generation for item in self.applied.listeners}
