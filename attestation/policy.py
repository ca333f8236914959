"""Golden policy: what a known-good exit looks like.

A JSON document, written by ``shadowmesh attest golden`` from a known-good node::

    {"version": 1, "max_age_s": 300,
     "pcrs": {"0": "<hex sha256>", ...},
     "manifest": {"software:l2bridge": "<hex sha256>", "config": "<hex>", ...}}

``pcrs`` holds the expected SHA-256 bank values of the firmware/boot PCRs. The measurement
PCR (23) is not listed: it includes the node's own nodeId, so the verifier checks it by
replaying the signed manifest instead, and checks the manifest entries here (every entry
but ``node-id``, which must equal the nodeId the client expects). Pure: bytes in, policy out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from attestation import constants as c
from attestation.errors import PolicyError


@dataclass(frozen=True, slots=True)
class GoldenPolicy:
    pcrs: tuple[tuple[int, bytes], ...]  # ascending index
    manifest: tuple[tuple[str, bytes], ...]  # sorted by name
    max_age_s: float = c.DEFAULT_MAX_AGE_S

    def pcr(self, index: int) -> bytes | None:
        return dict(self.pcrs).get(index)


def _digest(value: Any, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != c.SHA256_SIZE:
        raise PolicyError(f"{where}: expected 64 hex digits")
    return raw


def parse(data: bytes | str) -> GoldenPolicy:
    """Parse a policy document; raises PolicyError naming the bad field."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"policy is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("policy must be a JSON object")
    if doc.get("version") != c.POLICY_VERSION:
        raise PolicyError(f"version: must be {c.POLICY_VERSION}")
    max_age = doc.get("max_age_s", c.DEFAULT_MAX_AGE_S)
    if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
        raise PolicyError("max_age_s: must be a positive number")
    raw_pcrs = doc.get("pcrs", {})
    raw_manifest = doc.get("manifest", {})
    if not isinstance(raw_pcrs, dict) or not isinstance(raw_manifest, dict):
        raise PolicyError("pcrs and manifest must be JSON objects")
    pcrs: dict[int, bytes] = {}
    for key, value in raw_pcrs.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < c.PCR_COUNT):
            raise PolicyError(f"pcrs: {key!r} is not a PCR index")
        if int(key) == c.MEASUREMENT_PCR:
            raise PolicyError(f"pcrs: PCR {c.MEASUREMENT_PCR} is checked through the manifest")
        pcrs[int(key)] = _digest(value, f"pcrs.{key}")
    manifest: dict[str, bytes] = {}
    for name, value in raw_manifest.items():
        if not name or len(name.encode()) > c.MAX_ENTRY_NAME or name == c.NODE_ID_ENTRY:
            raise PolicyError(f"manifest: {name!r} is not an allowed entry name")
        manifest[name] = _digest(value, f"manifest.{name}")
    return GoldenPolicy(tuple(sorted(pcrs.items())), tuple(sorted(manifest.items())), max_age)


def dump(policy: GoldenPolicy) -> str:
    """Canonical JSON text of a policy (sorted keys, one trailing newline)."""
    doc = {
        "version": c.POLICY_VERSION,
        "max_age_s": policy.max_age_s,
        "pcrs": {str(i): v.hex() for i, v in policy.pcrs},
        "manifest": {name: v.hex() for name, v in policy.manifest},
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
