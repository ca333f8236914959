"""The exit's side of a quote: measure itself into the TPM, then produce evidence.

``Attester`` keeps one TPM context with the AK loaded (loading costs a TPM round trip per
quote otherwise). It is not thread-safe; ``provider.EvidenceProvider`` serialises it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attestation import constants as c
from attestation import evidence as ev
from attestation import tpms
from attestation.enrol import AkKey
from attestation.errors import MeasurementError, TpmError
from attestation.measure import Event, replay_event_log
from attestation.tpm import Tpm

QUOTE_ATTEMPTS = 3  # a PCR extended between Quote and PCR_Read makes us try again


class Attester:
    def __init__(
        self,
        tcti: str,
        ak: AkKey,
        manifest: tuple[ev.ManifestEntry, ...],
        pcrs: Sequence[int] = c.DEFAULT_QUOTE_PCRS,
    ) -> None:
        if c.MEASUREMENT_PCR not in pcrs or list(pcrs) != sorted(set(pcrs)):
            raise MeasurementError("quoted PCRs must be ascending and include PCR 23")
        self.tcti = tcti
        self.manifest = manifest
        self.pcrs = tuple(pcrs)
        self._ak = ak
        self._tpm = Tpm(tcti)
        self._handle: Any = None
        try:
            self._handle = self._tpm.load_ak(ak.private, ak.public)
        except TpmError:
            self._tpm.close()
            raise

    def close(self) -> None:
        self._tpm.close()

    def __enter__(self) -> Attester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure(self) -> bytes:
        """Reset the measurement PCR and extend every manifest entry; its new value."""
        self._tpm.reset_pcr(c.MEASUREMENT_PCR)
        for entry in self.manifest:
            self._tpm.extend_pcr(c.MEASUREMENT_PCR, ev.entry_event(entry))
        (value,) = self._tpm.read_pcrs([c.MEASUREMENT_PCR])
        if value != ev.replay_manifest(self.manifest):
            raise MeasurementError("measurement PCR does not replay: someone else extended it")
        return value

    def event_log_mismatches(self, events: tuple[Event, ...]) -> list[int]:
        """PCRs whose TPM value differs from the replayed measured-boot log."""
        replayed = replay_event_log(events)
        indices = sorted(replayed)
        actual = self._tpm.read_pcrs(indices)
        return [i for i, value in zip(indices, actual, strict=True) if value != replayed[i]]

    def read_pcrs(self) -> tuple[tuple[int, bytes], ...]:
        return tuple(zip(self.pcrs, self._tpm.read_pcrs(self.pcrs), strict=True))

    def evidence(self, nonce: bytes, node_id: bytes, now: float) -> bytes:
        """Fresh evidence answering ``nonce`` for ``node_id``, stamped ``now`` (Unix s)."""
        qualifying = ev.qualifying_data(nonce, node_id)
        for _ in range(QUOTE_ATTEMPTS):
            attest, signature = self._tpm.quote(self._handle, self.pcrs, qualifying)
            values = self._tpm.read_pcrs(self.pcrs)
            if tpms.parse_attest(attest).pcr_digest == tpms.pcr_digest(values):
                return ev.encode(
                    ev.Evidence(
                        nonce=nonce,
                        node_id=node_id,
                        produced_at_ms=int(now * 1000),
                        attest=attest,
                        signature=signature,
                        ak_public=self._ak.tpmt_public,
                        pcrs=tuple(zip(self.pcrs, values, strict=True)),
                        manifest=self.manifest,
                    )
                )
        raise TpmError("PCRs kept changing while quoting")
