import json

import pytest

from attestation import policy
from attestation.errors import PolicyError

RUNTIME = {
    "meta": {"version": 1, "generator": 0},
    "release": 0,
    "digests": {"/usr/bin/python3": ["00" * 32]},
    "excludes": [],
    "keyrings": {},
    "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
    "ima-buf": {},
    "verification-keys": "",
}


def test_dump_parse_round_trip(golden):
    assert policy.parse(policy.dump(golden)) == golden
    assert policy.dump(policy.parse(policy.dump(golden))) == policy.dump(golden)


def test_default_cmdline_requirements_turn_ima_on():
    parsed = policy.parse(json.dumps({"version": 2, "runtime_policy": RUNTIME}))
    assert "ima_policy=tcb" in parsed.boot.cmdline_requires
    assert "ima_template=ima-ng" in parsed.boot.cmdline_requires


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"version": 1}, "version"),
        ({"version": 2}, "runtime_policy"),
        ({"version": 2, "max_age_s": -1}, "max_age_s"),
        ({"version": 2, "max_age_s": True}, "max_age_s"),
        ({"version": 2, "boot": {"pcrs": {"10": "00" * 32}}}, "'10'"),
        ({"version": 2, "boot": {"pcrs": {"23": "00" * 32}}}, "'23'"),
        ({"version": 2, "boot": {"pcrs": {"x": "00" * 32}}}, "'x'"),
        ({"version": 2, "boot": {"pcrs": {"7": "00" * 31}}}, "boot.pcrs.7"),
        ({"version": 2, "boot": {"kernel_cmdline_requires": ["a b"]}}, "kernel_cmdline"),
        ({"version": 2, "boot": []}, "boot"),
        ({"version": 2, "runtime_policy": {}}, "lacks"),
    ],
)
def test_errors_name_the_field(doc, field):
    if field != "runtime_policy":
        doc.setdefault("runtime_policy", RUNTIME)
    with pytest.raises(PolicyError, match=field):
        policy.parse(json.dumps(doc))


def test_not_json():
    with pytest.raises(PolicyError, match="not JSON"):
        policy.parse(b"\xff{")
    with pytest.raises(PolicyError, match="object"):
        policy.parse("[]")
