"""A client pinned to one exit with ``attestation_required`` asks for and checks evidence.

Real ExitNode and ClientNode on loopback; the exit's evidence comes from a FakeAttester
(real evidence format, software AK), checked against a golden policy and the enrolment
record the client is configured with.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from attestation import constants as ac
from attestation import evidence as ev
from attestation import policy as golden
from attestation import runtime_policy as rp
from attestation.enrol import Enrolment
from attestation.eventlog import BootPolicy
from attestation.evidence import Since
from attestation.fake import FakeAttester
from l2bridge.client.node import ClientNode
from l2bridge.errors import AuthenticationFailed
from l2bridge.node.config import ConfigError, ensure_startable
from l2bridge.protocol.handshake import EvidenceSince
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration

SOFTWARE = {"/opt/shadowmesh/l2bridge/__init__.py": b"l2bridge"}


def attester_for(node_id: bytes) -> FakeAttester:
    del node_id  # bound through the quote's qualifying data, not measured
    attester = FakeAttester()
    for path, contents in SOFTWARE.items():
        attester.load(path, contents)
    return attester


def write_trust(
    directory: Path, attester: FakeAttester, software: dict[str, bytes] = SOFTWARE
) -> None:
    runtime = rp.RuntimePolicy(
        {p: frozenset({hashlib.sha256(b).digest()}) for p, b in software.items()}, ()
    )
    boot = BootPolicy(tuple((i, attester.pcrs[i]) for i in range(10)), ac.DEFAULT_CMDLINE_REQUIRES)
    policy = golden.GoldenPolicy(boot, runtime, max_age_s=300)
    (directory / "golden.json").write_text(golden.dump(policy))
    record = Enrolment(attester.ak_public, hashlib.sha256(b"ek certificate").digest())
    (directory / "exit-enrolment.json").write_text(record.dump())


def require_attestation(doc: dict[str, Any]) -> None:
    doc["security"]["attestation_required"] = True
    doc["tpm"] = {"golden_policy": "golden.json", "exit_enrolment": "exit-enrolment.json"}


def test_pinned_exit_without_ak_source_refuses_to_start(tmp_path: Path) -> None:
    lab, _port = nodes.make_lab(tmp_path)
    write_trust(tmp_path, attester_for(lab.exit_node_id))
    path = lab.client_configs["client"]

    def no_enrolment(doc: dict[str, Any]) -> None:
        require_attestation(doc)
        del doc["tpm"]["exit_enrolment"]

    nodes.edit(path, no_enrolment)
    cfg = nodes.config(path)
    with pytest.raises(ConfigError, match=r"refusing to start: security.attestation_required"):
        ensure_startable(cfg)
    # The node refuses by itself too, whoever builds it.
    with pytest.raises(ConfigError, match=r"attestation_required: the pinned exit's AK"):
        ClientNode(cfg, status=False)


def test_pinned_exit_evidence_is_asked_for_and_checked(tmp_path: Path, fake_host: None) -> None:
    lab, _port = nodes.make_lab(tmp_path)
    good = attester_for(lab.exit_node_id)
    write_trust(tmp_path, good)
    client_cfg = nodes.config(nodes.edit(lab.client_configs["client"], require_attestation))
    nonces: list[bytes] = []

    def honest(nonce: bytes, node_id: bytes) -> bytes:
        nonces.append(nonce)
        return good.evidence(nonce, node_id, time.time())

    impostor = attester_for(lab.exit_node_id)  # right software, but not the enrolled AK

    def other_tpm(nonce: bytes, node_id: bytes) -> bytes:
        return impostor.evidence(nonce, node_id, time.time())

    async def scenario() -> None:
        client = ClientNode(client_cfg, status=False)
        async with nodes.running_exit(nodes.config(lab.exit_config), evidence_provider=honest):
            for _ in range(2):
                link = await client.connect()
                await link.close()
        assert len(nonces) == 2 and len(set(nonces)) == 2  # a fresh nonce per dial
        async with nodes.running_exit(nodes.config(lab.exit_config), evidence_provider=other_tpm):
            with pytest.raises(AuthenticationFailed):
                await client.connect()
        async with nodes.running_exit(nodes.config(lab.exit_config)):  # no evidence at all
            with pytest.raises(AuthenticationFailed):
                await client.connect()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_returning_client_is_sent_only_the_new_ima_entries(
    tmp_path: Path, fake_host: None
) -> None:
    """The second dial's hello says how far the client replayed the exit's IMA list; the
    exit answers with the entries after those, and the client still checks them. After a
    reboot the same hello gets the whole list; an exit that cuts the list to hide an entry
    is refused."""
    lab, _port = nodes.make_lab(tmp_path)
    software = {
        **SOFTWARE,
        **{f"/opt/shadowmesh/l2bridge/lib{i}.py": b"lib%d" % i for i in range(3)},
    }
    tpm = FakeAttester()
    for path, contents in software.items():
        tpm.load(path, contents)
    write_trust(tmp_path, tpm, software)
    client_cfg = nodes.config(nodes.edit(lab.client_configs["client"], require_attestation))
    sent: list[tuple[Since | None, int, int]] = []  # (asked, first entry sent, bytes)

    def record(since: Since | None, evidence: bytes) -> bytes:
        sent.append((since, ev.decode(evidence).ima_first, len(evidence)))
        return evidence

    def whole(nonce: bytes, node_id: bytes) -> bytes:
        return record(None, tpm.evidence(nonce, node_id, time.time()))

    def since_of(nonce: bytes, node_id: bytes, hint: EvidenceSince) -> bytes:
        since = Since(hint.reset_count, hint.ima_count)
        return record(since, tpm.evidence(nonce, node_id, time.time(), since=since))

    def hiding(nonce: bytes, node_id: bytes, hint: EvidenceSince) -> bytes:
        # root on the exit starts the list one entry late, past the file it wants unseen
        return tpm.evidence(nonce, node_id, time.time(), ima_first=hint.ima_count + 1)

    async def scenario() -> None:
        client = ClientNode(client_cfg, status=False)
        exit_cfg = nodes.config(lab.exit_config)
        async with nodes.running_exit(
            exit_cfg, evidence_provider=whole, evidence_since_provider=since_of
        ):
            for _ in range(2):
                link = await client.connect()
                await link.close()
                tpm.load("/opt/shadowmesh/l2bridge/__init__.py", b"l2bridge")  # measured again
            tpm.reboot()
            for path, contents in software.items():
                tpm.load(path, contents)
            link = await client.connect()
            await link.close()
        async with nodes.running_exit(
            exit_cfg, evidence_provider=whole, evidence_since_provider=hiding
        ):
            tpm.load("/opt/shadowmesh/l2bridge/__init__.py", b"l2bridge")
            with pytest.raises(AuthenticationFailed):
                await client.connect()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    listed = 1 + len(software)  # the boot aggregate, then each file
    (asked1, first1, size1), (asked2, first2, size2), (asked3, first3, _) = sent
    assert (asked1, first1) == (None, 0)  # first dial: the whole list
    assert asked2 == Since(tpm.reset_count - 1, listed) and first2 == listed  # one new entry
    assert size2 < size1
    # after the reboot the client asks from where it stopped; the exit's quote is of
    # another boot, so the whole list comes (and passes)
    assert asked3 == Since(tpm.reset_count - 1, listed + 1) and first3 == 0
