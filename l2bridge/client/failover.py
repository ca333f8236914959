"""The client's exit choice at run time: pick from the registry, verify, fail over.

:class:`ExitFinder` is the ``connect`` callable of ``l2bridge.client.pump.Client``. Each call
ranks the registry's exits (``l2bridge.client.selection``) and dials them best first until one
passes; a failed dial moves straight to the next candidate within the same call, so a
failover costs one handshake, not a backoff. Every dial

* pins the candidate's on-chain ``nodeId`` in the handshake (the exit's identity must hash
  to it),
* sends a fresh 32-byte nonce and checks the evidence with :class:`ChainBoundChecker`: the
  evidence must cover that same ``nodeId``, be signed by the AK the registry holds for it,
  and pass the verifier and golden policy (``attestation.checker``).

An exit that fails any of these is refused until it attests on chain again; one that does
not answer goes last for a few seconds.

:meth:`ExitFinder.watch` re-checks the exit in use every ``check_interval`` (at most one
attestation interval): it asks for fresh evidence with a probe handshake that never
finishes (the exit admits nothing from it) and re-reads the node's registry record. When
either fails, the exit is refused and its link closed; the client's next ``connect`` lands
on the next healthy exit. The re-check fails closed: a probe with no answer is retried
until ``recheck_window`` ends, and silence for the whole window is a refusal too, after
which the exit is not dialled again before a backoff (doubling while it stays silent).

Fallback when the chain is unreachable: the last ranking read is used (and the status
says ``registry: unreachable (cached)``); with no ranking ever read, ``NoExitAvailable``
names the cause and the client retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attestation import evidence as ev
from attestation import tpms
from attestation.checker import EvidenceChecker
from attestation.errors import AttestationRefused, EvidenceError
from attestation.policy import GoldenPolicy
from l2bridge.client.selection import (
    Candidate,
    NodeRecord,
    Ranking,
    Refusals,
    RegistryView,
    SelectionPolicy,
    check_same_node,
    rank,
)
from l2bridge.constants import Mode
from l2bridge.crypto.pq import Backend
from l2bridge.errors import L2BridgeError, NoExitAvailable, PeerError
from l2bridge.identity.keys import DeviceCertificate, HybridSigningKey
from l2bridge.node import link as tunnel
from l2bridge.node.cover import CoverPlan, ShapingPlan
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.handshake import ClientHandshake, EvidenceSince
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.client import open_transport
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.token import mint_token

log = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 5.0
REGISTRY_TIMEOUT_S = 10.0
# A re-check retries a probe that gets no answer until this window ends; silence for the
# whole window is a refusal (an exit could otherwise dodge re-checks by dropping probes).
RECHECK_WINDOW_S = 15.0
RECHECK_RETRY_S = 1.0
# After a silent re-check the exit is not dialled again for this long, doubled at each
# silent re-check in a row (up to the maximum): it may just be down, or dodging checks.
SILENT_BACKOFF_S = 10.0
SILENT_BACKOFF_MAX_S = 600.0

Clock = Callable[[], float]


def evidence_since(verifier: EvidenceChecker, node_id: bytes) -> EvidenceSince | None:
    """The hello's ``evidence_since`` for ``node_id``: how far ``verifier`` replayed that
    exit's IMA list (None when it never checked that exit)."""
    since = verifier.since(node_id)
    return None if since is None else EvidenceSince(since.reset_count, since.ima_count)


class ChainBoundChecker:
    """The handshake's evidence checker for one candidate taken from the registry.

    Raises ``AttestationRefused`` (the handshake turns it into AuthenticationFailed) unless
    the handshake identity's nodeId is the candidate's, the evidence is for that nodeId, its
    AK is the one on chain, and the verifier accepts it. ``reasons`` keeps the last refusal.
    """

    def __init__(self, candidate: Candidate, verifier: EvidenceChecker, aks: dict[bytes, bytes]):
        self._candidate = candidate
        self._verifier = verifier
        self._aks = aks
        self.reasons: tuple[str, ...] = ()

    def _refuse(self, *reasons: str) -> AttestationRefused:
        self.reasons = reasons
        return AttestationRefused(reasons)

    def __call__(self, evidence: bytes, nonce: bytes, node_id: bytes) -> None:
        cand = self._candidate
        try:
            decoded = ev.decode(evidence)
            ak = tpms.parse_public(decoded.ak_public)
        except EvidenceError as exc:
            raise self._refuse(f"format: {exc}") from None
        if not check_same_node(cand.node_id, node_id, decoded.node_id):
            raise self._refuse("nodeId: registry, handshake identity and evidence disagree")
        if ak.x.rjust(32, b"\0") != cand.ak_x or ak.y.rjust(32, b"\0") != cand.ak_y:
            raise self._refuse("signature: evidence AK is not the AK registered on chain")
        self._aks[node_id] = decoded.ak_public
        try:
            self._verifier(evidence, nonce, node_id)
        except AttestationRefused as exc:
            self.reasons = exc.reasons
            raise


