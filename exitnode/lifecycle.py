"""The exit's attestation lifecycle on its TPM: enrol, measure, quote, recover.

``ExitLifecycle.start()``:

1. loads the AK from the node's state directory (``ak.json``, TPM-wrapped, useless
   outside this TPM), or enrols a new one (EK certificate chain against the maker CAs,
   credential activation) and persists it with its enrolment record (``enrolment.json``);
2. builds the manifest (installed ShadowMesh software, the measured configuration, the
   nodeId) and extends it into PCR 23 after resetting it (``attestation.quote.Attester``);
3. serves fresh evidence: :meth:`evidence` is the handshake's ``evidence_provider`` and
   :meth:`quote_for` answers the registry's block-hash challenges (``exitnode.upkeep``).

Failure modes and their documented fallback:

* TPM unreachable at start: ``start()`` raises ``AttestationUnavailable`` naming the TCTI
  and the cause. The caller refuses to start when ``security.attestation_required`` is
  true; otherwise it serves without evidence (clients that ask for attestation refuse it,
  and it never reaches the registry, which only takes quotes).
* TPM lost while running: the handshake hook answers with *empty* evidence, so clients
  that require attestation refuse this exit and fail over, while the lifecycle re-opens the
  TPM every ``retry_s`` and re-measures it once it answers (a restarted TPM has PCR 23
  reset). ``state`` says ``tpm-unavailable`` meanwhile; the on-chain attestation stops, so
  the registry marks the node stale after its window.
* Too many handshake quotes: the connection is closed before the exit's hello (the client
  sees a busy exit and tries the next one), never a queue behind the TPM.
* PCR 23 changed under us (someone extended it): nothing is re-measured to hide it;
  ``state`` says ``measurement-changed`` and the quotes carry the changed value, which
  clients and the registry then refuse.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509

from attestation import constants as ac
from attestation import enrol, measure
from attestation import evidence as ev
from attestation.errors import AttestationError, RateLimited, TpmError
from attestation.provider import EvidenceProvider
from attestation.quote import Attester
from exitnode.errors import AttestationUnavailable
from l2bridge.node.metrics import Metrics
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)

AK_FILE = "ak.json"
ENROLMENT_FILE = "enrolment.json"
TPM_RETRY_S = 5.0

STATE_STARTING = "starting"
STATE_OK = "ok"
STATE_TPM_UNAVAILABLE = "tpm-unavailable"
STATE_MEASUREMENT_CHANGED = "measurement-changed"


class ExitLifecycle:
    """One exit's TPM side. Thread-safe: quotes are serialised by the provider."""

    def __init__(
        self,
        tcti: str,
        node_id: bytes,
        state_dir: Path,
        *,
        measured_config: Path | None = None,
        software: Sequence[Path] | None = None,
        ek_anchors: Sequence[Path] = (),
        ek_intermediates: Sequence[Path] = (),
        ak_file: Path | None = None,
        pcrs: Sequence[int] = ac.DEFAULT_QUOTE_PCRS,
        clock: Callable[[], float] = time.time,
        retry_s: float = TPM_RETRY_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.tcti = tcti
        self.node_id = node_id
        self.state_dir = state_dir
        self.ak_file = ak_file or state_dir / AK_FILE
        self._config = measured_config
        self._software = tuple(software) if software is not None else None
        self._anchors = tuple(ek_anchors)
        self._intermediates = tuple(ek_intermediates)
        self._pcrs = tuple(pcrs)
        self._clock = clock
        self._retry_s = retry_s
        self._lock = threading.RLock()  # one TPM context: every use is serialised
        self._attester: Attester | None = None
        self._provider: EvidenceProvider | None = None
        self._ak: enrol.AkKey | None = None
        self.manifest: tuple[ev.ManifestEntry, ...] = ()
        self.measured_value: bytes | None = None
        self.state = STATE_STARTING
        self.detail = ""
        self.last_evidence_at: float | None = None
        self.empty_answers = 0
        self._next_retry = 0.0
        if metrics is not None:
            metrics.set_gauge("tpm_ok", lambda: 1.0 if self.state == STATE_OK else 0.0)
            metrics.set_gauge("evidence_age_s", self._evidence_age)

    def _evidence_age(self) -> float | None:
        at = self.last_evidence_at
        return None if at is None else self._clock() - at

    # --- start --------------------------------------------------------------------------

    def _load_or_enrol(self) -> enrol.AkKey:
        if self.ak_file.exists():
            return enrol.AkKey.load(self.ak_file)
        if not self._anchors:
            raise AttestationUnavailable(
                f"no AK at {self.ak_file} and no EK CA to enrol against: run "
                "'shadowmesh attest enroll' or give the TPM maker's CA certificate"
            )
        anchors = enrol.load_certificates(list(self._anchors))
        intermediates: list[x509.Certificate] = enrol.load_certificates(list(self._intermediates))
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        ak, record = enrol.enrol(self.tcti, anchors, intermediates, now)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ak.save(self.ak_file)
        (self.state_dir / ENROLMENT_FILE).write_text(record.dump())
        log.info("enrolled a new AK (EK cert sha256 %s)", record.ek_certificate_sha256.hex())
        return ak

    def _open(self) -> None:
        """Open the TPM, load the AK, measure. Raises AttestationError."""
        assert self._ak is not None
        attester = Attester(self.tcti, self._ak, self.manifest, self._pcrs)
        try:
            self.measured_value = attester.measure()
        except AttestationError:
            attester.close()
            raise
        old, self._attester = self._attester, attester
        if old is not None:
            old.close()
        self._provider = EvidenceProvider(attester, self.node_id, clock=self._clock)
        self.state, self.detail = STATE_OK, ""

    def start(self) -> None:
        """Enrol (or reuse the AK), measure, get ready to quote. Raises AttestationUnavailable."""
        try:
            with self._lock:
                self._ak = self._load_or_enrol()
                software = self._software
                if software is None:
                    software = measure.installed_software()
                self.manifest = measure.build_manifest(software, self._config, self.node_id)
                self._open()
        except AttestationError as exc:
            self.state, self.detail = STATE_TPM_UNAVAILABLE, str(exc)
            raise AttestationUnavailable(f"TPM at {self.tcti}: {exc}") from None
        log.info("measured into PCR %d: %s", ac.MEASUREMENT_PCR, self.measured_value_hex)

    @property
    def measured_value_hex(self) -> str:
        return self.measured_value.hex() if self.measured_value else "-"

    @property
    def ak_public(self) -> bytes:
        """The AK's TPMT_PUBLIC (what a verifier enrols)."""
        if self._ak is None:
            raise AttestationUnavailable("not started")
        return self._ak.tpmt_public

    def close(self) -> None:
        with self._lock:
            if self._attester is not None:
                self._attester.close()
                self._attester = None
                self._provider = None

    # --- quoting ------------------------------------------------------------------------

    def _lost(self, exc: Exception) -> None:
        if self.state != STATE_TPM_UNAVAILABLE:
            log.error("TPM lost (%s): serving empty evidence until it is back", exc)
        self.state, self.detail = STATE_TPM_UNAVAILABLE, str(exc)
        self._next_retry = time.monotonic() + self._retry_s

    def recover(self) -> bool:
        """Re-open and re-measure a lost TPM (at most every ``retry_s``). True when usable."""
        with self._lock:
            if self.state != STATE_TPM_UNAVAILABLE:
                return True
            if self._ak is None or time.monotonic() < self._next_retry:
                return False
            try:
                self._open()
            except AttestationError as exc:
                self._lost(exc)
                return False
        log.info("TPM back; re-measured PCR %d", ac.MEASUREMENT_PCR)
        return True

    def check_measurement(self) -> bool:
        """Whether PCR 23 still holds exactly our measurement (False also when unknown)."""
        with self._lock:
            attester = self._attester
            if attester is None or self.state == STATE_TPM_UNAVAILABLE:
                return False
            try:
                value = dict(attester.read_pcrs())[ac.MEASUREMENT_PCR]
            except AttestationError as exc:
                self._lost(exc)
                return False
        if value != self.measured_value:
            if self.state != STATE_MEASUREMENT_CHANGED:
                log.error("PCR %d no longer holds our measurement", ac.MEASUREMENT_PCR)
            self.state, self.detail = STATE_MEASUREMENT_CHANGED, "PCR 23 was extended"
            return False
        return True

    def attest(self, nonce: bytes) -> bytes:
        """Evidence for ``nonce`` (own schedule, no rate limit). Raises AttestationError."""
        with self._lock:
            self.recover()
            provider = self._provider
            if provider is None or self.state == STATE_TPM_UNAVAILABLE:
                raise TpmError(f"TPM unavailable: {self.detail}")
            try:
                data = provider.attest(nonce)
            except TpmError as exc:
                self._lost(exc)
                raise
        self.last_evidence_at = self._clock()
        return data

    def quote_for(self, block_hash: bytes) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, signature) answering a registry challenge nonce (a block hash)."""
        e = ev.decode(self.attest(block_hash))
        return e.attest, e.signature

    def registry_quote(self, qualifying: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, signature) over ``pcrs`` carrying exactly ``qualifying`` as its
        extraData: the registry's own quote domain, which exitnode.upkeep takes from the
        chain (never the handshake's). Raises AttestationError."""
        with self._lock:
            self.recover()
            attester = self._attester
            if attester is None or self.state == STATE_TPM_UNAVAILABLE:
                raise TpmError(f"TPM unavailable: {self.detail}")
            try:
                # The attester's open TPM context and loaded AK: swtpm serves one connection.
                return attester._tpm.quote(attester._handle, list(pcrs), qualifying)
            except TpmError as exc:
                self._lost(exc)
                raise

    def evidence(self, nonce: bytes, node_id: bytes) -> bytes:
        """The handshake's evidence_provider; see the module docstring for failures."""
        with self._lock:
            self.recover()
            provider = self._provider
            if provider is None or self.state == STATE_TPM_UNAVAILABLE:
                self.empty_answers += 1
                return b""
            try:
                data = provider(nonce, node_id)
            except RateLimited:
                raise TransportClosed("attestation busy") from None
            except TpmError as exc:
                self._lost(exc)
                self.empty_answers += 1
                return b""
        self.last_evidence_at = self._clock()
        return data
