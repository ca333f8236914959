"""The attested exit's evidence for a hello that says how far the client replayed its IMA
list: through ``AttestedExit`` -> ``ExitLifecycle`` -> the TPM thread -> the Attester, on a
real swtpm with a measured boot, the quote's reset count deciding where the list starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attestation import evidence as ev
from attestation import ima, tpms
from exitnode.attested import AttestedExit
from exitnode.lifecycle import ExitLifecycle
from hardware.tpm import Swtpm
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import TunnelClock
from l2bridge.protocol.handshake import EvidenceSince

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()


def test_attested_exit_cuts_its_list_only_for_the_same_boot(
    swtpm: Swtpm, tmp_path: Path, kernel_logs: dict[str, Path]
) -> None:
    lifecycle = ExitLifecycle(
        swtpm.tcti, EXIT.node_id, tmp_path, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
    )  # fmt: skip
    lifecycle.start()
    try:
        attested = AttestedExit(TunnelClock(), Metrics("exit"), lifecycle=lifecycle)
        whole = ev.decode(attested.evidence_provider(os.urandom(32), EXIT.node_id))
        entries = len(ima.parse_list(whole.ima_list))
        reset = tpms.parse_attest(whole.attest).clock_info.reset_count
        assert whole.ima_first == 0 and entries >= 1
        provide = attested.evidence_since_provider
        assert provide is not None
        # The client has every entry but the last: it gets just that one.
        cut = ev.decode(provide(os.urandom(32), EXIT.node_id, EvidenceSince(reset, entries - 1)))
        assert cut.ima_first == entries - 1 and len(ima.parse_list(cut.ima_list)) == 1
        # ... and not this boot's event log, which it kept when it checked the whole.
        assert whole.event_log and cut.event_log == b""
        # A reset count the TPM does not have now (the client saw another boot), or more
        # entries than there are: the whole list.
        for since in (EvidenceSince(reset + 1, entries - 1), EvidenceSince(reset, entries + 5)):
            again = ev.decode(provide(os.urandom(32), EXIT.node_id, since))
            assert again.ima_first == 0 and len(ima.parse_list(again.ima_list)) == entries
            # The boot log goes with another boot only: for this one the client kept it.
            assert again.event_log == (whole.event_log if since.reset_count != reset else b"")
    finally:
        lifecycle.close()
