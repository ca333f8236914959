"""Runtime policy in Keylime's JSON layout: which files an exit may load.

The layout is Keylime's runtime policy (version 1), so operators can use the tools they
know (``keylime_create_policy``, ``keylime_policy``) and read ours::

    {"meta": {"version": 1, "generator": 0, "timestamp": "..."},
     "release": 0,
     "digests": {"/usr/lib/python3.11/os.py": ["<sha256 hex>", ...], ...},
     "excludes": ["^/proc/", ...],          # Python regexes, matched at the path's start
     "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1",
     "dm_policy": null}, "ima-buf": {}, "verification-keys": ""}

``check`` judges one IMA entry: an excluded path is skipped; a path that is not listed, or
whose digest is not one of the listed ones, is refused with the path named. We do not use
keyrings, ima-buf or signature verification keys: a policy that asks for them is refused
rather than half-honoured. ``canonical`` gives the bytes whose SHA-256 the registry records
per release. Pure: bytes in, policy out.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from attestation import constants as c
from attestation.errors import PolicyError

VERSION = 1
REQUIRED = ("meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf",
            "verification-keys")  # fmt: skip
LOG_HASH_ALG = "sha1"  # the template hash recorded in the list (Keylime's default)


@dataclass(frozen=True, slots=True)
class RuntimePolicy:
    digests: dict[str, frozenset[bytes]]  # treated as read-only
    excludes: tuple[str, ...]
    release: int = 0
    timestamp: str = ""
    _exclude: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            pattern = re.compile("|".join(f"(?:{e})" for e in self.excludes))
        except re.error as exc:
            raise PolicyError(f"excludes: bad regular expression: {exc}") from None
        object.__setattr__(self, "_exclude", pattern if self.excludes else None)

    def excluded(self, path: str) -> bool:
        return self._exclude is not None and self._exclude.match(path) is not None

    def check(self, path: str, digest: bytes) -> str | None:
        """None if ``path`` with ``digest`` may be loaded, else the reason naming the path."""
        allowed = self.digests.get(path)
        if allowed is not None and digest in allowed:
            return None
        if self.excluded(path):
            return None
        if allowed is None:
            return f"{path} is not in the runtime policy"
        return f"{path} has digest {digest.hex()[:16]}..., not one the runtime policy allows"

    def hash(self) -> bytes:
        """SHA-256 of the canonical JSON (what the registry records for a release)."""
        return hashlib.sha256(dump(self).encode()).digest()


def _digest_list(path: str, value: Any) -> frozenset[bytes]:
    if not isinstance(value, list) or not value or len(value) > c.MAX_POLICY_DIGESTS_PER_PATH:
        raise PolicyError(f"digests[{path!r}]: must be a non-empty list of SHA-256 hex")
    out = set()
    for item in value:
        try:
            raw = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != c.SHA256_SIZE:
            raise PolicyError(f"digests[{path!r}]: {item!r} is not a SHA-256 hex digest")
        out.add(raw)
    return frozenset(out)


def parse(data: bytes | str) -> RuntimePolicy:
    """Parse a Keylime runtime policy; raises PolicyError naming the bad field."""
    if len(data) > c.MAX_RUNTIME_POLICY_SIZE:
        raise PolicyError("runtime policy too large")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"runtime policy is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("runtime policy must be a JSON object")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise PolicyError(f"runtime policy lacks {', '.join(missing)}")
    meta = doc["meta"]
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise PolicyError(f"meta.version: must be {VERSION}")
    release = doc["release"]
    if isinstance(release, bool) or not isinstance(release, int) or release < 0:
        raise PolicyError("release: must be a non-negative integer")
    raw = doc["digests"]
    if not isinstance(raw, dict) or len(raw) > c.MAX_POLICY_PATHS:
        raise PolicyError("digests: must be an object of at most "
                          f"{c.MAX_POLICY_PATHS} paths")  # fmt: skip
    digests = {}
    for path, value in raw.items():
        if not path.startswith("/") and path != "boot_aggregate":
            raise PolicyError(f"digests: {path!r} is not an absolute path")
        digests[path] = _digest_list(path, value)
    excludes = doc["excludes"]
    if not isinstance(excludes, list) or not all(isinstance(e, str) and e for e in excludes):
        raise PolicyError("excludes: must be a list of regular expressions")
    ima = doc["ima"]
    if not isinstance(ima, dict) or ima.get("log_hash_alg", LOG_HASH_ALG) != LOG_HASH_ALG:
        raise PolicyError(f"ima.log_hash_alg: only {LOG_HASH_ALG} (ima-ng) is supported")
    if ima.get("ignored_keyrings") or doc["keyrings"] or doc["ima-buf"]:
        raise PolicyError("keyrings and ima-buf measurements are not supported")
    if doc["verification-keys"]:
        raise PolicyError("verification-keys (IMA signatures) are not supported")
    timestamp = meta.get("timestamp", "")
    return RuntimePolicy(digests, tuple(excludes), release, str(timestamp))


def to_doc(policy: RuntimePolicy) -> dict[str, Any]:
    meta: dict[str, Any] = {"version": VERSION, "generator": 0}
    if policy.timestamp:
        meta["timestamp"] = policy.timestamp
    return {
        "meta": meta,
        "release": policy.release,
        "digests": {p: sorted(d.hex() for d in ds) for p, ds in sorted(policy.digests.items())},
        "excludes": list(policy.excludes),
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": LOG_HASH_ALG, "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


def dump(policy: RuntimePolicy) -> str:
    """Canonical JSON text (sorted keys, one trailing newline): equal policies, equal bytes."""
    return json.dumps(to_doc(policy), indent=1, sort_keys=True) + "\n"
