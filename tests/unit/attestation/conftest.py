"""Evidence from a fake (software-key) attester, and a golden policy matching it."""

from __future__ import annotations

import hashlib
import os

import pytest

from attestation import constants as c
from attestation.evidence import ManifestEntry
from attestation.fake import FakeAttester
from attestation.policy import GoldenPolicy

NODE_ID = hashlib.sha256(b"exit node public keys").digest()
NOW = 1_800_000_000.0
SOFTWARE = (
    ManifestEntry("software:attestation", hashlib.sha256(b"attestation").digest()),
    ManifestEntry("software:l2bridge", hashlib.sha256(b"l2bridge").digest()),
    ManifestEntry(c.CONFIG_ENTRY, hashlib.sha256(b"config").digest()),
)
MANIFEST = (*SOFTWARE, ManifestEntry(c.NODE_ID_ENTRY, NODE_ID))


@pytest.fixture
def attester() -> FakeAttester:
    pcrs = {i: hashlib.sha256(bytes([i])).digest() for i in range(8)}
    return FakeAttester(MANIFEST, pcrs)


@pytest.fixture
def golden(attester: FakeAttester) -> GoldenPolicy:
    return GoldenPolicy(
        pcrs=tuple((i, attester.pcrs[i]) for i in range(8)),
        manifest=tuple(sorted((m.name, m.digest) for m in SOFTWARE)),
        max_age_s=300,
    )


@pytest.fixture
def nonce() -> bytes:
    return os.urandom(32)
