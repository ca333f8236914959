"""The exit's attestation lifecycle on its TPM: enrol, quote, recover.

``ExitLifecycle.start()``:

1. loads the AK from the node's state directory (``ak.json``, TPM-wrapped, useless
   outside this TPM), or enrols a new one (EK certificate chain against the maker CAs,
   credential activation) and persists it with its enrolment record (``enrolment.json``);
2. opens the TPM with the AK loaded; the exit measures nothing about itself: firmware,
   boot loader and the kernel's IMA did, into PCRs 0-10, which software cannot reset
   (``attestation.quote.Attester`` reads their logs and quotes);
3. serves fresh evidence: :meth:`evidence` is the handshake's ``evidence_provider`` and
   :meth:`registry_quote` answers the registry's challenges (``exitnode.upkeep``).

Failure modes and their documented fallback:

* TPM unreachable at start: ``start()`` raises ``AttestationUnavailable`` naming the TCTI
  and the cause. The caller refuses to start when ``security.attestation_required`` is
  true; otherwise it serves without evidence (clients that ask for attestation refuse it,
  and it never reaches the registry, which only takes quotes).
* TPM lost while running (a command fails, or does not answer within ``timeout_s``: a
  hung TPM blocks its caller for ever, so every command runs on the context's own
  ``exitnode.tpmthread.TpmThread`` under a deadline): the handshake hook answers with
  *empty* evidence, so clients that require attestation refuse this exit and fail over,
  while the lifecycle re-opens the TPM every ``retry_s`` (in the background, never inside
  a handshake) and quotes again once it answers.
  ``state`` says ``tpm-unavailable`` meanwhile; the on-chain attestation stops, so the
  registry marks the node stale after its window. A command stuck in a hung TPM keeps its
  thread until the TPM answers or its connection breaks; no new context is opened before
  then, so a hung TPM costs at most two threads. Handshakes that ask for no evidence never
  touch the TPM or this lifecycle.
* Too many handshake quotes (the rate limit, or another quote holding the TPM for longer
  than ``timeout_s``): the connection is closed before the exit's hello (the client sees a
  busy exit and tries the next one), never a queue behind the TPM.
* A file changed or a strange program ran: the kernel measured it into PCR 10 and the
  list; nothing here can hide it, and clients refuse the evidence naming the file. A list
  that no longer replays to PCR 10 (PCR 10 extended outside the kernel) makes ``state``
  say ``measurement-changed``.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from attestation import constants as ac
from attestation import enrol, tpms
from attestation.errors import (
    AttestationError,
    EnrolmentError,
    EvidenceError,
    RateLimited,
    TpmError,
)
from attestation.evidence import Since
from attestation.provider import EvidenceProvider
from attestation.quote import Attester, read_bounded
from exitnode.errors import AttestationUnavailable, StateFileError
from exitnode.statefile import read_state, write_atomic
from exitnode.tpmthread import TpmThread
from l2bridge.node.metrics import Metrics
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)
T = TypeVar("T")

AK_FILE = "ak.json"
ENROLMENT_FILE = "enrolment.json"
TPM_RETRY_S = 5.0
# Deadline of one handshake quote or PCR read (swtpm answers in milliseconds, chips in
# tens to hundreds); opening, enrolling and measuring get the longer one.
TPM_TIMEOUT_S = 3.0
TPM_OPEN_TIMEOUT_S = 30.0

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
        timeout_s: float = TPM_TIMEOUT_S,
        open_timeout_s: float = TPM_OPEN_TIMEOUT_S,
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
        self._timeout = timeout_s
        self._open_timeout = max(open_timeout_s, timeout_s)
        self._lock = threading.RLock()  # one TPM context: every use is serialised
        self._thread: TpmThread | None = None  # runs every command of _attester
        self._stuck: list[TpmThread] = []  # retired with a command still in the TPM
        self._recovering = False
        self.timeouts = 0  # TPM commands that overran their deadline
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

    def _load_ak(self) -> enrol.AkKey:
        """The stored AK, checked against the stored enrolment record when there is one.

        Raises StateFileError for an empty, damaged or mismatched file (never enrols
        over it: that would change the node's AK behind the registry's back).
        """
        ak = read_state(self.ak_file, _parse_ak, (ValueError, KeyError, TypeError, EvidenceError))
        record_path = self.state_dir / ENROLMENT_FILE
        if record_path.exists():
            record = read_state(record_path, enrol.Enrolment.parse, (EnrolmentError,))
            if record.ak_public != ak.tpmt_public:
                raise StateFileError(
                    f"{record_path} is the record of another AK than {self.ak_file}"
                )
        return ak

    def _load_or_enrol(self) -> enrol.AkKey:
        if self.ak_file.exists():
            return self._load_ak()
        if not self._anchors:
            raise AttestationUnavailable(
                f"no AK at {self.ak_file} and no EK CA to enrol against: run "
                "'shadowmesh attest enroll' or give the TPM maker's CA certificate"
            )
        anchors = enrol.load_certificates(list(self._anchors))
        intermediates: list[x509.Certificate] = enrol.load_certificates(list(self._intermediates))
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        thread = TpmThread("tpm-enrol")
        try:
            ak, record = thread.call(
                enrol.enrol, self.tcti, anchors, intermediates, now, timeout=self._open_timeout
            )
        finally:
            thread.retire()
        # The record first, the AK last: an AK file on disk means both are complete.
        write_atomic(self.state_dir / ENROLMENT_FILE, record.dump())
        write_atomic(
            self.ak_file, json.dumps({"private": ak.private.hex(), "public": ak.public.hex()})
        )
        log.info("enrolled a new AK (EK cert sha256 %s)", record.ek_certificate_sha256.hex())
        return ak

    def _open(self) -> None:
        """Open the TPM on a new thread, load the AK, and swap it in.

        Raises AttestationError (TpmError when the TPM did not answer in time).
        """
        assert self._ak is not None
        ak, ima_list, event_log = self._ak, self._ima_list, self._event_log
        thread = TpmThread("tpm")
        opened: list[Attester] = []

        def open_tpm() -> None:
            opened.append(Attester(self.tcti, ak, ima_list=ima_list, event_log=event_log))

        try:
            thread.call(open_tpm, timeout=self._open_timeout)
        except AttestationError:
            if thread.wedged:
                self.timeouts += 1

            def close_late() -> None:
                for attester in opened:  # what a late answer opened
                    attester.close()

            thread.retire(close_late)
            if thread.alive:
                self._stuck.append(thread)
            raise
        with self._lock:
            self._retire_current()
            self._thread, self._attester = thread, opened[0]
            source = _OnThread(thread, opened[0], self._timeout)
            self._provider = EvidenceProvider(source, self.node_id, clock=self._clock)
            self.state, self.detail = STATE_OK, ""

    def _retire_current(self) -> None:
        """Stop using the current context; it is closed once its thread is free."""
        thread, attester = self._thread, self._attester
        self._thread, self._attester, self._provider = None, None, None
        if thread is not None:
            thread.retire(attester.close if attester is not None else None)
            if thread.wedged and thread.alive:
                self._stuck.append(thread)

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
                thread, attester = self._thread, self._attester
                assert thread is not None and attester is not None
                entries = thread.call(attester.check_list, timeout=self._timeout)
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
        """Close the TPM context (never waits for a TPM that does not answer)."""
        with self._lock:
            self._retire_current()

    def health(self) -> dict[str, object]:
        """The TPM's state for a status page: plain JSON values."""
        self._stuck = [t for t in self._stuck if t.alive]
        return {
            "ok": self.state == STATE_OK,
            "state": self.state,
            "detail": self.detail,
            "evidence_age_s": self._evidence_age(),
            "timeouts": self.timeouts,
            "stuck_commands": len(self._stuck),
            "empty_answers": self.empty_answers,
        }

    # --- quoting ------------------------------------------------------------------------

    def _lost(self, exc: Exception) -> None:
        if self._thread is not None and self._thread.wedged:
            self.timeouts += 1
        if self.state != STATE_TPM_UNAVAILABLE:
            log.error("TPM lost (%s): serving empty evidence until it is back", exc)
        self.state, self.detail = STATE_TPM_UNAVAILABLE, str(exc)
        self._next_retry = time.monotonic() + self._retry_s
        self._retire_current()

    def _may_retry(self) -> bool:
        self._stuck = [t for t in self._stuck if t.alive]
        # A command still stuck in the TPM means it still does not answer.
        return (
            self._ak is not None
            and not self._stuck
            and not self._recovering
            and time.monotonic() >= self._next_retry
        )

    def recover(self) -> bool:
        """Re-open a lost TPM (at most every ``retry_s``). True when usable.

        Blocks for at most the open deadline; handshakes are answered meanwhile.
        """
        with self._lock:
            if self.state != STATE_TPM_UNAVAILABLE:
                return True
            if not self._may_retry():
                return False
            self._recovering = True
        try:
            self._open()
        except AttestationError as exc:
            with self._lock:
                self._lost(exc)
            return False
        finally:
            self._recovering = False
        log.info("TPM back")
        return True

    def _recover_soon(self) -> None:
        """Start ``recover`` on a thread of its own when a retry is due (never waits)."""
        with self._lock:
            if not self._may_retry():
                return
        threading.Thread(target=self.recover, name="tpm-recover", daemon=True).start()

    def _acquire(self) -> bool:
        # Another quote holds the TPM for at most its deadline (plus the bookkeeping of
        # declaring the TPM lost): waiting twice that long is enough unless it is busy.
        return self._lock.acquire(timeout=2 * self._timeout)

    def check_measurement(self) -> bool:
        """Whether the TPM answers and the IMA list still replays to PCR 10.

        Nothing is re-measured: a list that no longer replays means someone extended PCR 10
        outside the kernel, and ``state`` says so (clients refuse such evidence anyway).
        """
        if not self._acquire():
            return False
        try:
            thread, attester = self._thread, self._attester
            if thread is None or attester is None or self.state == STATE_TPM_UNAVAILABLE:
                return False
            try:
                thread.call(attester.check_list, timeout=self._timeout)
            except TpmError as exc:
                self._lost(exc)
                return False
            except AttestationError as exc:
                if self.state != STATE_MEASUREMENT_CHANGED:
                    log.error("runtime measurements: %s", exc)
                self.state, self.detail = STATE_MEASUREMENT_CHANGED, str(exc)
                return False
        finally:
            self._lock.release()
        return True

    def _with_tpm(self, use: Callable[[TpmThread, Attester, EvidenceProvider], T]) -> T:
        """Run ``use`` on the open TPM context (re-opened first when it was lost and a retry
        is due); TpmError when the TPM is busy, unavailable or lost now (then the documented
        "TPM lost" path). The time of the answer is kept for the evidence-age gauge."""
        self.recover()
        if not self._acquire():
            raise TpmError("TPM busy")
        try:
            thread, attester, provider = self._thread, self._attester, self._provider
            if (
                thread is None
                or attester is None
                or provider is None
                or self.state == STATE_TPM_UNAVAILABLE
            ):
                raise TpmError(f"TPM unavailable: {self.detail}")
            try:
                result = use(thread, attester, provider)
            except TpmError as exc:
                self._lost(exc)
                raise
        finally:
            self._lock.release()
        self.last_evidence_at = self._clock()
        return result

    def attest(self, nonce: bytes) -> bytes:
        """Evidence for ``nonce`` (own schedule, no rate limit). Raises AttestationError."""
        return self._with_tpm(lambda _thread, _attester, provider: provider.attest(nonce))

    def registry_quote(self, qualifying: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, signature) over ``pcrs`` carrying exactly ``qualifying`` as its
        extraData: the registry's own quote domain, which exitnode.upkeep takes from the
        chain (never the handshake's). Raises AttestationError."""
        return self._with_tpm(
            lambda thread, attester, _provider: thread.call(
                attester.quote_raw, qualifying, tuple(pcrs), timeout=self._timeout
            )
        )

    def evidence(self, nonce: bytes, node_id: bytes, since: Since | None = None) -> bytes:
        """The handshake's evidence_provider; see the module docstring for failures.
        ``since``: the IMA entries the client has replayed already (evidence_since).

        Returns within about three times ``timeout_s`` whatever the TPM does: empty evidence
        when the TPM is lost (or is lost now), TransportClosed when it is busy.
        """
        if not self._acquire():
            raise TransportClosed("attestation busy")
        try:
            provider = self._provider
            if provider is None or self.state == STATE_TPM_UNAVAILABLE:
                self.empty_answers += 1
                self._recover_soon()
                return b""
            try:
                data = provider(nonce, node_id, since)
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
        finally:
            self._lock.release()
        self.last_evidence_at = self._clock()
        return data


class _OnThread:
    """An Attester's quotes run on its TPM thread under the deadline (a QuoteSource)."""

    def __init__(self, thread: TpmThread, attester: Attester, timeout: float) -> None:
        self._thread = thread
        self._attester = attester
        self._timeout = timeout

    def evidence(
        self, nonce: bytes, node_id: bytes, now: float, *, since: Since | None = None
    ) -> bytes:
        return self._thread.call(
            functools.partial(self._attester.evidence, since=since),
            nonce,
            node_id,
            now,
            timeout=self._timeout,
        )


def _parse_ak(text: str) -> enrol.AkKey:
    """ak.json (as ``AkKey.save`` writes it); ValueError/KeyError/TypeError when damaged."""
    doc = json.loads(text)
    ak = enrol.AkKey(bytes.fromhex(doc["private"]), bytes.fromhex(doc["public"]))
    tpms.parse_public(ak.tpmt_public)  # EvidenceError when it is not a TPMT_PUBLIC
    return ak
