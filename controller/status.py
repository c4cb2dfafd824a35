"""Conditions and the `Programmed` rules, as pure functions.

This module owns the condition vocabulary of docs/resources.md (types and reasons are
PascalCase constants), how a desired condition is merged into the ones already on an
object (`lastTransitionTime` moves only when the status flips), and how the connected
data planes' sessions decide `Programmed`. It must not import kopf or talk to the API
server; the reconciler patches what these functions return.

Programmed, for a Listener in the snapshot (and alike for a LoadBalancer):
    no data plane connected                               -> False NoDataPlanes
    a connected data plane nacked naming it, or naming none -> False Rejected (nack message)
    fewer data planes connected than the spec's replicas  -> False Pending (N never connected)
    (LoadBalancer only) the API server refused an owned object -> False ApplyFailed
    every connected data plane acked its current generation -> True  Programmed
    otherwise                                             -> False Pending
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lbwire.session import PushSession

# Condition types.
ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"  # True is the bad state, as in Gateway API listeners
PROGRAMMED = "Programmed"

# Reasons.
REASON_ACCEPTED = "Accepted"
REASON_INVALID = "Invalid"
REASON_LOAD_BALANCER_NOT_FOUND = "LoadBalancerNotFound"
REASON_PORT_CONFLICT = "PortConflict"
REASON_RESOLVED_REFS = "ResolvedRefs"
REASON_SERVICE_NOT_FOUND = "ServiceNotFound"
REASON_SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 - a reason
REASON_INVALID_CERTIFICATE = "InvalidCertificate"
REASON_RULE_SHADOWED = "RuleShadowed"  # a rule with the same match as an earlier one
REASON_NO_CONFLICTS = "NoConflicts"
REASON_PROGRAMMED = "Programmed"
REASON_PENDING = "Pending"
REASON_NO_DATA_PLANES = "NoDataPlanes"
REASON_REJECTED = "Rejected"
REASON_APPLY_FAILED = "ApplyFailed"  # the API server refused an owned object

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

MAX_MESSAGE = 32768  # metav1.Condition message limit


@dataclass(frozen=True)
class Condition:
    """A desired metav1.Condition, without lastTransitionTime (the merge adds it)."""

    type: str
    status: str
    reason: str
    message: str = ""
    observed_generation: int = 0

    @classmethod
    def of(cls, type_: str, ok: bool, reason: str, message: str, generation: int) -> Condition:
        return cls(type_, TRUE if ok else FALSE, reason, message, generation)


def merge_conditions(
    existing: Sequence[Mapping[str, Any]], desired: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """The conditions to write: `desired`, each keeping the existing lastTransitionTime
    unless its status changed. `now` is an RFC 3339 UTC timestamp."""
    previous = {str(item.get("type")): item for item in existing if isinstance(item, Mapping)}
    merged = []
    for condition in desired:
        before = previous.get(condition.type)
        since = now
        if before is not None and before.get("status") == condition.status:
            since = str(before.get("lastTransitionTime") or now)
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message[:MAX_MESSAGE],
                "observedGeneration": condition.observed_generation,
                "lastTransitionTime": since,
            }
        )
    return merged


def missing(desired: int, sessions: Sequence[PushSession]) -> str:
    """Why the connected data planes fall short of the `desired` ones, or ""."""
    absent = desired - len(sessions)
    if absent <= 0:
        return ""
    return f"{absent} of {desired} desired data planes not connected"


def listener_programmed(
    name: str,
    generation: int,
    sessions: Sequence[PushSession],
    in_snapshot: bool,
    why_not: str,
    desired: int = 0,
) -> Condition:
    """Programmed for one Listener; `why_not` explains a Listener left out of the snapshot;
    `desired` data planes (the LoadBalancer's replicas) must all be connected."""
    if not in_snapshot:
        return Condition.of(PROGRAMMED, False, REASON_PENDING, why_not, generation)
    if not sessions:
        return Condition.of(
            PROGRAMMED, False, REASON_NO_DATA_PLANES, "no data plane is connected", generation
        )
    for session in sessions:
        error = session.last_error
        if error is not None and (not error.listeners or name in error.listeners):
            message = f"{session.node}: {error.reason}: {error.message}"
            return Condition.of(PROGRAMMED, False, REASON_REJECTED, message, generation)
    behind = [s.node for s in sessions if s.applied_generations().get(name) != generation]
    if behind:
        message = f"waiting for {len(behind)} of {len(sessions)} data planes: " + ", ".join(
            sorted(behind)[:10]
        )
        return Condition.of(PROGRAMMED, False, REASON_PENDING, message, generation)
    if absent := missing(desired, sessions):
        return Condition.of(PROGRAMMED, False, REASON_PENDING, absent, generation)
    message = f"generation {generation} applied by {len(sessions)} data planes"
    return Condition.of(PROGRAMMED, True, REASON_PROGRAMMED, message, generation)


def load_balancer_programmed(
    digest: str | None, sessions: Sequence[PushSession], generation: int, desired: int = 0
) -> Condition:
    """Programmed for a LoadBalancer: the `desired` data planes are connected and every
    connected one runs the latest snapshot."""
    if digest is None:
        return Condition.of(
            PROGRAMMED, False, REASON_PENDING, "no snapshot has been built", generation
        )
    if not sessions:
        return Condition.of(
            PROGRAMMED, False, REASON_NO_DATA_PLANES, "no data plane is connected", generation
        )
    for session in sessions:
        if session.last_error is not None:
            error = session.last_error
            message = f"{session.node}: {error.reason}: {error.message}"
            return Condition.of(PROGRAMMED, False, REASON_REJECTED, message, generation)
    behind = sum(1 for s in sessions if s.applied_digest != digest)
    if behind:
        message = f"waiting for {behind} of {len(sessions)} data planes"
        return Condition.of(PROGRAMMED, False, REASON_PENDING, message, generation)
    if absent := missing(desired, sessions):
        return Condition.of(PROGRAMMED, False, REASON_PENDING, absent, generation)
    message = f"{len(sessions)} data planes run the latest snapshot"
    return Condition.of(PROGRAMMED, True, REASON_PROGRAMMED, message, generation)


def acked_count(digest: str | None, sessions: Sequence[PushSession]) -> int:
    return sum(1 for s in sessions if digest is not None and s.applied_digest == digest)


def applied_version(sessions: Sequence[PushSession]) -> str | None:
    """The oldest version any connected data plane runs (versions are integer strings)."""
    versions = [s.applied_version for s in sessions if s.applied_version is not None]
    if not versions:
        return None
    return min(versions, key=lambda v: (len(v), v))
