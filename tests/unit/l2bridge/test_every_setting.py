"""Every configuration field changes behaviour or is refused (issue: no silent settings).

``CHECKS`` has one entry per field of ``l2bridge.node.config.Config``: either a function
that sets the field and asserts what changes (or that it is refused or warned about), or
the test elsewhere that proves it against running components ("path::test_name", checked
to exist here). A field added to Config without an entry fails this test, and so does a
field missing from ``FIELD_ROLES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitnode.attested import AttestedExit
from exitnode.errors import ExitConfigError
from exitnode.server import ExitNode, ExitOptions
from l2bridge.client import layers
from l2bridge.client import node as client_node
from l2bridge.client.node import ClientNode
from l2bridge.commands.common import setup_logging
from l2bridge.commands.initfiles import write_private_tls
from l2bridge.constants import Mode
from l2bridge.errors import HelloRefused, NotAuthorized
from l2bridge.identity.keyfiles import load_certificate, save_allow_list, save_revocations
from l2bridge.identity.keys import AllowList, HybridSigningKey, save_public, write_private_file
from l2bridge.node import audit as audit_log
from l2bridge.node.config import (
    FIELD_ROLES,
    Config,
    ConfigError,
    ensure_startable,
    load_config,
    role_problems,
)
from l2bridge.node.credfiles import save_table
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import TunnelClock
from l2bridge.protocol.handshake import ClientHandshake, ClientHello
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.transport.admission import AdmissionLedger
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.token import MasterKey
from lab import provision

ROOT = Path(__file__).resolve().parents[3]


class World:
    """A provisioned exit and client (lab.provision) whose YAML each check may change."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = directory
        self.mp = monkeypatch
        self.lab = provision.provision(directory, exit_host="127.0.0.1", port=18443)

    def _load(self, path: Path, changes: dict[str, dict[str, Any]]) -> Config:
        doc = yaml.safe_load(path.read_text())
        for section, values in changes.items():
            if section == "version":
                doc["version"] = values
            else:
                doc.setdefault(section, {}).update(values)
        out = self.dir / f"changed-{path.name}"
        out.write_text(yaml.safe_dump(doc))
        return load_config(out, env={})

    def exit_cfg(self, **changes: dict[str, Any]) -> Config:
        return self._load(self.lab.exit_config, changes)

    def client_cfg(self, **changes: dict[str, Any]) -> Config:
        return self._load(self.lab.client_configs["client"], changes)

    def exit(self, **changes: dict[str, Any]) -> ExitNode:
        return ExitNode(self.exit_cfg(**changes), ExitOptions(status=False))

    def client(self, **changes: dict[str, Any]) -> ClientNode:
        return ClientNode(self.client_cfg(**changes), status=False)


