import json

import pytest

from attestation import policy
from attestation.errors import PolicyError


def test_dump_parse_round_trip(golden):
    assert policy.parse(policy.dump(golden)) == golden


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"version": 2}, "version"),
        ({"version": 1, "max_age_s": -1}, "max_age_s"),
        ({"version": 1, "max_age_s": True}, "max_age_s"),
        ({"version": 1, "pcrs": {"24": "00" * 32}}, "'24'"),
        ({"version": 1, "pcrs": {"x": "00" * 32}}, "'x'"),
        ({"version": 1, "pcrs": {"23": "00" * 32}}, "manifest"),
        ({"version": 1, "pcrs": {"7": "00" * 31}}, "pcrs.7"),
        ({"version": 1, "pcrs": {"7": "zz" * 32}}, "pcrs.7"),
        ({"version": 1, "manifest": {"node-id": "00" * 32}}, "node-id"),
        ({"version": 1, "manifest": {"config": 5}}, "manifest.config"),
        ({"version": 1, "pcrs": []}, "JSON objects"),
    ],
)
def test_errors_name_the_field(doc, field):
    with pytest.raises(PolicyError, match=field):
        policy.parse(json.dumps(doc))


def test_not_json():
    with pytest.raises(PolicyError, match="not JSON"):
        policy.parse(b"\xff{")
    with pytest.raises(PolicyError, match="object"):
        policy.parse("[]")
