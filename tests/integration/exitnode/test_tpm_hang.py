"""A hung TPM (swtpm stopped with SIGSTOP) under a serving exit.

Real swtpm, real ExitLifecycle (enrolled against the swtpm's EK CA), real tunnel server
on loopback. While the TPM does not answer:

* plain handshakes (no evidence asked) complete, also with attested ones in flight;
* attested handshakes end with the client refusing the exit (empty evidence: the "TPM
  lost" path), never by the client's own handshake timeout;
* the lifecycle says tpm-unavailable, counts the overrun command and logs "TPM lost";
* once the TPM answers again (SIGCONT) the lifecycle re-opens it and attested clients
  get fresh evidence again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from pathlib import Path

import pytest

from exitnode.errors import AttestationUnavailable
from exitnode.lifecycle import STATE_OK, STATE_TPM_UNAVAILABLE, ExitLifecycle
from hardware.tpm import Swtpm
from l2bridge.errors import AuthenticationFailed
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.credlab import ExitCredentials

pytestmark = pytest.mark.integration

EXIT = HybridSigningKey.generate()
CLIENT = HybridSigningKey.generate()
KEY = ExitCredentials(EXIT.node_id)  # the exit's master key and credential table
CREDENTIAL = KEY.issue(CLIENT.node_id, "client")
DEADLINE_S = 0.5


class NoEvidence(Exception):
    pass


def require_evidence(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
    if not evidence:
        raise NoEvidence


def signal_tpm(tpm: Swtpm, sig: signal.Signals) -> None:
    assert tpm._proc is not None
    os.kill(tpm._proc.pid, sig)


async def idle(link: Link) -> None:
    with contextlib.suppress(TransportClosed):
        await link.recv_frames()


async def dial(url: str, attest: bool) -> Link:
    handshake = ClientHandshake(CLIENT, pinned_node_id=EXIT.node_id)
    if attest:
        handshake = ClientHandshake(
            CLIENT, pinned_node_id=EXIT.node_id, attestation_nonce=os.urandom(32),
            evidence_checker=require_evidence,
        )  # fmt: skip
    return await connect(url, handshake, credential=CREDENTIAL, node_id=EXIT.node_id)


async def outcome(url: str, attest: bool) -> str:
    try:
        link = await dial(url, attest)
    except AuthenticationFailed:
        return "refused"
    except TimeoutError:
        return "timeout"
    except TransportClosed:
        return "closed"
    await link.close()
    return "connected"


def test_hung_tpm_blocks_no_plain_handshake(
    swtpm: Swtpm, tmp_path: Path, caplog: pytest.LogCaptureFixture, kernel_logs: dict[str, Path]
) -> None:
    lifecycle = ExitLifecycle(
        swtpm.tcti, EXIT.node_id, tmp_path, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
        timeout_s=DEADLINE_S, open_timeout_s=DEADLINE_S, retry_s=0.1,
    )  # fmt: skip
    lifecycle.start()
    authorizer = Authorizer(allow_list=AllowList().add(CLIENT.node_id, "c"))
    settings = ServerSettings(DecoySite.builtin(), "/ws", KEY.verifier())

    async def main() -> None:
        server = await serve(
            idle,
            settings,
            lambda: ServerHandshake(EXIT, authorizer, evidence_provider=lifecycle.evidence),
            host="127.0.0.1",
            port=0,
            # every attested hello here comes from one source: no per-source quote quota
            hello_guard=HelloGuard(quotes_per_minute=6000),
        )
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        try:
            assert await outcome(url, attest=True) == "connected"  # the TPM answers

            signal_tpm(swtpm, signal.SIGSTOP)
            results = await asyncio.gather(
                *(outcome(url, attest=True) for _ in range(6)),
                *(outcome(url, attest=False) for _ in range(3)),
            )
            attested, plain = results[:6], results[6:]
            assert plain == ["connected"] * 3
            # Refused for empty evidence ("TPM lost"); one that found the TPM still held
            # by another quote past its wait is closed as busy. Never a timeout.
            assert set(attested) <= {"refused", "closed"} and "refused" in attested, attested
            assert lifecycle.state == STATE_TPM_UNAVAILABLE
            health = lifecycle.health()
            assert health["ok"] is False and health["timeouts"] == 1
            assert health["stuck_commands"] == 1
            # Worker slots were freed: both kinds still get an answer.
            assert await outcome(url, attest=False) == "connected"
            assert await outcome(url, attest=True) == "refused"

            signal_tpm(swtpm, signal.SIGCONT)
            for _ in range(200):  # the stuck command returns; a retry re-opens the TPM
                if lifecycle.state == STATE_OK:
                    break
                await outcome(url, attest=True)  # an empty answer starts the retry
                await asyncio.sleep(0.05)
            assert lifecycle.state == STATE_OK
            assert lifecycle.health()["stuck_commands"] == 0
            assert await outcome(url, attest=True) == "connected"
        finally:
            server.close()
            await server.wait_closed()
            lifecycle.close()

    with caplog.at_level(logging.INFO, logger="exitnode.lifecycle"):
        asyncio.run(main())
    lost = [r.getMessage() for r in caplog.records if "TPM lost" in r.getMessage()]
    assert len(lost) == 1 and "no answer from the TPM within 0.5 s" in lost[0]
    assert any("TPM back" in r.getMessage() for r in caplog.records)


def test_tpm_that_hangs_at_start_is_unavailable_not_a_hang(
    swtpm: Swtpm, tmp_path: Path, kernel_logs: dict[str, Path]
) -> None:
    nid = hashlib.sha256(b"exit").digest()
    lifecycle = ExitLifecycle(
        swtpm.tcti, nid, tmp_path, **kernel_logs,
        ek_anchors=[swtpm.root_ca], ek_intermediates=[swtpm.intermediate_ca],
        timeout_s=DEADLINE_S, open_timeout_s=DEADLINE_S,
    )  # fmt: skip
    signal_tpm(swtpm, signal.SIGSTOP)
    with pytest.raises(AttestationUnavailable, match=r"no answer from the TPM within 0\.5 s"):
        lifecycle.start()
    assert lifecycle.state == STATE_TPM_UNAVAILABLE
