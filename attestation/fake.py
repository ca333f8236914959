"""An in-memory stand-in for a TPM's quoting, for tests that need no swtpm.

It produces real-format evidence (TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC) signed by a
software P-256 key, with a clock and counters the test controls. It proves nothing about
a machine; nothing outside tests should construct one.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation import constants as c
from attestation import evidence as ev
from attestation import tpms


class FakeAttester:
    def __init__(
        self,
        manifest: tuple[ev.ManifestEntry, ...],
        pcrs: dict[int, bytes] | None = None,
        *,
        attributes: int = c.AK_REQUIRED_ATTRIBUTES | c.TPMA_USER_WITH_AUTH,
    ) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.key.public_key().public_numbers()
        self.public = tpms.EccPublic(
            c.TPM_ALG_SHA256,
            attributes,
            b"",
            numbers.x.to_bytes(32, "big"),
            numbers.y.to_bytes(32, "big"),
        )
        self.ak_public = tpms.encode_public(self.public)
        self.manifest = manifest
        self.pcrs = dict.fromkeys(c.DEFAULT_QUOTE_PCRS, bytes(32)) if pcrs is None else pcrs
        self.pcrs[c.MEASUREMENT_PCR] = ev.replay_manifest(manifest)
        self.clock = 1000
        self.reset_count = 1
        self.restart_count = 0
        self.calls = 0

    def sign(self, attest: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(attest, ec.ECDSA(hashes.SHA256())))
        return tpms.encode_signature(tpms.EcdsaSignature(r, s))

    def evidence(self, nonce: bytes, node_id: bytes, now: float) -> bytes:
        self.calls += 1
        self.clock += 1
        indices = tuple(sorted(self.pcrs))
        values = tuple(self.pcrs[i] for i in indices)
        attest = tpms.encode_attest(
            tpms.QuoteAttest(
                qualified_signer=tpms.public_name(self.ak_public),
                extra_data=ev.qualifying_data(nonce, node_id),
                clock_info=tpms.ClockInfo(self.clock, self.reset_count, self.restart_count, True),
                firmware_version=0x20191023,
                pcrs=indices,
                pcr_digest=tpms.pcr_digest(values),
            )
        )
        return ev.encode(
            ev.Evidence(
                nonce=nonce,
                node_id=node_id,
                produced_at_ms=int(now * 1000),
                attest=attest,
                signature=self.sign(attest),
                ak_public=self.ak_public,
                pcrs=tuple(zip(indices, values, strict=True)),
                manifest=self.manifest,
            )
        )
