"""OpenVPN 2.6 in TAP mode over TCP or UDP, AES-256-GCM, as the benchmark's reference tunnel.

Its best TAP configurations: no DCO (DCO has no TAP mode), ``--tcp-nodelay`` over TCP,
``--fast-io`` over UDP (one write per packet, no poll first). The benchmark runs both
transports and compares ShadowMesh with the better of the two for each figure.

Peer-to-peer TLS mode: each side has a self-signed P-256 certificate and pins the other's
SHA-256 fingerprint (``--peer-fingerprint``), so no CA is needed. The TAP devices join the
client's and the exit's bridges, exactly where ShadowMesh's TAPs go.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hardware.netns import Lab
from lab import topology

PORT = 11940
TAP = "ovpn0"


def _self_signed(name: str, out: Path) -> str:
    """Write ``name.crt``/``name.key``; return the certificate's SHA-256 fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _common(tmp: Path, name: str, peer_fp: str, mtu: int) -> list[str]:
    return [
        "openvpn",
        "--dev", TAP, "--dev-type", "tap",
        "--cert", str(tmp / f"{name}.crt"), "--key", str(tmp / f"{name}.key"),
        "--peer-fingerprint", peer_fp,
        "--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM",
        "--tun-mtu", str(mtu),
        "--disable-dco",
        "--script-security", "0", "--verb", "1",
        "--ping", "10", "--ping-exit", "60",
    ]  # fmt: skip


def _transport(proto: str, *, server: bool) -> list[str]:
    if proto == "tcp":
        role = ["--proto", "tcp-server"] if server else ["--proto", "tcp-client"]
        return [*role, "--tcp-nodelay"]
    if proto == "udp":
        return ["--proto", "udp", "--fast-io"]
    raise ValueError(f"openvpn transport {proto!r}: tcp or udp")


@contextmanager
def tunnel(
    lab: Lab, topo: topology.Topology, tmp: Path, *, proto: str = "tcp"
) -> Iterator[list[int]]:
    """Yields the two OpenVPN processes' pids once both TAPs are in their bridges."""
    out = tmp / f"openvpn-{proto}"
    out.mkdir(exist_ok=True)
    server_fp = _self_signed("server", out)
    client_fp = _self_signed("client", out)
    server = lab.spawn(
        topo.exit,
        [
            *_common(out, "server", client_fp, topo.mtu),
            "--tls-server", "--dh", "none",
            *_transport(proto, server=True), "--local", topology.EXIT_WAN, "--lport", str(PORT),
        ],
    )  # fmt: skip
    client = lab.spawn(
        topo.client,
        [
            *_common(out, "client", server_fp, topo.mtu),
            "--tls-client",
            *_transport(proto, server=False), "--remote", topology.EXIT_WAN, str(PORT),
            "--connect-retry", "1", "1",
        ],
    )  # fmt: skip
    try:
        topology.join_taps(topo, TAP, "openvpn")
        yield [client.pid, server.pid]
    finally:
        lab.stop(client)
        lab.stop(server)