def refused(world: World, section: str, key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ensure_startable(world.exit_cfg(**{section: {key: value}}))


def warned(world: World, section: str, key: str, value: object) -> None:
    cfg = world.exit_cfg(**{section: {key: value}})
    assert f"{section}.{key}" in {p.field for p in ensure_startable(cfg)}
    assert f"{section}.{key}" not in {p.field for p in ensure_startable(world.exit_cfg())}


def _differs(read: Callable[[Any], object], a: Any, b: Any) -> None:
    assert read(a) != read(b)


# --- checks -----------------------------------------------------------------------------


def version(w: World) -> None:
    with pytest.raises(ConfigError, match="only configuration version 1"):
        w.exit_cfg(version="2")


def key_rotation_interval(w: World) -> None:
    assert w.exit(security={"key_rotation_interval": "10s"}).session_config.rekey_interval == 10
    assert w.client(security={"key_rotation_interval": "10s"}).session_config.rekey_interval == 10


def post_quantum_mode(w: World) -> None:
    assert w.exit(security={"post_quantum_mode": "classical"}).mode is Mode.CLASSICAL
    assert w.client(security={"post_quantum_mode": "pqc_only"}).mode is Mode.PQC_ONLY


def attestation_required(w: World) -> None:
    pinned = w.client_cfg(security={"attestation_required": True})
    with pytest.raises(ConfigError, match="golden_policy"):
        ensure_startable(pinned)
    cfg = w.exit_cfg(security={"attestation_required": True}, tpm={"tcti": "swtpm:port=1"})
    with pytest.raises(Exception, match="no AK"):
        AttestedExit.from_config(cfg, b"\0" * 32, Metrics("exit"), public_url="ws://h:1/ws",
                                 state_dir=w.dir / "state")  # fmt: skip


def sgx_enclave(w: World) -> None:
    refused(w, "security", "sgx_enclave", True, "SGX")


def network_layer(w: World) -> None:
    with pytest.raises(ConfigError, match=r"network\.layer"):
        w.exit_cfg(network={"layer": 3})


def network_mtu(w: World) -> None:
    assert w.exit(network={"mtu": 9000}).tap_config.mtu == 9000
    hellos: list[ClientHello] = []

    async def no_network(url: str, handshake: Any, **kwargs: Any) -> Any:
        hellos.append(ClientHello.decode(handshake.hello()))
        raise OSError("not dialled in this test")

    w.mp.setattr(client_node.tunnel, "connect", no_network)
    with pytest.raises(OSError):
        asyncio.run(w.client(network={"mtu": 1400}).connect())
    assert hellos[0].mtu == 1400  # the exit compares it with its own and warns


def min_reputation(w: World) -> None:
    w.mp.setattr(layers, "load_policy", lambda *args: "policy")
    cfg = w.client_cfg(
        endpoints={"exit_node_id": None}, exit_nodes={"min_reputation": 900},
        chain={"rpc_url": "http://127.0.0.1:1", "contract_address": "0x" + "11" * 20},
    )  # fmt: skip
    settings = types.SimpleNamespace(policy="policy")
    finder = layers.registry_finder(cfg, lambda p: settings, Metrics("client"), TunnelClock(None))
    assert finder is not None and finder.selection.min_reputation == 900


def network_tap(w: World) -> None:
    assert w.exit(network={"tap": "other0"}).tap_config.name == "other0"


def network_vnet_hdr(w: World) -> None:
    assert w.exit(network={"vnet_hdr": False}).tap_config.offload is False


def network_gro(w: World) -> None:
    assert w.exit(network={}).tap_config.coalesce is True
    assert w.exit(network={"gro": False}).tap_config.coalesce is False
    # kernel: the software merging stays on for what Linux leaves unmerged
    assert w.exit(network={"gro": "kernel", "bridge": "br0"}).tap_config.coalesce is True
    with pytest.raises(ExitConfigError, match=r"network\.gro: kernel needs network\.bridge"):
        w.exit(network={"gro": "kernel", "bridge": None})
    with pytest.raises(ExitConfigError, match=r"needs network\.vnet_hdr: true"):
        w.exit(network={"gro": "kernel", "bridge": "br0", "vnet_hdr": False})
    node = w.client(network={"gro": "kernel", "bridge": None})
    with pytest.raises(ConfigError, match=r"network\.gro: kernel needs network\.bridge"):
        node._open_tap()
    # auto (the default): the merging port wherever it can work, software GRO elsewhere
    assert w.exit(network={"bridge": "br0"}).gro == "kernel"
    assert w.exit(network={"bridge": None}).gro == "software"
    assert w.exit(network={"bridge": "br0", "vnet_hdr": False}).gro == "software"
    assert w.exit(network={"bridge": "br0", "tap": "shadowmesh-lan"}).gro == "software"
    assert w.exit(network={"bridge": "br0", "gro": True}).gro == "software"
    assert w.exit(network={"bridge": "br0", "gro": False}).gro == "off"


def network_rps(w: World) -> None:
    assert w.exit().tap_config.rps is False
    assert w.exit(network={"rps": True}).tap_config.rps is True
    opened: list[Any] = []

    def open_tap(config: Any) -> Any:
        opened.append(config)
        raise client_node.TapError("not here")

    w.mp.setattr(client_node, "open_tap", open_tap)
    with pytest.raises(ConfigError, match="not here"):
        w.client(network={"rps": True, "bridge": None})._open_tap()
    assert opened[0].rps is True
    refused(w, "network", "rps", "yes", "network.rps")


def network_vlan_allow(w: World) -> None:
    assert w.exit(network={"vlan_allow": [10, 20]}).default_policy.vlans == frozenset({10, 20})
    assert w.exit().default_policy.vlans is None


def lan_interfaces(w: World) -> None:
    node = w.client(network={"lan_interfaces": ["eth1"], "bridge": None})
    with pytest.raises(ConfigError, match=r"network\.lan_interfaces: needs network\.bridge"):
        node._open_tap()


def multi_hop(w: World) -> None:
    refused(w, "exit_nodes", "multi_hop", True, "multi-hop")


def hops(w: World) -> None:
    refused(w, "exit_nodes", "hops", 3, "more than one hop needs exit_nodes.multi_hop")
    with pytest.raises(ConfigError, match="multi-hop circuits have 2 to 5 hops"):
        ensure_startable(w.exit_cfg(exit_nodes={"multi_hop": True, "hops": 7}))


def chain_region(w: World) -> None:
    with pytest.raises(ConfigError, match=r"chain\.region: 'Berlin' is not a region"):
        w.exit_cfg(chain={"region": "Berlin"})
    assert w.exit_cfg(chain={"region": "DE-BE"}).chain.region == "DE-BE"


def relay_certificate(w: World) -> None:
    with pytest.raises((ConfigError, ExitConfigError), match=r"keys\.relay_certificate"):
        w.exit(keys={"relay_certificate": str(w.dir / "missing.cert")})


def diversity(key: str) -> Callable[[World], None]:
    return lambda w: warned(w, "exit_nodes", key, True)


def obfuscation_enabled(w: World) -> None:
    warned(w, "obfuscation", "enabled", False)


def obfuscation_protocol(w: World) -> None:
    with pytest.raises(ConfigError, match=r"obfuscation\.protocol"):
        w.exit_cfg(obfuscation={"protocol": "http2"})


def cover_traffic(w: World) -> None:
    assert w.exit().cover is None
    assert w.exit(obfuscation={"cover_traffic": "on"}).cover is not None


def advanced_stego(w: World) -> None:
    warned(w, "obfuscation", "advanced_stego", True)


def padding(w: World) -> None:
    _differs(lambda n: n.session_config.pad_to, w.exit(obfuscation={"padding": 0}), w.exit())


def shaping(w: World) -> None:
    assert w.exit().shaping is None
    plan = w.exit(obfuscation={"shaping": "browser"}).shaping
    assert plan is not None and plan.shaper(False) is not None
    cfg = w.exit_cfg(obfuscation={"shaping": "sizes", "enabled": False})
    assert "obfuscation.shaping" in {p.field for p in ensure_startable(cfg)}


def lan_chatter(w: World) -> None:
    assert w.client().shaping is None
    plan = w.client(obfuscation={"lan_chatter": "aggregate"}).shaping
    assert plan is not None and plan.chatter_filter(True) is not None
    assert plan.shaper(True) is None  # chatter only: records are not reshaped
    cfg = w.exit_cfg(obfuscation={"lan_chatter": "aggregate"})
    assert "obfuscation.lan_chatter" in {p.field for p in ensure_startable(cfg, "exit")}


def atomic_time(w: World) -> None:
    assert w.client().clock_sources == []
    on = w.client(atomic_time={"enabled": True, "sources": ["system"]})
    assert len(on.clock_sources) == 1


def logging_level(w: World) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        setup_logging(w.exit_cfg(logging={"level": "error"}).logging.level)
        assert root.level == logging.ERROR
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def logging_audit(w: World) -> None:
    cfg = w.exit_cfg(logging={"audit": True})
    try:
        setup_logging(cfg.logging.level, audit=cfg.logging.audit)
        assert not audit_log.AUDIT.disabled
        setup_logging(cfg.logging.level, audit=w.exit_cfg().logging.audit)
        assert audit_log.AUDIT.disabled
    finally:
        audit_log.configure(False)


def siem_export(w: World) -> None:
    warned(w, "logging", "siem_export", True)


def retention(w: World) -> None:
    warned(w, "logging", "retention", "7d")


def listen(w: World) -> None:
    with pytest.raises(ExitConfigError, match=r"endpoints\.listen: required"):
        w.exit(endpoints={"listen": None})


def connect(w: World) -> None:
    assert w.client(endpoints={"connect": "ws://192.0.2.9:80/x"}).url == "ws://192.0.2.9:80/x"


def path(w: World) -> None:
    assert w.exit(endpoints={"path": "/chat"}).settings.ws_path == "/chat"
    assert w.client(endpoints={"connect": "ws://h:1", "path": "/chat"}).url == "ws://h:1/chat"


def access_key_file(w: World) -> None:
    with pytest.raises(ExitConfigError, match=r"endpoints\.access_key_file"):
        w.exit(endpoints={"access_key_file": "missing.key"})
    other = MasterKey.generate()
    write_private_file(w.dir / "other.key", other.to_text() + "\n")
    assert w.exit(endpoints={"access_key_file": "other.key"}).master_key == other
    assert w.exit().master_key != other


def credential_file(w: World) -> None:
    with pytest.raises(ConfigError, match=r"endpoints\.credential_file"):
        w.client(endpoints={"credential_file": "missing.json"})
    assert w.client().credentials.for_exit(w.lab.exit_node_id) is not None
    # A relaying exit's own credentials for the hops it extends to.
    assert w.exit().relay_credentials is None
    relay = w.exit(endpoints={"credential_file": "client.credentials.json"}).relay_credentials
    assert relay is not None and relay.for_exit(w.lab.exit_node_id) is not None


def exit_node_id(w: World) -> None:
    assert w.client().exit_node_id == w.lab.exit_node_id
    with pytest.raises(ConfigError, match=r"no credential for endpoints\.exit_node_id"):
        w.client(endpoints={"exit_node_id": "ab" * 32})


def handshake_quotas(w: World) -> None:
    verifier = w.exit(endpoints={"handshakes_per_device": 7, "handshakes_per_source": 9}).verifier
    ledger = verifier.ledger
    assert isinstance(ledger, AdmissionLedger)
    assert (ledger.device_quota.per_minute, ledger.source_quota.per_minute) == (7, 9)


def credentials_table(w: World) -> None:
    assert len(w.exit().verifier.table) == 1  # the provisioned client's credential
    save_table(CredentialTable(), w.dir / "empty.json")
    assert len(w.exit(keys={"credentials": "empty.json"}).verifier.table) == 0
    with pytest.raises(ExitConfigError, match=r"keys\.credentials"):
        w.exit(keys={"credentials": None})


def tls(w: World) -> None:
    write_private_tls(w.dir / "tls", "127.0.0.1")
    node = w.exit(endpoints={"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem"})
    assert node.tls is not None and w.exit().tls is None
    with pytest.raises(ExitConfigError, match="set both or neither"):
        w.exit(endpoints={"tls_cert": "tls/cert.pem"})


def tls_ca(w: World) -> None:
    write_private_tls(w.dir / "tls2", "127.0.0.1")
    assert w.client(endpoints={"tls_ca": "tls2/ca.pem"}).tls.get_ca_certs()
    with pytest.raises(ConfigError, match=r"endpoints\.tls_ca"):
        w.client(endpoints={"tls_ca": "nothing.pem"})


def tls_impersonate(w: World) -> None:
    assert w.client().impersonate is None
    assert w.client(endpoints={"tls_impersonate": "chrome"}).impersonate == ("chrome", None)
    with pytest.raises(ConfigError, match=r"endpoints\.tls_impersonate"):
        w.client_cfg(endpoints={"tls_impersonate": "netscape"})
    # The link it opens: tests/integration/l2bridge/test_link_impersonate.py


def decoy_dir(w: World) -> None:
    site = w.dir / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<html>our page</html>")
    _differs(lambda n: n.settings.site, w.exit(endpoints={"decoy_dir": "site"}), w.exit())


def server_header(w: World) -> None:
    assert w.exit(endpoints={"server_header": "Apache"}).settings.site.server == "Apache"


def token_window(w: World) -> None:
    node = w.exit(endpoints={"token_window": "30s"})
    assert node.settings.verifier is not None
    assert node.settings.verifier._window_s == 30


def header_timeout(w: World) -> None:
    assert w.exit(endpoints={"header_timeout": "2s"}).settings.header_timeout == 2


def front_door_timers(w: World) -> None:
    settings = w.exit(endpoints={"keepalive_timeout": "7s", "send_timeout": "9s"}).settings
    timeouts = settings.decoy_timeouts()
    assert (timeouts.keepalive, timeouts.send) == (7, 9)


def fallback(w: World) -> None:
    assert w.exit(endpoints={"fallback": "127.0.0.1:8080"}).settings.fallback == (
        "127.0.0.1",
        8080,
    )
    assert w.exit().settings.fallback is None
    with pytest.raises(ExitConfigError, match=r"endpoints\.fallback: must be another server"):
        w.exit(endpoints={"fallback": "127.0.0.1:18443"})  # the exit's own listen address


def decoy_gzip(w: World) -> None:
    assert w.exit().settings.site._gzip is True  # Debian's "gzip on"
    assert w.exit(endpoints={"decoy_gzip": False}).settings.site._gzip is False


def connection_caps(w: World) -> None:
    settings = w.exit(endpoints={"max_connections": 9, "max_connections_per_source": 3}).settings
    assert (settings.max_connections, settings.max_connections_per_source) == (9, 3)


def identity(w: World) -> None:
    key = HybridSigningKey.generate()
    key.save(w.dir / "other.identity")
    assert w.exit(keys={"identity": "other.identity"}).identity.node_id == key.node_id
    with pytest.raises(ConfigError, match=r"keys\.identity: .*No such file"):
        w.exit(keys={"identity": "missing.identity"})


def _client_key(w: World) -> tuple[Any, Any]:
    key = HybridSigningKey.load(w.dir / "client.identity")
    return key.public, load_certificate(w.dir / "client.cert")


def admin_public(w: World) -> None:
    public, cert = _client_key(w)
    assert w.exit().authorizer.authorize(public, cert, cert.issued + 60)
    other = HybridSigningKey.generate()
    save_public(other.public, w.dir / "other-admin.pub")
    with pytest.raises(NotAuthorized):
        w.exit(keys={"admin_public": "other-admin.pub"}).authorizer.authorize(
            public, cert, cert.issued + 60
        )


def certificate(w: World) -> None:
    assert w.client().certificate is not None
    assert w.client(keys={"certificate": None}).certificate is None


def allow_list(w: World) -> None:
    stranger = HybridSigningKey.generate()
    save_allow_list(AllowList(((stranger.node_id, "box"),)), w.dir / "allow.list")
    node = w.exit(keys={"allow_list": "allow.list"})
    assert node.authorizer.authorize(stranger.public, None, 0).name == "box"
    with pytest.raises(NotAuthorized):
        w.exit().authorizer.authorize(stranger.public, None, 0)


def revocations(w: World) -> None:
    public, cert = _client_key(w)
    rl = w.lab.admin.revoke(None, cert.serial, "lost", cert.issued)
    save_revocations(rl, w.dir / "revoked.list")
    with pytest.raises(NotAuthorized):
        w.exit(keys={"revocations": "revoked.list"}).authorizer.authorize(
            public, cert, cert.issued + 60
        )


def ak_context(w: World) -> None:
    cfg = w.exit_cfg(security={"attestation_required": True},
                     tpm={"ak_context": "elsewhere/ak.json"})  # fmt: skip
    with pytest.raises(Exception, match=re.escape(str(w.dir / "elsewhere" / "ak.json"))):
        AttestedExit.from_config(cfg, b"\0" * 32, Metrics("exit"), public_url="ws://h:1/ws",
                                 state_dir=w.dir / "state")  # fmt: skip


def golden_policy(w: World) -> None:
    cfg = w.client_cfg(
        endpoints={"exit_node_id": None},
        chain={"rpc_url": "http://127.0.0.1:1", "contract_address": "0x" + "11" * 20},
        tpm={"golden_policy": "missing-golden.json"},
    )
    with pytest.raises(ConfigError, match=r"tpm\.golden_policy: cannot read"):
        ClientNode(cfg, status=False)


def chain_mode(w: World) -> None:
    # rpc_url + contract_address without a pinned exit: the client picks from the registry
    cfg = w.client_cfg(
        endpoints={"exit_node_id": None},
        chain={"rpc_url": "http://127.0.0.1:1", "contract_address": "0x" + "11" * 20},
    )
    with pytest.raises(ConfigError, match="exits chosen from the registry"):
        ClientNode(cfg, status=False)


def role_only(path: str, value: object) -> Callable[[World], None]:
    """A setting the other role does not read is warned about there."""

    def check(w: World) -> None:
        section, key = path.split(".")
        role = "client" if FIELD_ROLES[path] == ("exit",) else "exit"
        load = w.client_cfg if role == "client" else w.exit_cfg
        assert path in {p.field for p in role_problems(load(**{section: {key: value}}), role)}

    return check


def both(*checks: Callable[[World], None]) -> Callable[[World], None]:
    def run(w: World) -> None:
        for check in checks:
            check(w)

    return run


def pq_backend(w: World) -> None:
    # liboqs's C library is absent here: choosing it is refused by name, never an exit.
    with pytest.raises(ConfigError, match=r"security\.pq_backend"):
        w.client(security={"pq_backend": "liboqs"})
    with pytest.raises(ExitConfigError, match=r"security\.pq_backend"):
        w.exit(security={"pq_backend": "liboqs"})
    assert w.exit(security={"pq_backend": "cryptography"}).backend is not None


def reauth_interval(w: World) -> None:
    assert w.exit(security={"reauth_interval": "7s"}).sessions.interval == 7
    assert w.exit().sessions.interval == 60


def quotes_per_device(w: World) -> None:
    device = HybridSigningKey.generate()

    def attested_hellos_allowed(guard: HelloGuard) -> int:
        allowed = 0
        for _ in range(8):
            hs = ClientHandshake(device, attestation_nonce=bytes(32),
                                 evidence_checker=lambda *a: None)  # fmt: skip
            with contextlib.suppress(HelloRefused):
                guard.check(hs.hello(), quota_key=b"device", now=100.0)
                allowed += 1
        return allowed

    assert attested_hellos_allowed(w.exit(tpm={"quotes_per_device": 2}).hello_guard) == 2
    assert attested_hellos_allowed(w.exit().hello_guard) == 6


def gateway_ips(w: World) -> None:
    switch = w.exit(network={"gateway_ips": ["10.9.0.1", "fd00::1"]}).switch_config()
    assert switch.protected_ips == frozenset(
        {bytes([10, 9, 0, 1]), bytes.fromhex("fd00" + "00" * 13 + "01")}
    )
    assert w.exit().switch_config().protected_ips == frozenset()


def service_tags(w: World) -> None:
    assert 0x88A8 in w.exit(network={"service_tags": True}).switch_config().tag_tpids
    assert 0x88A8 not in w.exit().switch_config().tag_tpids


def network_mac(w: World) -> None:
    node = w.exit(network={"mac": "02:aa:bb:cc:dd:ee"})
    assert node.tap_config.mac == bytes.fromhex("02aabbccddee")
    derived = w.exit().tap_config.mac
    assert derived is not None and derived == w.exit().tap_config.mac  # stable per node id
    assert derived != node.tap_config.mac


LIVE = "tests/integration/l2bridge/test_settings_live.py"
CHECKS: dict[str, Callable[[World], None] | str] = {
    "version": version,
    "security.key_rotation_interval": key_rotation_interval,
    "security.post_quantum_mode": post_quantum_mode,
    "security.attestation_required": attestation_required,
    "security.sgx_enclave": sgx_enclave,
    "security.tunnels_per_device": f"{LIVE}::test_one_tunnel_per_identity_unless_configured",
    "security.pq_backend": pq_backend,
    "security.reauth_interval": reauth_interval,
    "network.layer": network_layer,
    "network.mtu": network_mtu,
    "network.tap": network_tap,
    "network.bridge": "tests/integration/docs/test_getting_started.py::"
    "test_getting_started_runs_as_written",
    "network.vnet_hdr": network_vnet_hdr,
    "network.gro": network_gro,
    "network.rps": network_rps,
    "network.workers": "tests/integration/l2/test_exit_workers.py::"
    "test_clients_at_two_workers_switch_through_the_bridge_and_a_dead_worker_comes_back",
    "network.vlan_allow": network_vlan_allow,
    "network.gateway_ips": gateway_ips,
    "network.service_tags": service_tags,
    "network.mac": network_mac,
    "network.lan_interfaces": both(lan_interfaces, role_only("network.lan_interfaces", ["e1"])),
    "exit_nodes.multi_hop": multi_hop,
    "exit_nodes.hops": hops,
    "exit_nodes.regions_file": "tests/unit/l2bridge/test_circuit_choice.py::"
    "test_registry_regions_are_read_and_a_regions_file_overrides_them",
    "exit_nodes.min_reputation": both(min_reputation, role_only("exit_nodes.min_reputation", 9)),
    "exit_nodes.geographic_diversity": diversity("geographic_diversity"),
    "exit_nodes.jurisdictional_diversity": diversity("jurisdictional_diversity"),
    "obfuscation.enabled": obfuscation_enabled,
    "obfuscation.protocol": obfuscation_protocol,
    "obfuscation.cover_traffic": cover_traffic,
    "obfuscation.advanced_stego": advanced_stego,
    "obfuscation.padding": padding,
    "obfuscation.shaping": shaping,
    "obfuscation.lan_chatter": lan_chatter,
    "atomic_time": atomic_time,
    "logging.level": logging_level,
    "logging.audit": logging_audit,  # the events themselves: LIVE's management test
    "logging.siem_export": siem_export,
    "logging.retention": retention,
    "endpoints.listen": both(listen, role_only("endpoints.listen", "0.0.0.0:1")),
    "endpoints.connect": both(connect, role_only("endpoints.connect", "ws://h:1/ws")),
    "endpoints.path": path,
    "endpoints.access_key_file": access_key_file,
    "endpoints.credential_file": credential_file,
    "endpoints.handshakes_per_device": handshake_quotas,
    "endpoints.handshakes_per_source": handshake_quotas,
    "endpoints.exit_node_id": exit_node_id,
    "endpoints.tls_cert": tls,
    "endpoints.tls_key": tls,
    "endpoints.tls_ca": tls_ca,
    "endpoints.tls_impersonate": tls_impersonate,
    "endpoints.decoy_dir": decoy_dir,
    "endpoints.server_header": server_header,
    "endpoints.token_window": token_window,
    "endpoints.header_timeout": header_timeout,
    "endpoints.keepalive_timeout": front_door_timers,
    "endpoints.send_timeout": front_door_timers,
    "endpoints.fallback": fallback,
    "endpoints.max_connections": connection_caps,
    "endpoints.max_connections_per_source": connection_caps,
    "endpoints.decoy_gzip": decoy_gzip,
    # the five exits of this test serve as hops with endpoints.relay: true
    "endpoints.relay": "tests/integration/e2e/test_multihop_nodes.py::"
    "test_ultra_secure_client_bridges_through_five_hops",
    "endpoints.keepalive_interval": "tests/integration/l2bridge/test_link_liveness.py::"
    "test_silent_exit_is_left_for_the_next",
    "endpoints.liveness_timeout": "tests/integration/l2bridge/test_link_liveness.py::"
    "test_exit_drops_a_silent_client",
    "endpoints.listen_backlog": "tests/integration/l2bridge/test_listen_backlog.py::"
    "test_listen_backlog_sets_the_accept_queue",
    "endpoints.public_url": "tests/unit/l2bridge/test_init.py::"
    "test_exit_files_load_and_admit_the_bundled_client",
    "keys.identity": identity,
    "keys.admin_public": admin_public,
    "keys.certificate": certificate,
    "keys.allow_list": allow_list,
    "keys.revocations": revocations,
    "keys.relay_certificate": relay_certificate,
    "keys.credentials": credentials_table,
    "tpm.tcti": "tests/integration/e2e/test_demo.py::"
    "test_exit_and_client_without_chain_tpm_or_clock",
    "tpm.ak_context": ak_context,
    "tpm.golden_policy": golden_policy,
    # the exit attests from the harness's logs named by these two settings
    "tpm.ima_list": "tests/integration/e2e/test_demo.py::"
    "test_exit_and_client_without_chain_tpm_or_clock",
    "tpm.event_log": "tests/integration/e2e/test_demo.py::"
    "test_exit_and_client_without_chain_tpm_or_clock",
    "tpm.quotes_per_device": quotes_per_device,
    "tpm.timeout": "tests/integration/exitnode/test_tpm_hang.py::"
    "test_hung_tpm_blocks_no_plain_handshake",
    "tpm.exit_enrolment": "tests/integration/l2bridge/test_pinned_attestation.py::"
    "test_pinned_exit_evidence_is_asked_for_and_checked",
    "chain.rpc_url": chain_mode,
    "chain.contract_address": chain_mode,
    "chain.keystore": "tests/integration/e2e/test_registry_failover.py::"
    "test_client_picks_registry_exit_and_fails_over_on_pcr_change",
    "chain.attestation_interval": "tests/unit/exitnode/test_measured_config.py::"
    "test_lab_attestation_intervals_of_seconds_load",
    "chain.region": chain_region,
    "chain.enrolment_voucher": "tests/unit/exitnode/test_upkeep_voucher.py::"
    "test_no_voucher_configured_says_what_to_run",
    "status.listen": "tests/unit/l2bridge/test_status.py::"
    "test_a_bind_failure_is_one_line_naming_the_setting",
    "status.metrics_listen": f"{LIVE}::test_mtu_mismatch_audit_metrics_listen_and_peers_commands",
    "status.admin_token_file": "tests/unit/l2bridge/test_status.py::"
    "test_status_finds_the_listener_and_credential_in_the_config",
    "devices": f"{LIVE}::test_device_policy_is_enforced_and_reloadable",
}


def all_fields() -> set[str]:
    out = {"version", "atomic_time", "devices"}  # sections checked as a whole
    for section in dataclasses.fields(Config):
        if section.name in out:
            continue
        cls = section.default_factory()  # type: ignore[misc]
        out.update(f"{section.name}.{f.name}" for f in dataclasses.fields(cls))
    return out


def test_every_field_has_a_check_and_a_role() -> None:
    fields = all_fields()
    assert set(CHECKS) == fields, {"unchecked": fields - set(CHECKS),
                                   "stale": set(CHECKS) - fields}  # fmt: skip
    assert set(FIELD_ROLES) == fields


@pytest.mark.parametrize("name", sorted(k for k, v in CHECKS.items() if isinstance(v, str)))
def test_referenced_proof_exists(name: str) -> None:
    reference = CHECKS[name]
    assert isinstance(reference, str)
    file, _, function = reference.partition("::")
    source = (ROOT / file).read_text()
    assert re.search(rf"^def {function}\(", source, re.M), reference


@pytest.mark.parametrize("name", sorted(k for k, v in CHECKS.items() if callable(v)))
def test_setting_changes_behaviour_or_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("SHADOWMESH_")]:
        monkeypatch.delenv(var)
    check = CHECKS[name]
    assert callable(check)
    check(World(tmp_path, monkeypatch))
