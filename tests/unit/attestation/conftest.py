"""Evidence from a fake TPM + kernel, and a golden policy approving what it booted and loaded."""

from __future__ import annotations

import hashlib
import os

import pytest

from attestation import constants as c
from attestation import runtime_policy as rp
from attestation.eventlog import BootPolicy
from attestation.fake import FakeAttester
from attestation.policy import GoldenPolicy

NODE_ID = hashlib.sha256(b"exit node public keys").digest()
NOW = 1_800_000_000.0
FILES = {
    "/usr/bin/python3.11": b"interpreter",
    "/opt/shadowmesh/exitnode/__pycache__/server.cpython-311.pyc": b"exit server",
    "/opt/shadowmesh/l2bridge/__pycache__/codec.cpython-311.pyc": b"codec",
    "/etc/shadowmesh/exit.yaml": b"config",
}


def load_release(attester: FakeAttester) -> None:
    for path, contents in FILES.items():
        attester.load(path, contents)


@pytest.fixture
def attester() -> FakeAttester:
    a = FakeAttester()
    load_release(a)
    return a


@pytest.fixture
def golden(attester: FakeAttester) -> GoldenPolicy:
    runtime = rp.RuntimePolicy(
        {p: frozenset({hashlib.sha256(b).digest()}) for p, b in FILES.items()},
        ("^/var/lib/shadowmesh/",),
    )
    boot = BootPolicy(
        tuple((i, attester.pcrs[i]) for i in range(c.BOOT_AGGREGATE_PCRS)),
        c.DEFAULT_CMDLINE_REQUIRES,
    )
    return GoldenPolicy(boot, runtime, max_age_s=300)


@pytest.fixture
def nonce() -> bytes:
    return os.urandom(32)
