"""Node configuration: YAML (every field in docs/configuration.md), loaded once, in layers.

Layers, later wins: built-in defaults, the YAML file, environment variables
``SHADOWMESH_<SECTION>__<FIELD>`` (values parsed as YAML scalars, e.g.
``SHADOWMESH_SECURITY__KEY_ROTATION_INTERVAL=10s``). The result is a tree of
frozen dataclasses. Every invalid value raises ConfigError naming the field
path and the reason, e.g. ``security.key_rotation_interval: expected a
duration like 10s, 1m or 1h, got 'soon'``.

The example configurations in ``l2bridge/examples/`` load as written. Features a
configuration may name but this implementation does not have (SGX, multi-hop routing, steganography,
SIEM export) are accepted; ``problems(config)`` lists them, and
``ensure_startable`` refuses to start where running without them would be
weaker than what the operator asked for (SGX required, multi-hop required).
Relative paths are resolved against the configuration file's directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from contracts.region import check_region
from hardware.announce import parse_mac
from l2bridge.constants import DEFAULT_PAD_TO, MAX_HOPS
from l2bridge.errors import LocalError
from timing.config import TimeSettings, settings_from
from timing.errors import ConfigError as TimingConfigError

ENV_PREFIX = "SHADOWMESH_"
MAX_CONFIG_BYTES = 1 << 20
T = TypeVar("T")


class ConfigError(LocalError):
    """A configuration value is invalid; the message names the field and reason."""


class CoverTraffic(Enum):
    OFF = "off"
    ON = "on"
    AGGRESSIVE = "aggressive"


PQ_MODES = ("hybrid", "pqc_only", "classical")
MAX_WORKERS = 64  # network.workers


@dataclass(frozen=True, slots=True)
class Security:
    key_rotation_interval: float = 3600.0
    post_quantum_mode: str = "hybrid"
    attestation_required: bool = False
    sgx_enclave: bool = False
    # ML-KEM/ML-DSA implementation for the handshake's ephemeral keys (l2bridge.crypto.pq).
    pq_backend: str = "cryptography"
    # Exit: every live session is re-authorised (revocations, allow-list, expiry) at
    # least this often, besides at once after a list file changes.
    reauth_interval: float = 60.0
    # exit: tunnels one device identity may hold at once; a newer one ends the oldest
    tunnels_per_device: int = 1


@dataclass(frozen=True, slots=True)
class Network:
    layer: int = 2
    mtu: int = 1500  # the LAN's: a bridged LAN's frames must fit the TAP unfragmented
    tap: str = "sm0"
    bridge: str | None = None
    vnet_hdr: bool = True
    # With vnet_hdr: merge runs of plain TCP/UDP frames read from the TAP into super-frames
    # (software GRO, hardware.gro); the peer's TAP cuts them back. "kernel" also joins the
    # TAP to its bridge through a veth pair where Linux's GRO merges them first
    # (hardware.gro_port). "auto": kernel where it can work (vnet_hdr, a bridge, a TAP name
    # of at most 11 characters) and can be built, software elsewhere
    # (hardware.gro_port.plan). YAML true is "software", false is "off".
    gro: str = "auto"
    # Spread the kernel's work on frames written to the TAP over every CPU the node may use
    # (Receive Packet Steering, hardware.tap.spread_receive).
    rps: bool = False
    vlan_allow: tuple[int, ...] = ()  # empty: every VLAN (and untagged) passes
    # Exit: addresses of the LAN's gateway(s); no client may claim them in ARP/ND.
    gateway_ips: tuple[str, ...] = ()
    # Exit: read 802.1ad (0x88a8) service tags as the VLAN tag; off, they are dropped.
    service_tags: bool = False
    mac: bytes | None = None  # exit: TAP and bridge MAC (None: derived from the nodeId)
    # client: LAN interfaces put into ``bridge`` at start and given back at stop
    lan_interfaces: tuple[str, ...] = ()
    # exit: processes serving tunnels, each with a TAP of its own in ``bridge`` and all on
    # the tunnel port (exitnode.workers); 1 is the single-process exit; "auto" is one per
    # core the exit may use (``exitnode.workers.worker_count``).
    workers: int | Literal["auto"] = 1


@dataclass(frozen=True, slots=True)
class ExitNodes:
    multi_hop: bool = False
    hops: int = 1
    min_reputation: int = 500
    geographic_diversity: bool = False
    jurisdictional_diversity: bool = False
    # Multi-hop: YAML mapping of nodeId (hex) -> region, overriding the regions exits
    # declare on chain (l2bridge.client.circuit).
    regions_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Obfuscation:
    enabled: bool = True
    protocol: str = "websocket"
    cover_traffic: CoverTraffic = CoverTraffic.OFF
    advanced_stego: bool = False
    padding: int = DEFAULT_PAD_TO  # records padded to multiples of this (0: none)
    # Record sizes / timing after a browser WebSocket profile (l2bridge.protocol.shaping).
    shaping: str = "off"  # off | sizes | browser
    lan_chatter: str = "pass"  # client: pass | aggregate (hold broadcasts, send them together)


# The atomic_time section is parsed by the timing package itself (one parser for the
# examples' short form ``- rubidium: /dev/ttyUSB0`` and the long form with serial settings,
# PPS, fallback and the chrony socket), so the file and ``shadowmesh clock`` agree.
AtomicTime = TimeSettings


@dataclass(frozen=True, slots=True)
class Logging:
    level: str = "info"
    audit: bool = False  # security events as JSON lines on the "shadowmesh.audit" logger
    siem_export: bool = False
    retention: float | None = None  # accepted (the spec's files set it), warned: not applied


@dataclass(frozen=True, slots=True)
class Endpoints:
    listen: tuple[str, int] | None = None  # exit: host, port
    connect: str | None = None  # client: ws:// or wss:// URL
    path: str = "/ws"
    # exit: its master key (credentials derive from it; never leaves the exit)
    access_key_file: Path | None = None
    # client (and a relaying exit): its credentials, one per exit (JSON, mode 0600)
    credential_file: Path | None = None
    exit_node_id: bytes | None = None  # client: pin the exit
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # client: trust this CA for wss://
    # client: open wss:// through curl_cffi with this browser's TLS ClientHello
    tls_impersonate: str | None = None
    decoy_dir: Path | None = None  # None: the built-in page
    server_header: str = "nginx"
    decoy_gzip: bool = True  # the built-in decoy compresses like "gzip on" (Debian's default)
    token_window: float = 60.0
    # The front door's timers mirror the operator's nginx (Debian defaults): the request
    # head (and a TLS handshake) within header_timeout, an idle kept-alive connection
    # closed after keepalive_timeout, a reader that takes nothing for send_timeout dropped.
    header_timeout: float = 60.0
    keepalive_timeout: float = 65.0
    send_timeout: float = 60.0
    # The operator's real web server: connections without a valid token are spliced to
    # it (with the bytes already read). None: the built-in decoy answers them.
    fallback: tuple[str, int] | None = None
    max_connections: int = 4096  # held at once, in total
    max_connections_per_source: int = 256  # per IPv4 address or IPv6 /64
    # exit: handshakes admitted per minute (token buckets of this size), charged only for
    # valid tokens: per device, and per source address over all of its devices
    handshakes_per_device: int = 20
    handshakes_per_source: int = 600
    # liveness, both ends: a keepalive record after this long idle (jittered), and the
    # link is dropped (client: reconnect / fail over) after liveness_timeout of silence
    keepalive_interval: float = 5.0
    liveness_timeout: float = 15.0
    # exit: the tunnel port's listen backlog (SYN floods, reconnect storms)
    listen_backlog: int = 4096

    relay: bool = False  # exit: also serve as a hop of multi-hop circuits (exitnode.relay)
    public_url: str | None = None  # exit: the URL clients dial (join bundles, registry)

    def __post_init__(self) -> None:
        if self.liveness_timeout < 2 * self.keepalive_interval:
            raise ConfigError(
                "endpoints.liveness_timeout: must be at least twice "
                "endpoints.keepalive_interval (one lost keepalive must not end a link)"
            )


@dataclass(frozen=True, slots=True)
class Keys:
    identity: Path | None = None
    admin_public: Path | None = None
    certificate: Path | None = None
    allow_list: Path | None = None
    revocations: Path | None = None
    # exit with endpoints.relay: the device certificate it shows the next hop's Authorizer
    relay_certificate: Path | None = None
    # exit: the credential table (handle -> device), written by ``shadowmesh credentials``
    credentials: Path | None = None


@dataclass(frozen=True, slots=True)
class Tpm:
    tcti: str = "device:/dev/tpmrm0"
    ak_context: Path | None = None
    golden_policy: Path | None = None
    # exit: the kernel's IMA list and boot event log (default: /sys/kernel/security/...)
    ima_list: Path | None = None
    event_log: Path | None = None
    # client: the pinned exit's enrolment record (its AK), for attestation_required
    exit_enrolment: Path | None = None
    # exit: deadline of one TPM command (a quote); past it the TPM counts as lost
    timeout: float = 3.0
    # exit: attested hellos (TPM quotes) one device, or one source when its token names no
    # device, may ask for per minute (also the burst); past it refused before the TPM
    quotes_per_device: int = 6


@dataclass(frozen=True, slots=True)
class Chain:
    rpc_url: str | None = None
    contract_address: str | None = None
    keystore: Path | None = None
    attestation_interval: float = 3600.0
    enrolment_voucher: Path | None = None  # an enroller's voucher, needed to register
    # exit: where its operator declares it runs (ISO 3166: DE, US-CA), published on chain
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    listen: tuple[str, int] = ("127.0.0.1", 9470)
    metrics_listen: tuple[str, int] | None = None
    # the management API's bearer credential (required when listen is not loopback)
    admin_token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """exit: what one device (by its certificate or allow-list name) may do.

    None leaves the exit's default: ``network.vlan_allow``, no rate limit, any hour."""

    name: str
    vlans: tuple[int, ...] | None = None  # 0 = untagged
    rate: float | None = None  # bytes per second from this device
    broadcast_rate: float | None = None  # broadcast + multicast frames per second
    hours: tuple[int, int] | None = None  # allowed minutes of the day (UTC), may wrap
    dhcp_server: bool = False  # its site may answer DHCP for the others (exitnode.dhcpguard)


