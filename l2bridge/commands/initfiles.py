"""What ``shadowmesh init`` writes: TLS files and the commented configurations.

The configurations are written as text (not dumped YAML) so each setting keeps the
comment that says why it is there; ``shadowmesh init`` loads every file it writes with
the node's own loader before it reports success.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from l2bridge.identity.keys import write_private_file

TLS_DAYS = 825  # the longest server certificate lifetime browsers ever accepted


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_private_tls(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A one-use CA and a server certificate for ``host``: (ca.pem, cert.pem, key.pem).

    The CA's private key is never written: it signs this one certificate and is dropped,
    so trusting ``ca.pem`` means trusting this exit's certificate and nothing else.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=TLS_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"ShadowMesh exit CA for {host}")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_alt_name(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(key_path, pem.decode("ascii"))
    return ca_path, cert_path, key_path


@dataclass(frozen=True, slots=True)
class ExitPlan:
    listen: str
    public_url: str
    tap: str
    bridge: str
    mtu: int
    tls: bool
    with_tpm: bool
    with_registry: bool
    registry_rpc: str
    registry_address: str


def exit_yaml(plan: ExitPlan, when: str) -> str:
    tls = (
        "  tls_cert: tls/cert.pem\n  tls_key: tls/key.pem\n"
        if plan.tls
        else "  # No TLS: put the exit behind a TLS-terminating proxy, or re-run init with TLS.\n"
    )
    attest = "true" if plan.with_tpm else "false"
    why = (
        "clients check this exit's TPM evidence at every connection"
        if plan.with_tpm
        else "no TPM: clients pin this exit's node id (in their join bundle) instead"
    )
    text = f"""\
# ShadowMesh exit, written by `shadowmesh init exit` ({when}).
# Paths are relative to this file's directory. Every setting: docs/configuration.md.
version: 1

security:
  key_rotation_interval: 1h
  post_quantum_mode: hybrid
  # {why}
  attestation_required: {attest}

network:
  mtu: {plan.mtu}
  tap: {plan.tap}
  # The exit's own segment: the clients' LANs meet here. Add a NIC to it to bridge a site.
  bridge: {plan.bridge}
  # Serve tunnels in one process per core (each a TAP in the bridge) instead of one:
  # workers: auto
  # Frames that reach the bridge unmerged (VMs, containers, a NIC without GRO, QUIC and
  # other UDP) are merged by Linux before the TAP, about twice the throughput for them
  # (the default, network.gro: auto: a veth pair and tc filters beside the TAP, named
  # after it; docs/configuration.md). To join the TAP to the bridge directly instead:
  # gro: software

endpoints:
  listen: {plan.listen}
  # What clients dial; written into every join bundle.
  public_url: {plan.public_url}
  path: /ws
  # This exit's own master key: every device credential derives from it. Never copy it.
  access_key_file: access.key
{tls}
keys:
  identity: identity.key
  # handle -> device of every credential issued (shadowmesh credentials issue|list|revoke)
  credentials: credentials.json
  # The organisation's admin key signs device certificates and the revocation list.
  # Keep admin.key offline once the clients have joined; the exit needs only the .pub.
  admin_public: admin.key.pub
  revocations: revoked.list

status:
  # /status, /metrics, /health and the management API (shadowmesh status / peers).
  listen: 127.0.0.1:9470
  admin_token_file: admin.token

logging:
  level: info
"""
    if plan.with_tpm:
        text += """
tpm:
  # The TPM's resource manager. The AK is enrolled into ./state at the first start with
  # `shadowmesh exit --ek-ca <TPM maker's CA>` (or `shadowmesh attest enroll`).
  tcti: device:/dev/tpmrm0
"""
    if plan.with_registry:
        text += f"""
chain:
  rpc_url: {plan.registry_rpc}
  contract_address: "{plan.registry_address}"
  # The operator account (an Ethereum keystore; its password in $SHADOWMESH_KEYSTORE_PASSWORD).
  keystore: operator.keystore
  # An appointed enroller's voucher for this node's AK (the ceremony: `shadowmesh enrol`).
  enrolment_voucher: enrolment-voucher.json
  attestation_interval: 1h
"""
    return text


@dataclass(frozen=True, slots=True)
class ClientPlan:
    url: str
    exit_node_id: str
    tap: str
    bridge: str
    mtu: int
    lan_interfaces: tuple[str, ...]
    tls_ca: bool
    with_tpm: bool


def client_yaml(plan: ClientPlan, when: str) -> str:
    lans = ", ".join(plan.lan_interfaces)
    tls = "  tls_ca: exit-ca.pem\n" if plan.tls_ca else ""
    text = f"""\
# ShadowMesh client, written by `shadowmesh init client` ({when}).
# Paths are relative to this file's directory. Every setting: docs/configuration.md.
version: 1

security:
  key_rotation_interval: 1h
  post_quantum_mode: hybrid
  attestation_required: {"true" if plan.with_tpm else "false"}

network:
  mtu: {plan.mtu}
  tap: {plan.tap}
  bridge: {plan.bridge}
  # Put into the bridge at start and given back (with their addresses) at stop.
  lan_interfaces: [{lans}]
  # Frames that reach the bridge unmerged (VMs, containers, a NIC without GRO, QUIC and
  # other UDP) are merged by Linux before the TAP, about twice the throughput for them
  # (the default, network.gro: auto: a veth pair and tc filters beside the TAP, named
  # after it; docs/configuration.md). To join the TAP to the bridge directly instead:
  # gro: software

endpoints:
  connect: {plan.url}
  # The exit's identity: a different key at that address is refused.
  exit_node_id: "{plan.exit_node_id}"
  # This device's credential for that exit (from the join bundle; a secret).
  credential_file: credentials.json
{tls}
keys:
  identity: identity.key
  certificate: device.cert

status:
  listen: 127.0.0.1:9480
  admin_token_file: admin.token

logging:
  level: info
"""
    if plan.with_tpm:
        text += """
tpm:
  # From the exit's operator: the policy its TPM quotes must meet, and its enrolled AK.
  golden_policy: golden.json
  exit_enrolment: exit-enrolment.json
"""
    return text
