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
from attestation import policy as golden
from attestation import runtime_policy as rp
from attestation.enrol import Enrolment
from attestation.eventlog import BootPolicy
from attestation.fake import FakeAttester
from l2bridge.client.node import ClientNode
from l2bridge.errors import AuthenticationFailed
from l2bridge.node.config import ConfigError, ensure_startable
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration

SOFTWARE = {"/opt/shadowmesh/l2bridge/__init__.py": b"l2bridge"}


def attester_for(node_id: bytes) -> FakeAttester:
    del node_id  # bound through the quote's qualifying data, not measured
    attester = FakeAttester()
    for path, contents in SOFTWARE.items():
        attester.load(path, contents)
    return attester


def write_trust(directory: Path, attester: FakeAttester) -> None:
    runtime = rp.RuntimePolicy(
        {p: frozenset({hashlib.sha256(b).digest()}) for p, b in SOFTWARE.items()}, ()
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
