"""Exceptions of the attestation package.

One root, two kinds below it: errors about our own side (the TPM, files, configuration)
and errors caused by data a peer sent us. The latter never carry internal detail back to
the peer; the handshake only learns that evidence was refused.

    AttestationError
    ├── TpmError            the TPM (or its TCTI) failed a command; local
    ├── EnrolmentError      EK certificate chain, EK/AK checks, credential activation
    │   └── CeremonyRefused a step of the enroller's ceremony failed; names the step
    ├── PolicyError         a golden policy file is malformed; local
    ├── MeasurementError    the kernel's logs cannot be read or do not replay; local
    │   └── EventLogError   a TCG event log is malformed
    ├── RateLimited         the provider refuses a quote because the TPM is busy
    ├── EvidenceError       evidence bytes (or a TPM structure in them) are malformed; remote
    └── AttestationRefused  a checker refused evidence; carries the verdict's reasons
"""

from __future__ import annotations


class AttestationError(Exception):
    """Root of every error raised by the attestation package."""


class TpmError(AttestationError):
    """A TPM command failed or the TPM could not be reached."""


class EnrolmentError(AttestationError):
    """Enrolment failed: untrusted EK certificate, unsuitable AK, failed activation."""


class PolicyError(AttestationError):
    """A golden policy is malformed."""


class MeasurementError(AttestationError):
    """The kernel's measurement logs cannot be read, hashed or replayed (local)."""


class EventLogError(MeasurementError):
    """A TCG measured-boot event log is malformed."""


class RateLimited(AttestationError):
    """Too many quotes asked for; the TPM is slow and serial."""


class EvidenceError(AttestationError):
    """Evidence (or a TPM structure inside it) is malformed. Raised on peer input."""


class AttestationRefused(AttestationError):
    """Evidence failed verification. ``reasons`` names every failed check."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("attestation refused: " + "; ".join(reasons))
        self.reasons = reasons


class CeremonyRefused(EnrolmentError):
    """A step of the enrolment ceremony failed; ``step`` names it (``ceremony.STEP_*``)."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"enrolment refused at step {step}: {detail}")
        self.step = step
        self.detail = detail