@dataclass(frozen=True, slots=True)
class DialSettings:
    """How this client talks to any exit (the same for every candidate)."""

    identity: HybridSigningKey
    credentials: CredentialWallet  # one per exit this device may use
    policy: GoldenPolicy
    certificate: DeviceCertificate | None = None
    mode: Mode = Mode.HYBRID
    session_config: SessionConfig | None = None
    token_window: int = 60
    tls: ssl.SSLContext | None = None  # for wss:// endpoints (None: the system's CAs)
    cover: CoverPlan | None = None  # cover traffic on idle links (obfuscation.cover_traffic)
    backend: Backend | None = None  # ML-KEM/ML-DSA for the handshake (security.pq_backend)
    keepalive_s: float = tunnel.KEEPALIVE_S  # endpoints.keepalive_interval
    liveness_s: float = tunnel.LIVENESS_S  # endpoints.liveness_timeout
    shaping: ShapingPlan | None = None  # obfuscation.shaping / lan_chatter
    impersonate: tuple[str, Path | None] | None = None  # endpoints.tls_impersonate
    mtu: int | None = None  # network.mtu, told in the hello (the exit warns on a mismatch)


class ExitFinder:
    """Registry-driven ``connect`` for ``Client``, with refusal, failover and watching."""

    def __init__(
        self,
        registry: RegistryView,
        settings: DialSettings,
        selection: SelectionPolicy,
        *,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        check_interval: float | None = None,
        dial_timeout: float = DIAL_TIMEOUT_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
        recheck_window: float = RECHECK_WINDOW_S,
        recheck_retry: float = RECHECK_RETRY_S,
        silent_backoff: float = SILENT_BACKOFF_S,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.selection = selection
        self.refusals = Refusals()
        self.metrics = metrics
        self._clock = clock
        self._aks: dict[bytes, bytes] = {}
        self._verifier = EvidenceChecker(settings.policy, self._aks.get, clock=clock)
        self.check_interval = check_interval or selection.max_attestation_age
        self._dial_timeout = dial_timeout
        self._probe_timeout = probe_timeout
        self.recheck_window = recheck_window
        self._recheck_retry = recheck_retry
        self._silent_backoff = silent_backoff
        self._silences: dict[bytes, int] = {}  # silent re-checks in a row, per exit
        self._redial_at: dict[bytes, float] = {}  # no dial to that exit before then
        self._cache: Ranking | None = None
        self._cache_at: float | None = None
        self.registry_state = "unknown"
        self.current: Candidate | None = None
        self._link: tunnel.Link | None = None
        self.failovers = 0
        self.probe_reasons: tuple[str, ...] = ()
        self.history: list[tuple[float, str, str]] = []  # (time, nodeId prefix, event)
        if metrics is not None:
            metrics.set_gauge("registry_reachable", self._reachable_gauge)
            metrics.set_gauge("exit_attestation_age_s", self._attestation_age)
            metrics.set_gauge("exits_refused", lambda: float(len(self.refusals.refused_ids())))

    @property
    def link(self) -> tunnel.Link | None:
        """The link handed out last (it may have ended since)."""
        return self._link

    # --- status ---------------------------------------------------------------------------

    def _reachable_gauge(self) -> float | None:
        return {"ok": 1.0, "unreachable": 0.0}.get(self.registry_state.split(" ")[0])

    def _attestation_age(self) -> float | None:
        cand = self.current
        return None if cand is None else self._clock() - cand.attested_at

    def _note(self, cand: Candidate, event: str) -> None:
        self.history.append((self._clock(), cand.short, event))
        del self.history[:-100]
        if self.metrics is not None:
            self.metrics.set_info(
                exit_node_id=cand.node_id.hex(), exit=cand.endpoint, exit_event=event
            )

    # --- the registry -----------------------------------------------------------------------

    def _read_records(self) -> list[NodeRecord]:
        ids = list(self.registry.healthy_nodes(self.selection.min_reputation))
        return [self.registry.node(i) for i in ids]

    async def ranking(self) -> Ranking:
        """A fresh ranking, or the cached one when the chain does not answer."""
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                records = await asyncio.to_thread(self._read_records)
        except Exception as exc:  # web3 raises many types; all mean "no answer now"
            if self._cache is None:
                self.registry_state = "unreachable"
                raise NoExitAvailable(
                    f"registry unreachable ({type(exc).__name__}) and no exit list read yet"
                ) from None
            self.registry_state = "unreachable (cached)"
            log.warning("registry unreachable (%s): using the list read earlier", exc)
            return self._recheck_cached(self._cache)
        self.registry_state = "ok"
        ranking = rank(
            records, self.selection, self.refusals, self._clock(),
            credentialed=self.settings.credentials.exits(),
        )  # fmt: skip
        self._cache, self._cache_at = ranking, self._clock()
        return ranking

    def _recheck_cached(self, cached: Ranking) -> Ranking:
        order = tuple(c for c in cached.order if self.refusals.blocks(c) is None)
        return Ranking(order, cached.excluded)

    # --- connecting -------------------------------------------------------------------------

    def _handshake(self, cand: Candidate) -> tuple[ClientHandshake, ChainBoundChecker]:
        s = self.settings
        checker = ChainBoundChecker(cand, self._verifier, self._aks)
        hs = ClientHandshake(
            s.identity,
            certificate=s.certificate,
            mode=s.mode,
            pinned_node_id=cand.node_id,
            attestation_nonce=secrets.token_bytes(32),
            evidence_checker=checker,
            config=s.session_config,
            backend=s.backend,
            mtu=s.mtu,
            evidence_since=evidence_since(self._verifier, cand.node_id),
        )
        return hs, checker

    def _refuse(self, cand: Candidate, reason: str) -> None:
        log.warning("exit %s refused: %s", cand.short, reason)
        self.refusals.refuse(cand, reason, self._clock())
        self._note(cand, f"refused: {reason}")

    async def dial(self, cand: Candidate) -> tunnel.Link:
        """One verified tunnel to ``cand``; refuses or cools it down on failure and raises."""
        hs, checker = self._handshake(cand)
        try:
            async with asyncio.timeout(self._dial_timeout):
                link = await tunnel.connect(
                    cand.endpoint,
                    hs,
                    credential=self.settings.credentials.for_exit(cand.node_id),
                    node_id=cand.node_id,
                    token_window=self.settings.token_window,
                    clock=self._clock,
                    ssl=self.settings.tls if cand.endpoint.startswith("wss:") else None,
                    cover=self.settings.cover,
                    keepalive_s=self.settings.keepalive_s,
                    liveness_s=self.settings.liveness_s,
                    shaping=self.settings.shaping,
                    impersonate=self.settings.impersonate
                    if cand.endpoint.startswith("wss:")
                    else None,
                )
        except PeerError:
            self._refuse(cand, "; ".join(checker.reasons) or "handshake failed")
            raise
        except (OSError, TimeoutError, L2BridgeError):
            self.refusals.unreachable(cand.node_id, self._clock())
            self._note(cand, "unreachable")
            raise
        self.refusals.reachable(cand.node_id)
        return link

    async def connect(self) -> tunnel.Link:
        """The best exit that passes; NoExitAvailable when none does."""
        ranking = await self.ranking()
        tried: list[str] = []
        for cand in ranking.order:
            wait = self._redial_at.get(cand.node_id, 0.0) - self._clock()
            if wait > 0:
                tried.append(f"{cand.short}: silent at its last re-check (dial in {wait:.0f} s)")
                continue
            try:
                link = await self.dial(cand)
            except (PeerError, OSError, TimeoutError, L2BridgeError) as exc:
                tried.append(f"{cand.short}: {type(exc).__name__}")
                continue
            if self.current is not None and self.current.node_id != cand.node_id:
                self.failovers += 1
            self.current, self._link = cand, link
            self._note(cand, "connected")
            log.info("connected to exit %s at %s", cand.short, cand.endpoint)
            return link
        left_out = "; ".join(f"{e.node_id.hex()[:16]}: {e.reason}" for e in ranking.excluded)
        raise NoExitAvailable(
            "no usable exit (tried: " + (", ".join(tried) or "none") + f"; excluded: {left_out})"
        )

    __call__ = connect

    # --- watching the exit in use ---------------------------------------------------------------

    async def probe(self, cand: Candidate) -> None:
        """Fresh evidence from ``cand`` without opening a tunnel. Raises PeerError (refused),
        OSError / TimeoutError / L2BridgeError (did not answer)."""
        hs, checker = self._handshake(cand)
        self.probe_reasons = ()
        credential = self.settings.credentials.for_exit(cand.node_id)
        if credential is None:
            raise OSError("no credential for this exit")
        token = mint_token(credential, self._clock(), window_s=self.settings.token_window)
        async with asyncio.timeout(self._probe_timeout):
            ws = await open_transport(cand.endpoint, token, max_size=tunnel.MAX_EXIT_MESSAGE_SIZE)
            try:
                await ws.send(hs.hello())
                reply = await ws.recv()
                if isinstance(reply, str):
                    raise OSError("exit answered with text")
                try:
                    session, _finish = hs.receive(reply, self._clock(), token=token)
                except PeerError:
                    self.probe_reasons = checker.reasons
                    raise
                session.close()  # never finished: the exit admits nothing from a probe
            finally:
                await ws.close()

    async def check_current(self) -> bool:
        """Re-check the exit in use (registry record + fresh evidence). False = dropped.

        Fails closed: no answer to the probe within ``recheck_window`` is a refusal, and
        the exit is then not dialled again before its backoff has passed.
        """
        cand, link = self.current, self._link
        if cand is None or link is None:
            return True
        reason = await self._registry_reason(cand)
        if reason is None:
            reason = await self._probe_within_window(cand)
        if reason is None:
            self._silences.pop(cand.node_id, None)
            return True
        self._refuse(cand, reason)
        await link.close()
        return False

    async def _probe_within_window(self, cand: Candidate) -> str | None:
        """Why ``cand`` fails its re-check, or None once fresh evidence passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.recheck_window
        tries = 0
        while True:
            tries += 1
            try:
                await self.probe(cand)
            except PeerError as exc:
                why = "; ".join(self.probe_reasons) or exc.detail or type(exc).__name__
                return f"fresh evidence failed ({why})"
            except (OSError, TimeoutError, L2BridgeError) as exc:
                log.info("probe of exit %s got no answer: %s", cand.short, type(exc).__name__)
                left = deadline - loop.time()
                if left > 0:
                    await asyncio.sleep(min(self._recheck_retry, left))
                    continue
                silences = self._silences.get(cand.node_id, 0) + 1
                self._silences[cand.node_id] = silences
                backoff = min(self._silent_backoff * 2 ** (silences - 1), SILENT_BACKOFF_MAX_S)
                self._redial_at[cand.node_id] = self._clock() + backoff
                return (
                    f"no answer to the re-check within {self.recheck_window:g} s "
                    f"({tries} tries, last: {type(exc).__name__}); next dial in {backoff:g} s"
                )
            return None

    async def _registry_reason(self, cand: Candidate) -> str | None:
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                record = await asyncio.to_thread(self.registry.node, cand.node_id)
        except Exception:
            self.registry_state = "unreachable (cached)"
            return None  # keep the exit: its evidence is still checked
        self.registry_state = "ok"
        if bytes(record.node_id) != cand.node_id:
            return "registry record changed nodeId"
        if not record.healthy or record.status != "active":
            return f"no longer healthy on chain ({record.status})"
        if bytes(record.ak.x) != cand.ak_x or bytes(record.ak.y) != cand.ak_y:
            return "registry AK changed"
        if record.reputation < self.selection.min_reputation:
            return f"reputation fell to {record.reputation}"
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Re-check the exit in use every ``check_interval`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_interval)
                return
            try:
                await self.check_current()
            except Exception:
                log.exception("exit check failed")
