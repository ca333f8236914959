"""The exit's side of a quote: the kernel's logs plus a TPM quote over PCRs 0-10.

The exit measures nothing itself. Firmware and boot loader wrote the boot event log and
extended PCRs 0-9; the kernel's IMA measured every file before it was loaded, appended it
to its list and extended PCR 10. ``Attester`` only reads both logs and asks the TPM for a
quote, so an exit running other software cannot produce evidence that passes.

Product path: the kernel's files (``/sys/kernel/security/tpm0/binary_bios_measurements``
and ``/sys/kernel/security/ima/binary_runtime_measurements``) on a machine booted with
``ima_policy=tcb ima_template=ima-ng ima_hash=sha256``. Tests and the demo have no kernel
IMA behind swtpm, so a separate harness process (``lab.imaharness``) plays firmware and
kernel and writes the same formats to paths given here.

IMA keeps appending while we quote, so the list is read after the quote and cut at the
entry where its replay reaches the quoted PCR 10. ``Attester`` keeps one TPM context with
the AK loaded; it is not thread-safe (``provider.EvidenceProvider`` serialises it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attestation import constants as c
from attestation import evidence as ev
from attestation import ima, tpms
from attestation.enrol import AkKey
from attestation.errors import EvidenceError, MeasurementError, TpmError
from attestation.tpm import Tpm

QUOTE_ATTEMPTS = 3  # PCR 10 extended between Quote and PCR_Read makes us try again


def read_bounded(path: Path, limit: int) -> bytes:
    """A kernel log file (never larger than ``limit``); raises MeasurementError."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise MeasurementError(f"{path} is larger than {limit} bytes")
    return data


class Attester:
    def __init__(
        self,
        tcti: str,
        ak: AkKey,
        *,
        ima_list: Path = Path(c.IMA_LIST_PATH),
        event_log: Path = Path(c.EVENT_LOG_PATH),
    ) -> None:
        self.tcti = tcti
        self.ima_path = ima_list
        self.event_log_path = event_log
        self._ak = ak
        self._tpm = Tpm(tcti)
        self._handle: Any = None
        # Where our own replay of the list got to: (entries, byte offset, PCR 10 value).
        self._seen = (0, 0, ima.INITIAL_STATE)
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

    def read_pcrs(self) -> tuple[tuple[int, bytes], ...]:
        return tuple(zip(c.QUOTE_PCRS, self._tpm.read_pcrs(c.QUOTE_PCRS), strict=True))

    def quote_raw(self, qualifying: bytes, pcrs: tuple[int, ...]) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) over ``pcrs`` with any extraData (the registry's)."""
        return self._tpm.quote(self._handle, pcrs, qualifying)

    def _list_up_to(self, pcr10: bytes) -> tuple[bytes, int]:
        """(list bytes, entries) of the prefix of the IMA list that replays to ``pcr10``."""
        data = read_bounded(self.ima_path, c.MAX_IMA_LIST_SIZE)
        count, offset, state = self._seen
        if len(data) < offset:
            raise MeasurementError("the IMA list shrank")
        if state.pcr10 == pcr10:
            return data[:offset], count
        try:
            for entry, end in ima.iter_entries(data, offset):
                state = ima.ImaState(state.count + 1, ima.extend(state.pcr10, entry))
                if state.pcr10 == pcr10:
                    self._seen = (state.count, end, state)
                    return data[:end], state.count
        except EvidenceError as exc:
            raise MeasurementError(f"{self.ima_path}: {exc}") from None
        raise MeasurementError(f"{self.ima_path} does not replay to PCR {c.IMA_PCR}")

    def check_list(self) -> int:
        """Entries of the IMA list up to the current PCR 10; raises MeasurementError if
        the list does not replay to it (PCR 10 extended outside the kernel)."""
        (value,) = self._tpm.read_pcrs([c.IMA_PCR])
        return self._list_up_to(value)[1]

    def evidence(
        self,
        nonce: bytes,
        node_id: bytes,
        now: float,
        ima_first: int = 0,
        *,
        since: ev.Since | None = None,
    ) -> bytes:
        """Fresh evidence answering ``nonce`` for ``node_id``, with the IMA list from entry
        ``ima_first`` (0: all; a verifier that kept state may ask for fewer), or from
        where ``since`` says the verifier stopped when the quote is of that boot
        (``evidence.first_entry``; the boot's event log is then left out too,
        ``evidence.sends_boot_log``). ``now`` is unused: the quote carries the TPM clock."""
        del now
        qualifying = ev.qualifying_data(nonce, node_id)
        for _ in range(QUOTE_ATTEMPTS):
            attest, signature = self._tpm.quote(self._handle, c.QUOTE_PCRS, qualifying)
            values = self._tpm.read_pcrs(c.QUOTE_PCRS)
            if tpms.parse_attest(attest).pcr_digest != tpms.pcr_digest(values):
                continue  # a PCR moved between Quote and PCR_Read
            data, count = self._list_up_to(values[c.IMA_PCR])
            log = b""
            if ev.sends_boot_log(since, attest):
                log = read_bounded(self.event_log_path, c.MAX_EVENT_LOG_SIZE)
            if since is not None:
                ima_first = ev.first_entry(since, attest, count)
            if ima_first > count:
                raise MeasurementError(f"asked for IMA entries from {ima_first}, have {count}")
            return ev.encode(
                ev.Evidence(
                    nonce=nonce,
                    node_id=node_id,
                    attest=attest,
                    signature=signature,
                    ak_public=self._ak.tpmt_public,
                    pcrs=tuple(zip(c.QUOTE_PCRS, values, strict=True)),
                    event_log=log,
                    ima_first=ima_first,
                    ima_list=data[ima.skip_offset(data, ima_first) :],
                )
            )
        raise TpmError("PCRs kept changing while quoting")
