"""The exit's attestation lifecycle on its TPM: enrol, quote, recover.

``ExitLifecycle.start()``:

1. loads the AK from the node's state directory (``ak.json``, TPM-wrapped, useless
   outside this TPM), or enrols a new one (EK certificate chain against the maker CAs,
   credential activation) and persists it with its enrolment record (``enrolment.json``);
2. opens the TPM with the AK loaded; the exit measures nothing about itself: firmware,
   boot loader and the kernel's IMA did, into PCRs 0-10, which software cannot reset
   (``attestation.quote.Attester`` reads their logs and quotes);
3. serves fresh evidence: :meth:`evidence` is the handshake's ``evidence_provider`` and
   :meth:`quote_for` answers the registry's block-hash challenges (``exitnode.upkeep``).

Failure modes and their documented fallback:

* TPM unreachable at start: ``start()`` raises ``AttestationUnavailable`` naming the TCTI
  and the cause. The caller refuses to start when ``security.attestation_required`` is
  true; otherwise it serves without evidence (clients that ask for attestation refuse it,
  and it never reaches the registry, which only takes quotes).
* TPM lost while running: the handshake hook answers with *empty* evidence, so clients
  that require attestation refuse this exit and fail over, while the lifecycle re-opens the
  TPM every ``retry_s`` and quotes again once it answers. ``state`` says
  ``tpm-unavailable`` meanwhile; the on-chain attestation stops, so the registry marks the
  node stale after its window.
* Too many handshake quotes: the connection is closed before the exit's hello (the client
  sees a busy exit and tries the next one), never a queue behind the TPM.
* A file changed or a strange program ran: the kernel measured it into PCR 10 and the
  list; nothing here can hide it, and clients refuse the evidence naming the file.
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
from attestation import enrol
from attestation.errors import AttestationError, RateLimited, TpmError
from attestation.provider import EvidenceProvider
from attestation.quote import Attester, read_bounded
from contracts.constants import QUOTED_PCRS as REGISTRY_PCRS
from contracts.quote import qualifying_data as registry_qualifying
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
        ima_list: Path | None = None,
        event_log: Path | None = None,
        ek_anchors: Sequence[Path] = (),
        ek_intermediates: Sequence[Path] = (),
        ak_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        retry_s: float = TPM_RETRY_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.tcti = tcti
        self.node_id = node_id
        self.state_dir = state_dir
        self.ak_file = ak_file or state_dir / AK_FILE
        self._ima_list = ima_list or Path(ac.IMA_LIST_PATH)
        self._event_log = event_log or Path(ac.EVENT_LOG_PATH)
        self._anchors = tuple(ek_anchors)
        self._intermediates = tuple(ek_intermediates)
        self._clock = clock
        self._retry_s = retry_s
        self._lock = threading.RLock()  # one TPM context: every use is serialised
        self._attester: Attester | None = None
        self._provider: EvidenceProvider | None = None
        self._ak: enrol.AkKey | None = None
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
        """Open the TPM, load the AK. Raises AttestationError."""
        assert self._ak is not None
        attester = Attester(self.tcti, self._ak, ima_list=self._ima_list, event_log=self._event_log)
        old, self._attester = self._attester, attester
        if old is not None:
            old.close()
        self._provider = EvidenceProvider(attester, self.node_id, clock=self._clock)
        self.state, self.detail = STATE_OK, ""

    def start(self) -> None:
        """Enrol (or reuse the AK), check the kernel's logs replay to the TPM, get ready to
        quote. Raises AttestationUnavailable (a machine without IMA or measured boot cannot
        produce evidence that passes, and says so here rather than at every handshake)."""
        try:
            with self._lock:
                self._ak = self._load_or_enrol()
                self._open()
        except AttestationError as exc:
            self.state, self.detail = STATE_TPM_UNAVAILABLE, str(exc)
            raise AttestationUnavailable(f"TPM at {self.tcti}: {exc}") from None
        try:
            with self._lock:
                assert self._attester is not None
                entries = self._attester.check_list()
                read_bounded(self._event_log, ac.MAX_EVENT_LOG_SIZE)
        except AttestationError as exc:
            self.close()
            self.state, self.detail = STATE_TPM_UNAVAILABLE, str(exc)
            raise AttestationUnavailable(
                f"no runtime measurements: {exc} (boot with ima_policy=tcb "
                "ima_template=ima-ng ima_hash=sha256, or set tpm.ima_list / tpm.event_log)"
            ) from None
        log.info("quoting PCRs 0-10; IMA list %s (%d entries), event log %s",
                 self._ima_list, entries, self._event_log)  # fmt: skip

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
        """Re-open a lost TPM (at most every ``retry_s``). True when usable."""
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
        log.info("TPM back")
        return True

    def check_measurement(self) -> bool:
        """Whether the TPM answers and the IMA list still replays to PCR 10.

        Nothing is re-measured: a list that no longer replays means someone extended PCR 10
        outside the kernel, and ``state`` says so (clients refuse such evidence anyway).
        """
        with self._lock:
            attester = self._attester
            if attester is None or self.state == STATE_TPM_UNAVAILABLE:
                return False
            try:
                attester.check_list()
            except TpmError as exc:
                self._lost(exc)
                return False
            except AttestationError as exc:
                if self.state != STATE_MEASUREMENT_CHANGED:
                    log.error("runtime measurements: %s", exc)
                self.state, self.detail = STATE_MEASUREMENT_CHANGED, str(exc)
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

    def quote_raw(self, qualifying: bytes, pcrs: tuple[int, ...]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, signature) over ``pcrs`` with any extraData. Raises AttestationError."""
        with self._lock:
            self.recover()
            attester = self._attester
            if attester is None or self.state == STATE_TPM_UNAVAILABLE:
                raise TpmError(f"TPM unavailable: {self.detail}")
            try:
                quote = attester.quote_raw(qualifying, pcrs)
            except TpmError as exc:
                self._lost(exc)
                raise
        self.last_evidence_at = self._clock()
        return quote

    def quote_for(self, block_hash: bytes) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, signature) answering a registry challenge nonce (a block hash), in
        the registry's own qualifying-data domain and PCR selection (``contracts``), never
        the handshake's: a registry quote cannot pass as handshake evidence."""
        return self.quote_raw(registry_qualifying(block_hash, self.node_id), REGISTRY_PCRS)

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
            except AttestationError as exc:  # the kernel's logs are missing or do not replay
                log.error("no evidence: %s", exc)
                self.detail = str(exc)
                self.empty_answers += 1
                return b""
        self.last_evidence_at = self._clock()
        return data
