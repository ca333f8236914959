"""Golden policy: what an approved exit release looks like, in one JSON document.

::

    {"version": 2, "max_age_s": 300,
     "boot": {"pcrs": {"0": "<hex sha256>", ..., "9": "..."},
              "kernel_cmdline_requires": ["ima_policy=tcb", "ima_template=ima-ng", ...]},
     "runtime_policy": { ...a Keylime runtime policy (attestation.runtime_policy)... }}

``boot.pcrs`` holds approved SHA-256 values of (some of) PCRs 0-9; the verifier also
replays the event log to the quoted values, so the kernel command line it reads there is
the one that was booted, and requires every ``kernel_cmdline_requires`` parameter in it
(IMA on, with the ima-ng template and SHA-256). ``runtime_policy`` lists every file an
exit of this release may load. Nothing here is about one node: the nodeId is bound through
the quote's qualifying data. Pure: bytes in, policy out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from attestation import constants as c
from attestation import runtime_policy as rp
from attestation.errors import PolicyError
from attestation.eventlog import BootPolicy


@dataclass(frozen=True, slots=True)
class GoldenPolicy:
    boot: BootPolicy
    runtime: rp.RuntimePolicy
    max_age_s: float = c.DEFAULT_MAX_AGE_S


def _digest(value: Any, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != c.SHA256_SIZE:
        raise PolicyError(f"{where}: expected 64 hex digits")
    return raw


def _boot(doc: Any) -> BootPolicy:
    if not isinstance(doc, dict):
        raise PolicyError("boot: must be a JSON object")
    raw_pcrs = doc.get("pcrs", {})
    if not isinstance(raw_pcrs, dict):
        raise PolicyError("boot.pcrs: must be a JSON object")
    pcrs: dict[int, bytes] = {}
    for key, value in raw_pcrs.items():
        if not (key.isdigit() and int(key) < c.BOOT_AGGREGATE_PCRS):
            raise PolicyError(f"boot.pcrs: {key!r} is not a boot PCR (0-9)")
        pcrs[int(key)] = _digest(value, f"boot.pcrs.{key}")
    requires = doc.get("kernel_cmdline_requires", list(c.DEFAULT_CMDLINE_REQUIRES))
    if not isinstance(requires, list) or not all(
        isinstance(p, str) and p and not any(ch.isspace() for ch in p) for p in requires
    ):
        raise PolicyError("boot.kernel_cmdline_requires: must be a list of parameters")
    return BootPolicy(tuple(sorted(pcrs.items())), tuple(requires))


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
    if "runtime_policy" not in doc:
        raise PolicyError("runtime_policy: required")
    runtime = rp.parse(json.dumps(doc["runtime_policy"]))
    return GoldenPolicy(_boot(doc.get("boot", {})), runtime, float(max_age))


def dump(policy: GoldenPolicy) -> str:
    """Canonical JSON text of a policy (sorted keys, one trailing newline)."""
    doc = {
        "version": c.POLICY_VERSION,
        "max_age_s": float(policy.max_age_s),
        "boot": {
            "pcrs": {str(i): v.hex() for i, v in policy.boot.pcrs},
            "kernel_cmdline_requires": list(policy.boot.cmdline_requires),
        },
        "runtime_policy": rp.to_doc(policy.runtime),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"
