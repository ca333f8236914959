import dataclasses
from pathlib import Path

import pytest

import l2bridge
from l2bridge.node.config import (
    Config,
    ConfigError,
    CoverTraffic,
    config_from_mapping,
    ensure_startable,
    load_config,
    parse_duration,
    problems,
)

EXAMPLES = Path(l2bridge.__file__).parent / "examples"


def test_personal():
    config = load_config(EXAMPLES / "personal.yaml", env={})
    assert config.version == "1.0"
    assert config.security.key_rotation_interval == 3600
    assert config.network.mtu == 1400
    assert config.obfuscation.cover_traffic is CoverTraffic.ON
    assert ensure_startable(config) == []  # cover traffic is generated now


def test_enterprise():
    config = load_config(EXAMPLES / "enterprise.yaml", env={})
    assert config.security.key_rotation_interval == 60
    assert config.network.mtu == 9000
    assert [(s.kind, s.device) for s in config.atomic_time.sources] == [
        ("rubidium", "/dev/ttyUSB0"),
        ("gpsdo", "/dev/ttyUSB1"),
    ]
    assert config.atomic_time.quorum == 3
    fields = {p.field: p.refuse for p in problems(config)}
    # 3 hops: multi-hop circuits are built (l2bridge.client.circuit), nothing refused.
    assert config.exit_nodes.multi_hop and config.exit_nodes.hops == 3
    assert "exit_nodes.multi_hop" not in fields and "exit_nodes.hops" not in fields
    # Regions come from the registry (declared by each exit), so diversity needs no file.
    assert "exit_nodes.geographic_diversity" not in fields
    assert fields["atomic_time.consensus_quorum"] is False  # 3 of 2 sources
    assert "exit_nodes.geographic_diversity" not in {p.field for p in ensure_startable(config)}


def test_ultra_secure_refuses_without_sgx():
    config = load_config(EXAMPLES / "ultra-secure.yaml", env={})
    assert config.security.post_quantum_mode == "pqc_only"
    assert config.security.key_rotation_interval == 10
    assert config.obfuscation.cover_traffic is CoverTraffic.AGGRESSIVE
    first = config.atomic_time.sources[0]
    assert (first.kind, first.device, first.baudrate) == ("cesium", "/dev/ttyUSB0", 115200)
    assert config.logging.retention == 7 * 86400
    with pytest.raises(ConfigError, match=r"security\.sgx_enclave: Intel SGX") as info:
        ensure_startable(config)
    # SGX is the only refusal left: 5 hops are built since multi-hop circuits exist.
    assert "multi_hop" not in str(info.value) and "exit_nodes.hops" not in str(info.value)
    assert config.exit_nodes.hops == 5
    without_sgx = dataclasses.replace(
        config, security=dataclasses.replace(config.security, sgx_enclave=False)
    )
    assert all(not p.refuse for p in ensure_startable(without_sgx))


def test_hop_counts_outside_circuits_are_refused():
    for section, field in (
        ({"multi_hop": True, "hops": 6}, "exit_nodes.hops"),
        ({"multi_hop": True, "hops": 1}, "exit_nodes.hops"),
        ({"multi_hop": False, "hops": 3}, "exit_nodes.hops"),
    ):
        config = config_from_mapping({"exit_nodes": section}, env={})
        with pytest.raises(ConfigError, match=field):
            ensure_startable(config)


def test_runnable_examples_start_and_resolve_paths():
    exit_cfg = load_config(EXAMPLES / "exit.yaml", env={})
    assert ensure_startable(exit_cfg, role="exit") == []  # every setting is read by an exit
    assert exit_cfg.endpoints.listen == ("0.0.0.0", 8443)
    assert exit_cfg.endpoints.access_key_file == EXAMPLES / "keys/access.key"
    assert exit_cfg.keys.credentials == EXAMPLES / "keys/credentials.json"
    client_cfg = load_config(EXAMPLES / "client.yaml", env={})
    assert ensure_startable(client_cfg, role="client") == []
    assert client_cfg.endpoints.connect == "wss://exit.example.net:8443/ws"
    assert client_cfg.endpoints.credential_file == EXAMPLES / "keys/credentials.json"


