"""wss:// between the real ExitNode and ClientNode, with a private CA the test makes.

The exit serves TLS from endpoints.tls_cert/tls_key; a client trusting that CA
(endpoints.tls_ca) brings the tunnel up; one using only the system's CAs refuses the
certificate; one reaching the exit by a name the certificate does not hold refuses it; a
plain ws:// client gets no tunnel from the TLS port; a client that connects again resumes
its TLS session, with a fresh ticket each time.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exitnode.errors import ExitConfigError
from exitnode.server import ExitNode, ExitOptions
from l2bridge.client.node import ClientNode
from l2bridge.transport.errors import UpgradeRefused
from tests.integration.l2bridge import nodes

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_cert(directory: Path) -> None:
    """ca.pem, and exit.pem/exit.key for IP 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .subject_name(_name("exit"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "exit.pem").write_bytes(cert.public_bytes(pem))
    (directory / "exit.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "exit.key").chmod(0o600)


def test_tunnel_over_wss_with_private_ca(tmp_path: Path, fake_host: None) -> None:
    lab, port = nodes.make_lab(tmp_path)
    make_ca_and_cert(tmp_path)

    def exit_tls(doc: dict[str, Any]) -> None:
        doc["endpoints"].update(tls_cert="exit.pem", tls_key="exit.key")

    def client_url(url: str, ca: str | None) -> Path:
        path = tmp_path / f"client-{len(list(tmp_path.glob('client-*')))}.yaml"
        path.write_text(lab.client_configs["client"].read_text())

        def change(doc: dict[str, Any]) -> None:
            doc["endpoints"].update(connect=url, tls_ca=ca)

        return nodes.edit(path, change)

    exit_cfg = nodes.config(nodes.edit(lab.exit_config, exit_tls))
    trusting = client_url(f"wss://127.0.0.1:{port}/ws", "ca.pem")
    system_cas = client_url(f"wss://127.0.0.1:{port}/ws", None)
    wrong_name = client_url(f"wss://localhost:{port}/ws", "ca.pem")
    plain = client_url(f"ws://127.0.0.1:{port}/ws", None)

    async def scenario() -> None:
        async with nodes.running_exit(exit_cfg) as exit_node:
            assert exit_node.tls is not None
            client = ClientNode(nodes.config(trusting), status=False)
            link = await client.connect()
            try:
                ssl_object = link._ws.transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
                assert ssl_object is not None
                assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
                assert client.link is not None and client.link.session.established
            finally:
                await link.close()
            # Like a browser, the client resumes its TLS session when it connects again, with
            # a new ticket each time (a ticket travels in the clear: offered twice, it would
            # link the two connections).
            for _ in range(2):
                link = await client.connect()
                try:
                    ssl_object = link._ws.transport.get_extra_info("ssl_object")  # type: ignore[attr-defined]
                    assert ssl_object.session_reused
                finally:
                    await link.close()
            offered = list(client.tls._offered)
            assert len(offered) == 2 and offered[0] != offered[1]
            with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
                await ClientNode(nodes.config(system_cas), status=False).connect()
            with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
                await ClientNode(nodes.config(wrong_name), status=False).connect()
            with pytest.raises(UpgradeRefused):
                await ClientNode(nodes.config(plain), status=False).connect()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_exit_refuses_half_or_unusable_tls_settings(tmp_path: Path) -> None:
    lab, _port = nodes.make_lab(tmp_path)
    make_ca_and_cert(tmp_path)

    def only_cert(doc: dict[str, Any]) -> None:
        doc["endpoints"].update(tls_cert="exit.pem")

    with pytest.raises(ExitConfigError, match="set both or neither"):
        ExitNode(nodes.config(nodes.edit(lab.exit_config, only_cert)), ExitOptions(status=False))

    # A certificate where the key should be: refused by OpenSSL, naming the files.
    (tmp_path / "not-a-key.pem").write_bytes((tmp_path / "ca.pem").read_bytes())
    (tmp_path / "not-a-key.pem").chmod(0o600)

    def wrong_key(doc: dict[str, Any]) -> None:
        doc["endpoints"].update(tls_cert="exit.pem", tls_key="not-a-key.pem")

    with pytest.raises(ExitConfigError, match=r"endpoints\.tls_cert: cannot load"):
        ExitNode(nodes.config(nodes.edit(lab.exit_config, wrong_key)), ExitOptions(status=False))

    # A key others may read: refused before it is used, naming the permissions.
    (tmp_path / "exit.key").chmod(0o644)

    def open_key(doc: dict[str, Any]) -> None:
        doc["endpoints"].update(tls_cert="exit.pem", tls_key="exit.key")

    with pytest.raises(ExitConfigError, match=r"exit\.key: permissions too open"):
        ExitNode(nodes.config(nodes.edit(lab.exit_config, open_key)), ExitOptions(status=False))
