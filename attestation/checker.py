"""Client side: the handshake's ``evidence_checker(evidence, nonce, node_id) -> None``.

Refuses (``AttestationRefused`` with every reason) evidence that fails the verifier, or
comes from a node with no enrolled AK. Keeps each node's TPM counter state between
handshakes so a replayed or rolled-back TPM is noticed, and how far it has replayed the
exit's IMA list, so a later handshake only checks the files opened since (and, through
``since``, the client can ask the exit to send only those). The reasons are
for our log and the user; the handshake must not send them to the exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from attestation import verifier
from attestation.errors import AttestationRefused
from attestation.evidence import Since
from attestation.policy import GoldenPolicy

log = logging.getLogger(__name__)


class EvidenceChecker:
    def __init__(
        self,
        policy: GoldenPolicy,
        enrolled_aks: Mapping[bytes, bytes] | Callable[[bytes], bytes | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``enrolled_aks`` maps a nodeId to its enrolled AK's TPMT_PUBLIC (from an
        enrolment record or the registry)."""
        self._policy = policy
        self._lookup = enrolled_aks.get if isinstance(enrolled_aks, Mapping) else enrolled_aks
        self._clock = clock
        self._states: dict[bytes, verifier.NodeState] = {}
        self._lock = threading.Lock()

    def since(self, node_id: bytes) -> Since | None:
        """How far this checker has replayed ``node_id``'s IMA list (None: never checked
        it), for a hello that asks the exit for the entries after those only."""
        with self._lock:
            state = self._states.get(node_id)
        return None if state is None else Since(state.reset_count, state.ima.count)

    def __call__(self, evidence: bytes, nonce: bytes, node_id: bytes) -> None:
        ak = self._lookup(node_id)
        if ak is None:
            reasons = ("signature: no enrolled AK for this nodeId",)
            log.warning("exit %s refused: %s", node_id.hex()[:16], reasons[0])
            raise AttestationRefused(reasons)
        with self._lock:
            verdict = verifier.verify(
                evidence,
                nonce=nonce,
                node_id=node_id,
                trusted_ak=ak,
                policy=self._policy,
                previous=self._states.get(node_id),
                now=self._clock(),
            )
            if verdict.state is not None:
                self._states[node_id] = verdict.state
        if not verdict.ok:
            log.warning("exit %s refused: %s", node_id.hex()[:16], "; ".join(verdict.reasons))
            raise AttestationRefused(verdict.reasons)