@dataclass(frozen=True, slots=True)
class Config:
    version: str = "1"
    security: Security = field(default_factory=Security)
    network: Network = field(default_factory=Network)
    exit_nodes: ExitNodes = field(default_factory=ExitNodes)
    obfuscation: Obfuscation = field(default_factory=Obfuscation)
    atomic_time: AtomicTime = field(default_factory=lambda: TimeSettings(False, ()))
    logging: Logging = field(default_factory=Logging)
    endpoints: Endpoints = field(default_factory=Endpoints)
    keys: Keys = field(default_factory=Keys)
    tpm: Tpm = field(default_factory=Tpm)
    chain: Chain = field(default_factory=Chain)
    status: Status = field(default_factory=Status)
    devices: tuple[DevicePolicy, ...] = ()

    def device(self, name: str) -> DevicePolicy | None:
        return next((d for d in self.devices if d.name == name), None)


# --- value parsers: each takes (value, field path) and raises ConfigError --------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _fail(path: str, expected: str, value: object) -> ConfigError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(f"{path}: expected {expected}, got {shown}")


def parse_duration(value: object, path: str) -> float:
    """``10s``, ``1m``, ``1h``, ``7d``, ``1h30m``, ``250ms`` or a number of seconds."""
    if isinstance(value, bool):
        raise _fail(path, "a duration like 10s, 1m or 1h", value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+", value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise _fail(path, "a duration like 10s, 1m or 1h", value)
    if not 0 < seconds < float("inf"):  # also rejects NaN
        raise ConfigError(f"{path}: must be a positive duration, got {value!r}")
    return seconds


def _mac(value: object, path: str) -> bytes:
    try:
        return parse_mac(value) if isinstance(value, str) else parse_mac("")
    except ValueError as exc:
        raise _fail(path, str(exc), value) from None


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


def _int_range(lo: int, hi: int) -> Callable[[object, str], int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"an integer from {lo} to {hi}", value)
        if not lo <= value <= hi:
            raise ConfigError(f"{path}: must be from {lo} to {hi}, got {value}")
        return value

    return parse


def _duration_range(lo: float, hi: float) -> Callable[[object, str], float]:
    def parse(value: object, path: str) -> float:
        seconds = parse_duration(value, path)
        if not lo <= seconds <= hi:
            raise ConfigError(f"{path}: must be from {lo:g}s to {hi:g}s, got {value!r}")
        return seconds

    return parse


def _choice(*options: str) -> Callable[[object, str], str]:
    def parse(value: object, path: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise _fail(path, "one of " + ", ".join(options), value)
        return value

    return parse


GRO_MODES = ("auto", "software", "kernel", "off")


def _workers(value: object, path: str) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"an integer from 1 to {MAX_WORKERS} or auto", value)
    return _int_range(1, MAX_WORKERS)(value, path)


def _gro(value: object, path: str) -> str:
    if value is True:
        return "software"
    if value is False:
        return "off"
    if not isinstance(value, str) or value not in GRO_MODES:
        raise _fail(path, "true, false or one of " + ", ".join(GRO_MODES), value)
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise _fail(path, "a non-empty string", value)
    return value


def _optional(parse: Callable[[object, str], T]) -> Callable[[object, str], T | None]:
    def wrapped(value: object, path: str) -> T | None:
        return None if value is None else parse(value, path)

    return wrapped


def _ifname(value: object, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", value):
        raise _fail(path, "an interface name of 1-15 letters, digits, '.', '-' or '_'", value)
    return value


def _address(value: object, path: str) -> tuple[str, int]:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _fail(path, "an address like 0.0.0.0:443 or [::1]:8443", value)
    return host, int(port)


def _fallback_address(value: object, path: str) -> tuple[str, int]:
    host, port = _address(value, path)
    if port == 0:
        raise _fail(path, "the web server's address like 127.0.0.1:8080", value)
    return host, port


def _ws_url(value: object, path: str) -> str:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise _fail(path, "a ws:// or wss:// URL", value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(path, "a ws:// or wss:// URL", value) from None
    return str(value)


def _http_url(value: object, path: str) -> str:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise _fail(path, "an http(s):// or ws(s):// RPC URL", value)
    return str(value)


def _url_path(value: object, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[\x21-\x7e]{0,255}", value):
        raise _fail(path, "a URL path starting with /", value)
    if "?" in value or "#" in value:
        raise ConfigError(f"{path}: must not contain a query or fragment, got {value!r}")
    return value


def _eth_address(value: object, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
        raise _fail(path, "a 0x-prefixed 20-byte hex address", value)
    return value


def _region(value: object, path: str) -> str:
    try:
        return check_region(value) if isinstance(value, str) else check_region(repr(value))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _node_id(value: object, path: str) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", value):
        raise _fail(path, "a 32-byte node id in hex", value)
    return bytes.fromhex(value.removeprefix("0x"))


def _vlans(value: object, path: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _fail(path, "a list of VLAN ids", value)
    parse = _int_range(1, 4094)
    return tuple(parse(v, f"{path}[{i}]") for i, v in enumerate(value))


def _ip_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, "a list of IP addresses", value)
    out: list[str] = []
    for i, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_address(item if isinstance(item, str) else "")))
        except ValueError:
            raise _fail(f"{path}[{i}]", "an IPv4 or IPv6 address", item) from None
    return tuple(out)


def _ifnames(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, "a list of interface names", value)
    names = tuple(_ifname(v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: an interface is listed twice")
    return names


def _cover(value: object, path: str) -> CoverTraffic:
    if value is True:
        return CoverTraffic.ON
    if value is False:
        return CoverTraffic.OFF
    if isinstance(value, str) and value in ("off", "on", "aggressive"):
        return CoverTraffic(value)
    raise _fail(path, "true, false, 'on', 'off' or 'aggressive'", value)


def _shaping(value: object, path: str) -> str:
    # YAML reads a bare ``off`` as false.
    if value is False:
        return "off"
    if isinstance(value, str) and value in ("off", "sizes", "browser"):
        return value
    raise _fail(path, "'off', 'sizes' or 'browser'", value)


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)")
_RATE_UNITS = {"bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}


def _rate(value: object, path: str) -> float:
    """``10mbit``, ``512kbit`` or a number of bytes per second."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _RATE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or float(match[1]) <= 0:
        raise _fail(path, "a rate like 10mbit, 512kbit or bytes per second", value)
    return float(match[1]) * _RATE_UNITS[match[2]]


def _hours(value: object, path: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", value) if isinstance(value, str) else None
    if match is None:
        raise _fail(path, "a window like 08:00-18:00 (UTC)", value)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2) or (h1, m1) == (h2, m2):
        raise _fail(path, "a window like 08:00-18:00 (UTC)", value)
    return h1 * 60 + m1, h2 * 60 + m2


def _devices(value: object, path: str) -> tuple[DevicePolicy, ...]:
    if not isinstance(value, dict):
        raise _fail(path, "a mapping of device name to its policy", value)
    out = []
    for name, raw in value.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name or len(name) > 255:
            raise _fail(path, "device names as keys", name)
        if not isinstance(raw, dict):
            raise _fail(where, "a mapping (vlans, rate, broadcast_rate, hours, dhcp_server)", raw)
        known = {"vlans", "rate", "broadcast_rate", "hours", "dhcp_server"}
        for key in raw:
            if key not in known:
                raise ConfigError(
                    f"{where}.{key}: unknown setting (known: {', '.join(sorted(known))})"
                )
        vlans = raw.get("vlans")
        if vlans is not None:
            if not isinstance(vlans, list):
                raise _fail(f"{where}.vlans", "a list of VLAN ids (0 = untagged)", vlans)
            parse = _int_range(0, 4094)
            vlans = tuple(parse(v, f"{where}.vlans[{i}]") for i, v in enumerate(vlans))
        out.append(
            DevicePolicy(
                name,
                vlans,
                None if raw.get("rate") is None else _rate(raw["rate"], f"{where}.rate"),
                None if raw.get("broadcast_rate") is None
                else float(_int_range(1, 100000)(raw["broadcast_rate"], f"{where}.broadcast_rate")),
                None if raw.get("hours") is None else _hours(raw["hours"], f"{where}.hours"),
                _bool(raw.get("dhcp_server", False), f"{where}.dhcp_server"),
            )
        )  # fmt: skip
    return tuple(out)


def _atomic_time(value: object, path: str) -> TimeSettings:
    if not isinstance(value, dict):
        raise _fail(path, "a mapping of settings", value)
    try:
        return settings_from(value)
    except TimingConfigError as exc:
        raise ConfigError(str(exc)) from None


def _version(value: object, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(path, "a version number like 1.0", value)
    text = str(value)
    if text.split(".", 1)[0] != "1":
        raise ConfigError(f"{path}: only configuration version 1 is understood, got {text!r}")
    return text


# Settings that were accepted and then ignored: refused now, saying what to do instead.
_REMOVED = {
    "tpm.pcr": "no longer a setting: which PCRs a quote covers is fixed by the attestation "
    "policy (tpm.golden_policy); remove it",
    "tpm.ak_public": "no longer a setting: the AK's public part is kept with tpm.ak_context "
    "(or in the exit's state directory) and published by enrolment; remove it",
}

_Parser = Callable[[object, str], Any]
_PATH = "path"  # marker: resolve against the config file's directory

_SCHEMA: dict[str, tuple[type, dict[str, _Parser | str]]] = {
    "security": (
        Security,
        {
            "key_rotation_interval": _duration_range(1.0, 86400.0),
            "post_quantum_mode": _choice(*PQ_MODES),
            "attestation_required": _bool,
            "sgx_enclave": _bool,
            "pq_backend": _choice("cryptography", "liboqs"),
            "reauth_interval": _duration_range(1.0, 86400.0),
            "tunnels_per_device": _int_range(1, 64),
        },
    ),
    "network": (
        Network,
        {
            "layer": _int_range(2, 2),
            "mtu": _int_range(576, 65535),
            "tap": _ifname,
            "bridge": _optional(_ifname),
            "vnet_hdr": _bool,
            "gro": _gro,
            "rps": _bool,
            "vlan_allow": _vlans,
            "gateway_ips": _ip_list,
            "service_tags": _bool,
            "mac": _optional(_mac),
            "lan_interfaces": _ifnames,
            "workers": _workers,
        },
    ),
    "exit_nodes": (
        ExitNodes,
        {
            "multi_hop": _bool,
            "hops": _int_range(1, 7),
            "min_reputation": _int_range(0, 1000),
            "geographic_diversity": _bool,
            "jurisdictional_diversity": _bool,
            "regions_file": _PATH,
        },
    ),
    "obfuscation": (
        Obfuscation,
        {
            "enabled": _bool,
            "protocol": _choice("websocket"),
            "cover_traffic": _cover,
            "advanced_stego": _bool,
            "padding": _int_range(0, 16384),
            "shaping": _shaping,
            "lan_chatter": _choice("pass", "aggregate"),
        },
    ),
    "atomic_time": (AtomicTime, {}),  # parsed whole by _atomic_time
    "logging": (
        Logging,
        {
            "level": _choice("debug", "info", "warning", "error"),
            "audit": _bool,
            "siem_export": _bool,
            "retention": _optional(_duration_range(60.0, 3650 * 86400.0)),
        },
    ),
    "endpoints": (
        Endpoints,
        {
            "listen": _optional(_address),
            "connect": _optional(_ws_url),
            "path": _url_path,
            "access_key_file": _PATH,
            "credential_file": _PATH,
            "exit_node_id": _optional(_node_id),
            "tls_cert": _PATH,
            "tls_key": _PATH,
            "tls_ca": _PATH,
            "tls_impersonate": _optional(_choice("chrome")),
            "decoy_dir": _PATH,
            "server_header": _text,
            "decoy_gzip": _bool,
            "token_window": _duration_range(10.0, 3600.0),
            "header_timeout": _duration_range(0.1, 300.0),
            "keepalive_interval": _duration_range(0.1, 3600.0),
            "liveness_timeout": _duration_range(0.2, 7200.0),
            "listen_backlog": _int_range(16, 65535),
            "public_url": _optional(_ws_url),
            "keepalive_timeout": _duration_range(0.1, 3600.0),
            "send_timeout": _duration_range(0.1, 3600.0),
            "fallback": _optional(_fallback_address),
            "max_connections": _int_range(1, 1_000_000),
            "max_connections_per_source": _int_range(1, 1_000_000),
            "handshakes_per_device": _int_range(1, 1_000_000),
            "handshakes_per_source": _int_range(1, 1_000_000),
            "relay": _bool,
        },
    ),
    "keys": (
        Keys,
        {
            k: _PATH
            for k in (
                "identity",
                "admin_public",
                "certificate",
                "allow_list",
                "revocations",
                "relay_certificate",
                "credentials",
            )
        },
    ),
    "tpm": (
        Tpm,
        {
            "tcti": _text,
            "ak_context": _PATH,
            "golden_policy": _PATH,
            "ima_list": _PATH,
            "event_log": _PATH,
            "exit_enrolment": _PATH,
            "timeout": _duration_range(0.05, 300.0),
            "quotes_per_device": _int_range(1, 6000),
        },
    ),
    "chain": (
        Chain,
        {
            "rpc_url": _optional(_http_url),
            "contract_address": _optional(_eth_address),
            "keystore": _PATH,
            "enrolment_voucher": _PATH,
            "region": _optional(_region),
            # seconds are for labs and CI (the registry's window is set at deployment)
            "attestation_interval": _duration_range(1.0, 7 * 86400.0),
        },
    ),
    "status": (
        Status,
        {"listen": _address, "metrics_listen": _optional(_address), "admin_token_file": _PATH},
    ),
}


def _section(name: str, raw: object, base_dir: Path) -> Any:
    cls, fields = _SCHEMA[name]
    if name == "atomic_time":
        return _atomic_time({} if raw is None else raw, name)
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise _fail(name, "a mapping of settings", raw)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{name}.{key}"
        parse = fields.get(key) if isinstance(key, str) else None
        if path in _REMOVED:
            raise ConfigError(f"{path}: {_REMOVED[path]}")
        if parse is None:
            raise ConfigError(f"{path}: unknown setting (known: {', '.join(fields)})")
        if parse == _PATH:
            values[key] = None if value is None else base_dir / _text(value, path)
        else:
            assert callable(parse)
            values[key] = parse(value, path)
    return cls(**values)


def _env_layer(env: Mapping[str, str]) -> dict[str, dict[str, object]]:
    layer: dict[str, dict[str, object]] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SCHEMA:
            raise ConfigError(f"{name}: unknown section {section!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                f"{section}.{key}: the value of {name} is not a YAML scalar"
            ) from None
        layer.setdefault(section, {})[key] = value
    return layer


def config_from_mapping(
    data: object, *, base_dir: Path = Path("."), env: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed YAML document (plus environment overrides) into a Config."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail("(top level)", "a mapping of sections", data)
    merged: dict[str, object] = dict(data)
    for section, values in _env_layer(env if env is not None else {}).items():
        current = merged.get(section)
        base = dict(current) if isinstance(current, dict) else {}
        base.update(values)
        merged[section] = base
    sections: dict[str, Any] = {}
    for key, raw in merged.items():
        if key == "version":
            sections["version"] = _version(raw, "version")
        elif key == "devices":
            sections["devices"] = () if raw is None else _devices(raw, "devices")
        elif isinstance(key, str) and key in _SCHEMA:
            sections[key] = _section(key, raw, base_dir)
        else:
            raise ConfigError(
                f"{key}: unknown section (known: version, {', '.join(_SCHEMA)}, devices)"
            )
    return Config(**sections)


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then ``path`` (if given), then the environment.

    ``env`` defaults to ``os.environ``. Raises ConfigError for every problem,
    including an unreadable or non-YAML file.
    """
    data: object = None
    base_dir = Path(".")
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        except RecursionError:
            raise ConfigError(f"{path}: YAML nested too deeply") from None
        base_dir = path.parent
    return config_from_mapping(data, base_dir=base_dir, env=os.environ if env is None else env)


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str
    refuse: bool  # True: running anyway would be weaker than what was asked


def problems(config: Config) -> list[Problem]:
    """Settings this implementation accepts but does not (fully) honour."""
    out: list[Problem] = []
    if config.security.sgx_enclave:
        out.append(Problem("security.sgx_enclave", "Intel SGX enclaves are not supported", True))
    out.extend(_multi_hop(config))
    out.extend(_pinned_attestation(config))
    if config.obfuscation.advanced_stego:
        out.append(Problem("obfuscation.advanced_stego", "steganography is not implemented", False))
    if config.obfuscation.cover_traffic is not CoverTraffic.OFF and not config.obfuscation.enabled:
        out.append(
            Problem("obfuscation.cover_traffic", "needs obfuscation.enabled: none is sent", False)
        )
    obf = config.obfuscation
    for name, value, off in (
        ("shaping", obf.shaping, "off"),
        ("lan_chatter", obf.lan_chatter, "pass"),
    ):
        if value != off and not obf.enabled:
            out.append(
                Problem(f"obfuscation.{name}", "needs obfuscation.enabled: not applied", False)
            )
    if not config.obfuscation.enabled:
        out.append(
            Problem("obfuscation.enabled", "the tunnel always looks like a WebSocket", False)
        )
    if config.logging.siem_export:
        out.append(Problem("logging.siem_export", "SIEM export is not implemented", False))
    if config.logging.retention is not None:
        out.append(
            Problem(
                "logging.retention",
                "not applied: logs go to stderr, where journald's own retention "
                "(MaxRetentionSec in journald.conf) decides how long they are kept",
                False,
            )
        )
    for warning in config.atomic_time.warnings():
        out.append(Problem("atomic_time.consensus_quorum", warning, False))
    return out


def _multi_hop(config: Config) -> list[Problem]:
    """Circuits of 2..MAX_HOPS hops (l2bridge.client.circuit); the diversity settings."""
    hops = config.exit_nodes
    out = []
    if hops.multi_hop and not 2 <= hops.hops <= MAX_HOPS:
        out.append(
            Problem("exit_nodes.hops", f"multi-hop circuits have 2 to {MAX_HOPS} hops", True)
        )
    if not hops.multi_hop and hops.hops > 1:
        out.append(
            Problem("exit_nodes.hops", "more than one hop needs exit_nodes.multi_hop: true", True)
        )
    # With multi-hop, regions come from the registry (each exit's declared ISO 3166 code)
    # and exit_nodes.regions_file; both settings are then enforced (l2bridge.client.circuit).
    for name in ("geographic_diversity", "jurisdictional_diversity"):
        if getattr(hops, name) and not hops.multi_hop:
            out.append(Problem(f"exit_nodes.{name}", "only meaningful with multi-hop", False))
    return out


def _pinned_attestation(config: Config) -> list[Problem]:
    """A client pinned to one exit with attestation_required needs what checks its evidence."""
    if not config.security.attestation_required or config.endpoints.exit_node_id is None:
        return []
    out = []
    if config.tpm.golden_policy is None:
        out.append(
            Problem("tpm.golden_policy", "required to check the pinned exit's evidence", True)
        )
    chain = config.chain
    if config.tpm.exit_enrolment is None and not (chain.rpc_url and chain.contract_address):
        out.append(
            Problem(
                "security.attestation_required",
                "the pinned exit's AK is unknown: set tpm.exit_enrolment (its enrolment "
                "record) or chain.rpc_url and chain.contract_address (the registry)",
                True,
            )
        )
    return out


@contextlib.contextmanager
def naming(field: str) -> Iterator[None]:
    """Re-raise a file, format or bind error inside the block as one ConfigError line that
    names the setting: ``keys.identity: /etc/x/id.key: No such file or directory``."""
    try:
        yield
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"{field}: {exc.strerror or type(exc).__name__}") from None
    except (LocalError, ValueError) as exc:
        raise ConfigError(f"{field}: {exc}") from None


# Which role reads each setting (the others are warned about when set): "exit", "client",
# or both. tests/unit/l2bridge/test_every_setting.py checks that this lists every field
# and proves each one changes behaviour or is refused.
BOTH = ("exit", "client")
FIELD_ROLES: dict[str, tuple[str, ...]] = {
    "version": BOTH,
    **{f"security.{k}": BOTH for k in
       ("key_rotation_interval", "post_quantum_mode", "attestation_required", "sgx_enclave")},
    "security.tunnels_per_device": ("exit",),
    "security.pq_backend": BOTH,
    "security.reauth_interval": ("exit",),
    **{f"network.{k}": BOTH for k in ("layer", "mtu", "tap", "bridge", "vnet_hdr", "gro", "rps")},
    "network.vlan_allow": ("exit",),
    "network.lan_interfaces": ("client",),
    **{f"network.{k}": ("exit",) for k in ("gateway_ips", "service_tags", "mac", "workers")},
    "exit_nodes.multi_hop": BOTH,
    "exit_nodes.hops": BOTH,
    "exit_nodes.regions_file": ("client",),
    "exit_nodes.min_reputation": ("client",),
    "exit_nodes.geographic_diversity": BOTH,
    "exit_nodes.jurisdictional_diversity": BOTH,
    **{f"obfuscation.{k}": BOTH for k in
       ("enabled", "protocol", "cover_traffic", "advanced_stego", "padding", "shaping")},
    "obfuscation.lan_chatter": ("client",),
    "atomic_time": BOTH,
    **{f"logging.{k}": BOTH for k in ("level", "audit", "siem_export", "retention")},
    "endpoints.listen": ("exit",),
    "endpoints.connect": ("client",),
    "endpoints.path": BOTH,
    "endpoints.access_key_file": ("exit",),
    "endpoints.credential_file": BOTH,  # exit: its relay credentials for next hops
    "endpoints.exit_node_id": ("client",),
    "endpoints.tls_cert": ("exit",),
    "endpoints.tls_key": ("exit",),
    "endpoints.tls_ca": ("client",),
    "endpoints.tls_impersonate": ("client",),
    "endpoints.decoy_dir": ("exit",),
    "endpoints.server_header": ("exit",),
    "endpoints.token_window": BOTH,
    "endpoints.relay": ("exit",),
    **{f"endpoints.{k}": ("exit",) for k in (
        "decoy_gzip", "keepalive_timeout", "send_timeout", "fallback", "max_connections",
        "max_connections_per_source", "handshakes_per_device", "handshakes_per_source")},
    "endpoints.keepalive_interval": BOTH,
    "endpoints.liveness_timeout": BOTH,
    "endpoints.listen_backlog": ("exit",),
    "endpoints.header_timeout": ("exit",),
    "endpoints.public_url": ("exit",),
    "keys.identity": BOTH,
    "keys.admin_public": ("exit",),
    "keys.certificate": ("client",),
    "keys.allow_list": ("exit",),
    "keys.revocations": ("exit",),
    "keys.relay_certificate": ("exit",),
    "keys.credentials": ("exit",),
    "tpm.tcti": ("exit",),
    "tpm.ak_context": ("exit",),
    "tpm.timeout": ("exit",),
    "tpm.quotes_per_device": ("exit",),
    "tpm.ima_list": ("exit",),
    "tpm.event_log": ("exit",),
    "tpm.golden_policy": ("client",),
    "tpm.exit_enrolment": ("client",),
    "chain.rpc_url": BOTH,
    "chain.contract_address": BOTH,
    "chain.keystore": ("exit",),
    "chain.attestation_interval": BOTH,  # client: the oldest on-chain attestation it accepts
    "chain.enrolment_voucher": ("exit",),
    "chain.region": ("exit",),
    "status.listen": BOTH,
    "status.metrics_listen": BOTH,
    "status.admin_token_file": BOTH,
    "devices": ("exit",),
}  # fmt: skip


def _value(config: Config, path: str) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def role_problems(config: Config, role: str) -> list[Problem]:
    """Warnings for settings changed from their defaults that ``role`` does not read."""
    default = Config()
    out = []
    for path, roles in FIELD_ROLES.items():
        if role not in roles and _value(config, path) != _value(default, path):
            out.append(Problem(path, f"ignored here: only the {roles[0]} reads it", False))
    return out


def ensure_startable(config: Config, role: str | None = None) -> list[Problem]:
    """Raise ConfigError naming every refusal; return the warnings otherwise (with
    ``role``, also the settings that role does not read)."""
    found = problems(config) + (role_problems(config, role) if role else [])
    refusals = [p for p in found if p.refuse]
    if refusals:
        raise ConfigError(
            "refusing to start: " + "; ".join(f"{p.field}: {p.message}" for p in refusals)
        )
    return found
