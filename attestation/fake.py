"""An in-memory stand-in for a TPM and the kernel, for tests that need no swtpm.

It keeps real-format logs (a crypto-agile boot event log, an ``ima-ng`` IMA list), extends
its PCRs from them as firmware and kernel would, and produces real-format evidence
(TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC) signed by a software P-256 key, with a clock and
counters the test controls. Tests tamper with its fields to play an attacker. It proves
nothing about a machine; nothing outside tests should construct one.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation import constants as c
from attestation import eventlog, ima, tpms
from attestation import evidence as ev

APPROVED_CMDLINE = "root=/dev/vda1 ro " + " ".join(c.DEFAULT_CMDLINE_REQUIRES)


def boot_events(cmdline: str = APPROVED_CMDLINE) -> list[eventlog.Event]:
    """A small firmware/boot-loader log: CRTM, separators 0-7, command line, kernel."""
    events = [eventlog.measured(0, eventlog.EV_S_CRTM_VERSION, b"ShadowMesh lab firmware 1.0")]
    events += [eventlog.measured(i, eventlog.EV_SEPARATOR, b"\0\0\0\0") for i in range(8)]
    events.append(eventlog.cmdline_event(cmdline))
    events.append(eventlog.measured(9, eventlog.EV_IPL, b"/boot/vmlinuz", b"lab kernel"))
    return events


class FakeAttester:
    def __init__(
        self,
        *,
        cmdline: str = APPROVED_CMDLINE,
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
        self.pcrs = dict.fromkeys(c.QUOTE_PCRS, bytes(32))
        self.event_log = eventlog.encode(boot_events(cmdline))
        for index, value in eventlog.replay(eventlog.parse(self.event_log)).items():
            self.pcrs[index] = value
        self.ima_list = b""
        self.measure_file(c.BOOT_AGGREGATE_PATH, ima.boot_aggregate(self.boot_pcrs()))
        self.clock = 1000
        self.reset_count = 1
        self.restart_count = 0
        self.firmware_version = 0x20191023
        self.safe = True
        self.calls = 0

    def boot_pcrs(self) -> tuple[bytes, ...]:
        return tuple(self.pcrs[i] for i in range(c.BOOT_AGGREGATE_PCRS))

    def measure_file(self, path: str, digest: bytes, *, violation: bool = False) -> None:
        """Play the kernel: append an entry and extend PCR 10 as IMA does."""
        raw = ima.encode_entry(path, digest, violation=violation)
        (entry,) = ima.parse_list(raw)
        self.ima_list += raw
        self.pcrs[c.IMA_PCR] = hashlib.sha256(
            self.pcrs[c.IMA_PCR] + entry.pcr_extend_value()
        ).digest()

    def reboot(self) -> None:
        """Play a reboot: the TPM's reset count goes up, PCR 10 and the IMA list start
        afresh with the boot aggregate (same firmware and boot chain)."""
        self.reset_count += 1
        self.restart_count = 0
        self.pcrs[c.IMA_PCR] = bytes(32)
        self.ima_list = b""
        self.measure_file(c.BOOT_AGGREGATE_PATH, ima.boot_aggregate(self.boot_pcrs()))

    def load(self, path: str, contents: bytes) -> None:
        self.measure_file(path, hashlib.sha256(contents).digest())

    def sign(self, attest: bytes) -> bytes:
        r, s = decode_dss_signature(self.key.sign(attest, ec.ECDSA(hashes.SHA256())))
        return tpms.encode_signature(tpms.EcdsaSignature(r, s))

    def evidence(
        self,
        nonce: bytes,
        node_id: bytes,
        now: float,
        ima_first: int = 0,
        *,
        since: ev.Since | None = None,
    ) -> bytes:
        self.calls += 1
        self.clock += 1
        indices = tuple(sorted(self.pcrs))
        values = tuple(self.pcrs[i] for i in indices)
        attest = tpms.encode_attest(
            tpms.QuoteAttest(
                qualified_signer=tpms.public_name(self.ak_public),
                extra_data=ev.qualifying_data(nonce, node_id),
                clock_info=tpms.ClockInfo(
                    self.clock, self.reset_count, self.restart_count, self.safe
                ),
                firmware_version=self.firmware_version,
                pcrs=indices,
                pcr_digest=tpms.pcr_digest(values),
            )
        )
        if since is not None:
            ima_first = ev.first_entry(since, attest, len(ima.parse_list(self.ima_list)))
        log = self.event_log if ev.sends_boot_log(since, attest) else b""
        return ev.encode(
            ev.Evidence(
                nonce=nonce,
                node_id=node_id,
                attest=attest,
                signature=self.sign(attest),
                ak_public=self.ak_public,
                pcrs=tuple(zip(indices, values, strict=True)),
                event_log=log,
                ima_first=ima_first,
                ima_list=self.ima_list[ima.skip_offset(self.ima_list, ima_first) :],
            )
        )
