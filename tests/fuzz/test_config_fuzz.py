"""Random YAML and random documents: ConfigError or a Config, nothing else."""

import contextlib

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.node.config import Config, ConfigError, config_from_mapping, load_config

SECTIONS = ["security", "network", "exit_nodes", "obfuscation", "atomic_time", "endpoints"]
KEYS = [
    "key_rotation_interval",
    "post_quantum_mode",
    "mtu",
    "layer",
    "hops",
    "cover_traffic",
    "sources",
    "listen",
    "connect",
    "path",
    "vlan_allow",
    "workers",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["10s", "1h", "aggressive", "hybrid", "/dev/ttyUSB0", "0.0.0.0:1"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*KEYS, "rubidium", "cesium"]), inner, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(
    st.sampled_from([*SECTIONS, "version", "junk"]),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=4) | values,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_random_documents(doc):
    try:
        assert isinstance(config_from_mapping(doc), Config)
    except ConfigError as exc:
        assert ":" in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | documents.map(lambda d: yaml.safe_dump(d).encode()))
def test_random_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path, env={})