@pytest.mark.parametrize(
    ("value", "mode"),
    [(True, "software"), (False, "off"), ("kernel", "kernel"), ("off", "off"), ("auto", "auto")],
)
def test_gro_takes_true_false_or_a_mode(value, mode):
    assert config_from_mapping(None).network.gro == "auto"  # the default
    assert config_from_mapping({"network": {"gro": value}}).network.gro == mode
    env = {"SHADOWMESH_NETWORK__GRO": str(value).lower()}
    assert config_from_mapping(None, env=env).network.gro == mode


def test_defaults_and_environment_layer():
    assert config_from_mapping(None) == Config()
    config = config_from_mapping(
        {"security": {"key_rotation_interval": "1h"}},
        env={
            "SHADOWMESH_SECURITY__KEY_ROTATION_INTERVAL": "10s",
            "SHADOWMESH_NETWORK__MTU": "9000",
            "SHADOWMESH_NETWORK__VLAN_ALLOW": "[10, 20]",
            "UNRELATED": "x",
        },
    )
    assert config.security.key_rotation_interval == 10
    assert config.network.mtu == 9000
    assert config.network.vlan_allow == (10, 20)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"security": {"key_rotation_interval": "soon"}},
            "security.key_rotation_interval: expected a duration like 10s, 1m or 1h, got 'soon'",
        ),
        ({"security": {"key_rotation_interval": "0s"}}, "security.key_rotation_interval: must"),
        ({"security": {"post_quantum_mode": "rsa"}}, "security.post_quantum_mode: expected one"),
        ({"security": {"attestation_required": "yes"}}, "security.attestation_required: expected"),
        ({"network": {"layer": 3}}, "network.layer: must be from 2 to 2"),
        ({"network": {"mtu": 100}}, "network.mtu: must be from 576"),
        ({"network": {"mtu": "big"}}, "network.mtu: expected an integer"),
        ({"network": {"vlan_allow": [1, 5000]}}, r"network.vlan_allow\[1\]: must be"),
        ({"network": {"tap": "a" * 16}}, "network.tap: expected an interface name"),
        ({"network": {"colour": "red"}}, "network.colour: unknown setting"),
        ({"exit_nodes": {"min_reputation": 1001}}, "exit_nodes.min_reputation: must"),
        ({"obfuscation": {"protocol": "dns"}}, "obfuscation.protocol: expected one of websocket"),
        ({"obfuscation": {"cover_traffic": "loud"}}, "obfuscation.cover_traffic: expected"),
        ({"atomic_time": {"sources": [{"sundial": "/dev/x"}]}}, r"atomic_time.sources\[0\]"),
        (
            {"atomic_time": {"sources": [{"rubidium": "ttyUSB0"}]}},
            r"atomic_time.sources\[0\]: a device path",
        ),
        (
            {"atomic_time": {"sources": [{"kind": "gpsdo", "device": "/dev/x", "baud": 9600}]}},
            r"atomic_time.sources\[0\]: unknown setting 'baud'",
        ),
        (
            {"atomic_time": {"enabled": "yes"}},
            r"atomic_time.enabled: true or false",
        ),
        (
            {"atomic_time": {"fallback": "pray"}},
            r"atomic_time.fallback: one of holdover",
        ),
        ({"endpoints": {"listen": "nowhere"}}, "endpoints.listen: expected an address"),
        ({"endpoints": {"connect": "http://x/ws"}}, "endpoints.connect: expected a ws://"),
        ({"endpoints": {"path": "ws"}}, "endpoints.path: expected a URL path"),
        ({"endpoints": {"exit_node_id": "abcd"}}, "endpoints.exit_node_id: expected a 32-byte"),
        ({"chain": {"contract_address": "0x12"}}, "chain.contract_address: expected"),
        ({"tpm": {"pcr": 23}}, "tpm.pcr: no longer a setting"),
        ({"tpm": {"ak_public": "ak.pub"}}, "tpm.ak_public: no longer a setting"),
        ({"security": {"tunnels_per_device": 0}}, "security.tunnels_per_device: must be from"),
        ({"security": ["a"]}, "security: expected a mapping"),
        ({"security": {"pq_backend": "openssl"}}, "security.pq_backend: expected one of"),
        ({"security": {"reauth_interval": "0s"}}, "security.reauth_interval"),
        ({"network": {"gateway_ips": ["10.0.0.300"]}}, r"network.gateway_ips\[0\]: expected an"),
        ({"network": {"gateway_ips": "10.0.0.1"}}, "network.gateway_ips: expected a list"),
        (
            {"network": {"gro": "linux"}},
            "network.gro: expected true, false or one of auto, software",
        ),
        ({"network": {"gro": 1}}, "network.gro: expected true, false"),
        ({"network": {"workers": "many"}}, "network.workers: expected an integer from 1 to 64 or"),
        ({"network": {"workers": 0}}, "network.workers: must be from 1 to 64"),
        ({"network": {"workers": True}}, "network.workers: expected an integer"),
        ({"bogus": {}}, "bogus: unknown section"),
        ({"version": 2}, "version: only configuration version 1"),
        ([1, 2], r"\(top level\): expected a mapping"),
    ],
)
def test_invalid_values_name_field_and_reason(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(data)


def test_workers_may_be_left_to_the_cores():
    assert config_from_mapping({"network": {"workers": "auto"}}).network.workers == "auto"
    env = {"SHADOWMESH_NETWORK__WORKERS": "auto"}
    assert config_from_mapping({}, env=env).network.workers == "auto"
    assert config_from_mapping({"network": {"workers": 3}}).network.workers == 3


def test_environment_errors_name_the_variable():
    with pytest.raises(ConfigError, match="SHADOWMESH_NOPE__X: unknown section"):
        config_from_mapping({}, env={"SHADOWMESH_NOPE__X": "1"})
    with pytest.raises(ConfigError, match=r"security\.key_rotation_interval"):
        config_from_mapping({}, env={"SHADOWMESH_SECURITY__KEY_ROTATION_INTERVAL": "soon"})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("security: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m", 60), ("1h", 3600), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


def test_isolation_settings():
    cfg = config_from_mapping(
        {
            "security": {"pq_backend": "liboqs", "reauth_interval": "30s"},
            "network": {"gateway_ips": ["10.0.0.1", "FE80::1"], "service_tags": True},
        }
    )
    assert (cfg.security.pq_backend, cfg.security.reauth_interval) == ("liboqs", 30.0)
    assert cfg.network.gateway_ips == ("10.0.0.1", "fe80::1")
    assert cfg.network.service_tags
    default = config_from_mapping({})
    assert default.security.pq_backend == "cryptography" and default.network.gateway_ips == ()


def test_fault_settings_parse_and_check() -> None:
    cfg = config_from_mapping(
        {
            "network": {"mac": "02:aa:bb:cc:dd:ee"},
            "endpoints": {"keepalive_interval": "2s", "liveness_timeout": "6s"},
            "tpm": {"timeout": "500ms"},
        }
    )
    assert cfg.network.mac == bytes.fromhex("02aabbccddee")
    assert (cfg.endpoints.keepalive_interval, cfg.endpoints.liveness_timeout) == (2.0, 6.0)
    assert cfg.tpm.timeout == 0.5
    with pytest.raises(ConfigError, match=r"network\.mac"):
        config_from_mapping({"network": {"mac": "01:00:5e:00:00:01"}})
    with pytest.raises(ConfigError, match="liveness_timeout: must be at least twice"):
        config_from_mapping({"endpoints": {"keepalive_interval": "5s", "liveness_timeout": "6s"}})


def test_front_door_settings():
    defaults = config_from_mapping({}).endpoints
    # Debian nginx's timers, so the built-in decoy times out like a stock server.
    assert (defaults.header_timeout, defaults.keepalive_timeout, defaults.send_timeout) == (
        60.0, 65.0, 60.0,
    )  # fmt: skip
    assert defaults.fallback is None
    assert defaults.decoy_gzip is True  # Debian's nginx.conf: gzip on
    assert (defaults.max_connections, defaults.max_connections_per_source) == (4096, 256)
    ep = config_from_mapping(
        {
            "endpoints": {
                "fallback": "127.0.0.1:8080",
                "keepalive_timeout": "75s",
                "max_connections_per_source": 16,
            }
        }
    ).endpoints
    assert (ep.fallback, ep.keepalive_timeout, ep.max_connections_per_source) == (
        ("127.0.0.1", 8080), 75.0, 16,
    )  # fmt: skip
    for bad, message in (
        ({"fallback": "nginx"}, "endpoints.fallback: expected an address"),
        ({"fallback": "127.0.0.1:0"}, "endpoints.fallback: expected the web server's address"),
        ({"max_connections": 0}, "endpoints.max_connections: must"),
        ({"send_timeout": "forever"}, "endpoints.send_timeout: expected a duration"),
    ):
        with pytest.raises(ConfigError, match=message):
            config_from_mapping({"endpoints": bad})
