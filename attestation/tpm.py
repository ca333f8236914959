"""The TPM, through tpm2-pytss ESAPI: the narrow set of commands attestation needs.

Only this module (and enrol.py / quote.py through it) talks to a TPM. A ``Tpm`` is opened
from a TCTI string (``device:/dev/tpmrm0``, ``swtpm:host=...,port=...``) and flushes every
transient object it created when closed: swtpm has no resource manager, so a leaked
handle would fill its few object slots. Every TSS error becomes ``TpmError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2_SU, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

from attestation import constants as c
from attestation.errors import TpmError

# A restricted ECDSA-SHA256 P-256 signing key that never leaves the TPM.
_AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
_PARENT_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
_PCR_HANDLES = [getattr(ESYS_TR, f"PCR{i}") for i in range(c.PCR_COUNT)]
_READ_BATCH = 8  # TPM2_PCR_Read returns at most 8 digests


@contextmanager
def _tss(what: str) -> Iterator[None]:
    try:
        yield
    except TSS2_Exception as exc:
        raise TpmError(f"{what} failed: {exc}") from None


class Tpm:
    """One open ESAPI context. Not thread-safe: callers serialise (the TPM is serial)."""

    def __init__(self, tcti: str) -> None:
        # The TSS logs expected misses (an absent NV index) as errors on stderr.
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        self._transient: list[Any] = []
        with _tss(f"opening TPM at {tcti}"):
            self._ctx = ESAPI(tcti)

    def close(self) -> None:
        for handle in reversed(self._transient):
            with contextlib.suppress(TSS2_Exception):  # best effort: the context goes next
                self._ctx.flush_context(handle)
        self._transient.clear()
        self._ctx.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, handle: Any) -> None:
        with _tss("FlushContext"):
            self._ctx.flush_context(handle)
        self._transient.remove(handle)

    def endorsement_key(self) -> tuple[Any, bytes, bytes | None]:
        """(handle, TPM2B_PUBLIC bytes, EK certificate DER or None) of the RSA-2048 EK.

        The EK is recreated from the TCG default template (or the template the maker
        stored in NV), so its public key must equal the one in the certificate.
        """
        with _tss("reading the EK"):
            cert, template = create_ek_template("EK-RSA2048", NVReadEK(self._ctx))
            handle, public, *_ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        self._transient.append(handle)
        return handle, bytes(public.marshal()), cert

    def _ak_parent(self) -> Any:
        """An ECC P-256 storage primary in the endorsement hierarchy, the AK's parent.

        The endorsement hierarchy matters: a quote by a key under the owner hierarchy has
        its reset/restart counters obfuscated, and the verifier needs them in clear.
        """
        template = TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_PARENT_ATTRIBUTES)
        with _tss("creating the AK parent"):
            handle, *_ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        self._transient.append(handle)
        return handle

    def create_ak(self) -> tuple[bytes, bytes]:
        """Create an AK: (TPM2B_PRIVATE, TPM2B_PUBLIC) bytes to keep."""
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRIBUTES)
        parent = self._ak_parent()
        try:
            with _tss("creating the AK"):
                private, public, *_ = self._ctx.create(parent, None, template)
        finally:
            self.flush(parent)
        return bytes(private.marshal()), bytes(public.marshal())

    def load_ak(self, private: bytes, public: bytes) -> Any:
        """Load an AK made by ``create_ak``; its parent is flushed again at once (swtpm has
        only three object slots)."""
        try:
            priv, _ = TPM2B_PRIVATE.unmarshal(private)
            pub, _ = TPM2B_PUBLIC.unmarshal(public)
        except Exception as exc:  # the TSS raises assorted errors on bad blobs
            raise TpmError(f"AK key file is damaged: {exc}") from None
        parent = self._ak_parent()
        try:
            with _tss("loading the AK"):
                handle = self._ctx.load(parent, priv, pub)
        finally:
            self.flush(parent)
        self._transient.append(handle)
        return handle

    def activate_credential(self, ak: Any, ek: Any, blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential: the credential, if it was made for this AK and EK."""
        try:
            id_object, _ = TPM2B_ID_OBJECT.unmarshal(blob)
            encrypted, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
        except Exception as exc:
            raise TpmError(f"credential challenge is malformed: {exc}") from None
        with _tss("ActivateCredential"):
            # The EK's policy is PolicySecret(TPM_RH_ENDORSEMENT).
            session = self._ctx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            try:
                self._ctx.policy_secret(ESYS_TR.ENDORSEMENT, session)
                out = self._ctx.activate_credential(
                    ak, ek, id_object, encrypted, session1=ESYS_TR.PASSWORD, session2=session
                )
            finally:
                self._ctx.flush_context(session)
        return bytes(out)

    def shutdown(self) -> None:
        """TPM2_Shutdown(CLEAR): an orderly power-off. Without it the next start-up counts
        as an attack on the dictionary-attack counter, and a few lock the TPM out."""
        with _tss("Shutdown"):
            self._ctx.shutdown(TPM2_SU.CLEAR)

    def reset_pcr(self, index: int) -> None:
        with _tss(f"PCR_Reset({index})"):
            self._ctx.pcr_reset(_PCR_HANDLES[index])

    def extend_pcr(self, index: int, digest: bytes) -> None:
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))
        with _tss(f"PCR_Extend({index})"):
            self._ctx.pcr_extend(_PCR_HANDLES[index], TPML_DIGEST_VALUES([value]))

    def read_pcrs(self, indices: Sequence[int]) -> tuple[bytes, ...]:
        """SHA-256 bank values of ``indices`` (ascending), in that order."""
        out: list[bytes] = []
        for start in range(0, len(indices), _READ_BATCH):
            batch = indices[start : start + _READ_BATCH]
            selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, batch)))
            with _tss("PCR_Read"):
                _, _, digests = self._ctx.pcr_read(selection)
            values = [bytes(d) for d in digests]
            if len(values) != len(batch):
                raise TpmError("PCR_Read returned fewer PCRs than asked")
            out.extend(values)
        return tuple(out)

    def quote(self, ak: Any, indices: Sequence[int], qualifying: bytes) -> tuple[bytes, bytes]:
        """TPM2_Quote over the SHA-256 ``indices``: (TPMS_ATTEST, TPMT_SIGNATURE) bytes."""
        selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, indices)))
        with _tss("Quote"):
            attest, signature = self._ctx.quote(ak, selection, qualifying)
        # TPM2B_ATTEST marshals with its u16 size in front; the evidence carries the body.
        return bytes(attest.marshal())[2:], bytes(signature.marshal())
