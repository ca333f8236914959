"""Keylime-layout runtime policies: load, validate, dump, judge an entry."""

from __future__ import annotations

import hashlib
import json

import pytest

from attestation import runtime_policy as rp
from attestation.errors import PolicyError

A = hashlib.sha256(b"a").digest()
B = hashlib.sha256(b"b").digest()


def keylime_doc() -> dict:
    """What keylime_create_policy writes (version 1)."""
    return {
        "meta": {"version": 1, "generator": 1, "timestamp": "2026-11-30 07:00:00"},
        "release": 3,
        "digests": {
            "/usr/bin/python3.11": [A.hex()],
            "/etc/shadowmesh/exit.yaml": [A.hex(), B.hex()],
        },
        "excludes": ["/tmp/.*", "^/var/log/"],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


def test_loads_a_keylime_policy_and_dumps_it_back():
    policy = rp.parse(json.dumps(keylime_doc()))
    assert policy.release == 3
    assert policy.digests["/etc/shadowmesh/exit.yaml"] == {A, B}
    again = rp.parse(rp.dump(policy))
    assert again == policy and rp.dump(again) == rp.dump(policy)
    assert json.loads(rp.dump(policy)).keys() == keylime_doc().keys()
    assert policy.hash() == hashlib.sha256(rp.dump(policy).encode()).digest()


def test_check_names_the_path():
    policy = rp.parse(json.dumps(keylime_doc()))
    assert policy.check("/usr/bin/python3.11", A) is None
    assert policy.check("/etc/shadowmesh/exit.yaml", B) is None
    assert policy.check("/tmp/anything", B) is None  # excluded
    assert policy.check("/var/log/x", B) is None
    changed = policy.check("/usr/bin/python3.11", B)
    assert changed is not None and changed.startswith("/usr/bin/python3.11 has digest")
    assert policy.check("/opt/evil.py", A) == "/opt/evil.py is not in the runtime policy"
    # Keylime matches excludes at the start of the path only.
    assert policy.check("/home/tmp/x", A) == "/home/tmp/x is not in the runtime policy"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("digests"), "lacks digests"),
        (lambda d: d["meta"].update(version=2), "meta.version"),
        (lambda d: d.update(release=-1), "release"),
        (lambda d: d["digests"].update({"relative": [A.hex()]}), "absolute path"),
        (lambda d: d["digests"].update({"/x": ["abcd"]}), "SHA-256"),
        (lambda d: d["digests"].update({"/x": []}), "non-empty"),
        (lambda d: d.update(excludes=["("]), "regular expression"),
        (lambda d: d.update(excludes=[1]), "regular expressions"),
        (lambda d: d["ima"].update(log_hash_alg="sha256"), "log_hash_alg"),
        (lambda d: d.update(keyrings={"ring": ["ab"]}), "keyrings"),
        (lambda d: d.update({"verification-keys": "k"}), "verification-keys"),
    ],
)
def test_invalid_policies_are_refused(change, message):
    doc = keylime_doc()
    change(doc)
    with pytest.raises(PolicyError, match=message):
        rp.parse(json.dumps(doc))


def test_not_json():
    with pytest.raises(PolicyError):
        rp.parse(b"\xff")
    with pytest.raises(PolicyError):
        rp.parse("[]")
