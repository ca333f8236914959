"""Choosing an exit from the registry, and remembering which exits were refused (sans-I/O).

The client reads the registry through :class:`RegistryView` (``contracts.client.
RegistryClient`` satisfies it; tests pass an in-memory one), so nothing here needs web3.
:func:`rank` turns node records and ``now`` into an ordered list of candidates:

1. only nodes the registry lists as healthy, with reputation >= ``exit_nodes.min_reputation``
   and an on-chain attestation no older than the registry's attestation interval;
2. never a node this client refused (its evidence failed, its record changed under it)
   until that node attests on chain again (its ``last_attestation`` moves past the one we
   saw when refusing): a node running other software cannot re-attest, its digest is not
   approved;
3. nodes that failed to answer recently go last (not out: if nothing else is left we try
   them again), so a dead exit does not hold up the failover;
4. then by reputation band (``reputation // REPUTATION_BAND``) high to low, then fresh
   (attested within half the interval) before older, then by nodeId. Bands rather than raw
   reputation keep the order steady while exits' on-time bonuses land a few seconds apart,
   so clients in different LANs that read the registry at slightly different times still
   meet at the same exit.

The cross-check of the three identities (on-chain ``nodeId``, the handshake identity's
``node_id``, the ``nodeId`` the evidence covers) is done by the dialer that pins the
candidate's ``node_id`` in the handshake and checks the evidence against the candidate's
on-chain AK (``l2bridge.client.failover``); :func:`check_same_node` is the comparison itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

REPUTATION_BAND = 50
FUTURE_SKEW_S = 30.0  # an attestation stamped this far ahead of our clock is not trusted
UNREACHABLE_COOLDOWN_S = 5.0  # a node that did not answer goes last for this long


class AkPoint(Protocol):
    @property
    def x(self) -> bytes: ...

    @property
    def y(self) -> bytes: ...


class NodeRecord(Protocol):
    """One registry record, as ``contracts.client.NodeInfo`` has it."""

    @property
    def node_id(self) -> bytes: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def ak(self) -> AkPoint: ...

    @property
    def reputation(self) -> int: ...

    @property
    def last_attestation(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def healthy(self) -> bool: ...


class RegistryView(Protocol):
    """The reads a client needs. Implementations may raise on an unreachable chain."""

    def healthy_nodes(self, min_reputation: int = 0) -> Iterable[bytes]: ...

    def node(self, node_id: bytes) -> NodeRecord: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: bytes
    endpoint: str
    reputation: int
    attested_at: float  # chain time of the last on-chain attestation
    ak_x: bytes
    ak_y: bytes

    @property
    def short(self) -> str:
        return self.node_id.hex()[:16]


@dataclass(frozen=True, slots=True)
class SelectionPolicy:
    min_reputation: int = 500
    max_attestation_age: float = 3600.0  # the registry's attestation interval
    reputation_band: int = REPUTATION_BAND

    def __post_init__(self) -> None:
        if not 0 <= self.min_reputation <= 1000:
            raise ValueError("min_reputation must be 0..1000")
        if self.max_attestation_age <= 0 or self.reputation_band < 1:
            raise ValueError("max_attestation_age and reputation_band must be positive")


@dataclass(frozen=True, slots=True)
class Excluded:
    node_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Ranking:
    order: tuple[Candidate, ...]
    excluded: tuple[Excluded, ...]

    @property
    def best(self) -> Candidate | None:
        return self.order[0] if self.order else None


@dataclass(frozen=True, slots=True)
class Refusal:
    attested_at: float  # the on-chain attestation time we saw when refusing
    reason: str
    at: float


def candidate_from(record: NodeRecord) -> Candidate:
    return Candidate(
        node_id=bytes(record.node_id),
        endpoint=record.endpoint,
        reputation=int(record.reputation),
        attested_at=float(record.last_attestation),
        ak_x=bytes(record.ak.x),
        ak_y=bytes(record.ak.y),
    )


class Refusals:
    """Exits this client refused, and exits that recently did not answer."""

    def __init__(self, cooldown: float = UNREACHABLE_COOLDOWN_S) -> None:
        self._refused: dict[bytes, Refusal] = {}
        self._unreachable: dict[bytes, float] = {}
        self._cooldown = cooldown

    def refuse(self, candidate: Candidate, reason: str, now: float) -> None:
        self._refused[candidate.node_id] = Refusal(candidate.attested_at, reason, now)

    def unreachable(self, node_id: bytes, now: float) -> None:
        self._unreachable[node_id] = now

    def reachable(self, node_id: bytes) -> None:
        self._unreachable.pop(node_id, None)

    def refusal(self, node_id: bytes) -> Refusal | None:
        return self._refused.get(node_id)

    def blocks(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` stays refused, or None.

        Only an on-chain attestation made after the refusal lifts it. One that is merely
        newer than the record we dialled from may have been made before the exit changed
        (it attests every few seconds), so it proves nothing about what runs now.
        """
        refusal = self._refused.get(candidate.node_id)
        if refusal is None:
            return None
        if candidate.attested_at > max(refusal.attested_at, refusal.at):
            del self._refused[candidate.node_id]
            return None
        return f"refused: {refusal.reason}"

    def cooling(self, node_id: bytes, now: float) -> bool:
        since = self._unreachable.get(node_id)
        return since is not None and now - since < self._cooldown

    def refused_ids(self) -> tuple[bytes, ...]:
        return tuple(self._refused)


def rank(
    records: Iterable[NodeRecord],
    policy: SelectionPolicy,
    refusals: Refusals,
    now: float,
    credentialed: frozenset[bytes] | None = None,
) -> Ranking:
    """Order the usable exits, best first; say why each other one is left out.

    ``credentialed``: the exits this client holds a credential for (None: no filter);
    any other exit would answer it as a web server, so it is left out."""
    usable: list[Candidate] = []
    excluded: list[Excluded] = []
    seen: set[bytes] = set()
    for record in records:
        cand = candidate_from(record)
        if cand.node_id in seen:
            continue
        seen.add(cand.node_id)
        age = now - cand.attested_at
        if not record.healthy or record.status != "active":
            why = f"not healthy on chain ({record.status})"
        elif cand.reputation < policy.min_reputation:
            why = f"reputation {cand.reputation} below {policy.min_reputation}"
        elif age > policy.max_attestation_age:
            why = f"attestation {age:.0f} s old"
        elif age < -FUTURE_SKEW_S:
            why = "attestation dated in the future"
        elif not cand.endpoint.startswith(("ws://", "wss://")):
            why = "endpoint is not a ws:// or wss:// URL"
        elif credentialed is not None and cand.node_id not in credentialed:
            why = "no credential for this exit (endpoints.credential_file)"
        else:
            why = refusals.blocks(cand) or ""
        if why:
            excluded.append(Excluded(cand.node_id, why))
        else:
            usable.append(cand)
    half = policy.max_attestation_age / 2

    def key(c: Candidate) -> tuple[bool, int, bool, bytes]:
        return (
            refusals.cooling(c.node_id, now),
            -(c.reputation // policy.reputation_band),
            now - c.attested_at > half,
            c.node_id,
        )

    return Ranking(tuple(sorted(usable, key=key)), tuple(excluded))


def check_same_node(on_chain: bytes, handshake: bytes, evidence: bytes) -> bool:
    """Whether the registry's nodeId, the handshake identity's and the evidence's agree."""
    return (
        len(on_chain) == 32
        and hmac.compare_digest(on_chain, handshake)
        and hmac.compare_digest(handshake, evidence)
    )
