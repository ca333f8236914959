"""The client's optional layers, built from its config: registry exit choice and clock.

* Registry mode: when ``endpoints.exit_node_id`` is not set and ``chain.rpc_url`` and
  ``chain.contract_address`` are, the client picks its exit from the registry
  (``l2bridge.client.failover.ExitFinder``) with ``exit_nodes.min_reputation``, checks every
  exit's fresh evidence against ``tpm.golden_policy`` (required then) and the AK on chain,
  re-checks the exit in use every ``chain.attestation_interval`` at most, and fails over.
  web3 is imported only in this mode, on first use.
* Pinned exit with ``security.attestation_required``: every dial sends a fresh nonce and
  checks the evidence against ``tpm.golden_policy`` and the exit's enrolled AK, read from
  its enrolment record (``tpm.exit_enrolment``) or else from its registry record (chain
  settings); with neither the client refuses to start.
* Clock: the ``atomic_time`` sources when enabled, else the system clock; rotations run on
  its epoch boundaries every ``security.key_rotation_interval``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from attestation import policy as golden
from attestation.checker import EvidenceChecker
from attestation.enrol import Enrolment
from attestation.errors import EnrolmentError, PolicyError
from l2bridge.client.failover import ChainBoundChecker, DialSettings, ExitFinder, evidence_since
from l2bridge.client.selection import Candidate, NodeRecord, SelectionPolicy
from l2bridge.constants import ATTESTATION_NONCE_SIZE
from l2bridge.errors import NoExitAvailable
from l2bridge.node.config import Config, ConfigError
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import TunnelClock
from l2bridge.protocol.handshake import EvidenceChecker as CheckEvidence
from l2bridge.protocol.handshake import EvidenceSince
from timing.chrony import ChronyFeeder
from timing.config import build, feeders, settings_from
from timing.sources import Source


class ChainRegistry:
    """A RegistryView over RPC that (re)connects on use, so a chain that is down at start
    or restarts later is picked up without restarting the client."""

    def __init__(self, rpc_url: str, address: str) -> None:
        self._rpc, self._address = rpc_url, address
        self._client: Any = None
        self._lock = threading.Lock()

    def _registry(self) -> Any:
        with self._lock:
            if self._client is None:
                # web3 only when the registry is used: the static client never pays for it
                from contracts.client import RegistryClient, connect  # noqa: PLC0415

                self._client = RegistryClient(connect(self._rpc), self._address)
            return self._client

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._registry(), name)(*args)
        except Exception:
            self._client = None  # reconnect next time
            raise

    def healthy_nodes(self, min_reputation: int = 0) -> Iterable[bytes]:
        return list(self._call("healthy_nodes", min_reputation))

    def node(self, node_id: bytes) -> NodeRecord:
        record: NodeRecord = self._call("node", node_id)
        return record


def tunnel_clock(config: Config) -> tuple[TunnelClock, list[Source | ChronyFeeder]]:
    """The clock rotations run on, its (not yet started) sources and its chrony feed."""
    settings = settings_from(config.atomic_time)
    if settings.enabled and settings.sources:
        clock, sources = build(settings)
        return TunnelClock(clock), [*sources, *feeders(settings, clock)]
    return TunnelClock(None), []


def load_policy(
    path: Path | None, what: str = "exits chosen from the registry"
) -> golden.GoldenPolicy:
    if path is None:
        raise ConfigError(f"tpm.golden_policy: required to check {what}")
    try:
        return golden.parse(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"tpm.golden_policy: cannot read {path}: {exc.strerror}") from None
    except PolicyError as exc:
        raise ConfigError(f"tpm.golden_policy: {exc}") from None


def registry_finder(
    config: Config, settings_for: Any, metrics: Metrics, clock: TunnelClock
) -> ExitFinder | None:
    """An ExitFinder when the config asks for registry mode, else None.

    ``settings_for(policy)`` returns the DialSettings (identity, certificate, credentials).
    """
    chain = config.chain
    if config.endpoints.exit_node_id is not None or not (chain.rpc_url and chain.contract_address):
        return None
    settings: DialSettings = settings_for(load_policy(config.tpm.golden_policy))
    selection = SelectionPolicy(
        min_reputation=config.exit_nodes.min_reputation,
        max_attestation_age=chain.attestation_interval,
    )
    return ExitFinder(
        ChainRegistry(chain.rpc_url, chain.contract_address),
        settings,
        selection,
        metrics=metrics,
        clock=clock.now,
    )


def load_enrolled_ak(path: Path) -> bytes:
    """The AK (TPMT_PUBLIC) of an enrolment record written by ``shadowmesh attest enroll``."""
    try:
        return Enrolment.parse(path.read_text("ascii")).ak_public
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tpm.exit_enrolment: cannot read {path}: {exc}") from None
    except EnrolmentError as exc:
        raise ConfigError(f"tpm.exit_enrolment: {exc}") from None


class PinnedAttestation:
    """Evidence checking for a client pinned to one exit (``attestation_required``).

    One ``EvidenceChecker`` for the node's lifetime, so the exit's TPM counters are
    followed from dial to dial (a replayed or rolled-back TPM is noticed).
    """

    def __init__(
        self,
        node_id: bytes,
        policy: golden.GoldenPolicy,
        *,
        enrolled_ak: bytes | None = None,
        registry: ChainRegistry | None = None,
        clock: Callable[[], float],
    ) -> None:
        if enrolled_ak is None and registry is None:
            raise ValueError("an enrolled AK or a registry is needed")
        self.node_id = node_id
        self._aks: dict[bytes, bytes] = {}
        if enrolled_ak is not None:
            self._aks[node_id] = enrolled_ak
        self._registry = None if enrolled_ak is not None else registry
        self._verifier = EvidenceChecker(policy, self._aks.get, clock=clock)

    def since(self) -> EvidenceSince | None:
        """How far earlier dials replayed the exit's IMA list (for the next hello)."""
        return evidence_since(self._verifier, self.node_id)

    async def prepare(self) -> tuple[bytes, CheckEvidence]:
        """A fresh nonce and the checker for the next dial's evidence.

        With the registry as the AK's source the exit's record is read first (off the
        event loop); a chain that does not answer raises NoExitAvailable (retried).
        """
        nonce = secrets.token_bytes(ATTESTATION_NONCE_SIZE)
        registry = self._registry
        if registry is None:
            return nonce, self._verifier
        try:
            record = await asyncio.to_thread(registry.node, self.node_id)
        except Exception as exc:  # web3 raises many types; all mean "no answer now"
            raise NoExitAvailable(
                f"registry unreachable ({type(exc).__name__}): cannot read the exit's AK"
            ) from None
        cand = Candidate(
            self.node_id, record.endpoint, record.reputation, float(record.last_attestation),
            bytes(record.ak.x), bytes(record.ak.y),
        )  # fmt: skip
        return nonce, ChainBoundChecker(cand, self._verifier, self._aks)


def pinned_attestation(config: Config, clock: Callable[[], float]) -> PinnedAttestation | None:
    """The pinned exit's evidence check when ``security.attestation_required`` asks for it.

    Raises ConfigError when the golden policy or the exit's AK source is missing.
    """
    node_id = config.endpoints.exit_node_id
    if not config.security.attestation_required or node_id is None:
        return None
    policy = load_policy(config.tpm.golden_policy, "the pinned exit's evidence")
    if config.tpm.exit_enrolment is not None:
        ak = load_enrolled_ak(config.tpm.exit_enrolment)
        return PinnedAttestation(node_id, policy, enrolled_ak=ak, clock=clock)
    chain = config.chain
    if chain.rpc_url and chain.contract_address:
        registry = ChainRegistry(chain.rpc_url, chain.contract_address)
        return PinnedAttestation(node_id, policy, registry=registry, clock=clock)
    raise ConfigError(
        "security.attestation_required: the pinned exit's AK is unknown: set "
        "tpm.exit_enrolment or chain.rpc_url and chain.contract_address"
    )
