"""Revoking a device's certificate through the management API cancels its credentials:
the gate refuses them at once (live list) and the table on disk marks them revoked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from exitnode.peers import ExitManagement, PeerTable
from exitnode.server import ExitNode, ExitOptions
from l2bridge import codec
from l2bridge.identity.keyfiles import CRL_LABEL, load_certificate, save_revocations
from l2bridge.node.config import load_config
from l2bridge.node.credfiles import load_table, load_wallet
from l2bridge.transport.token import mint_token
from lab import provision


def test_management_revoke_cancels_the_devices_credentials(tmp_path: Path) -> None:
    lab = provision.provision(tmp_path, exit_host="127.0.0.1", clients=("laptop", "desk"))
    save_revocations(lab.admin.sign_list([], 1), tmp_path / "revoked.list")
    text = lab.exit_config.read_text() + "\n"
    lab.exit_config.write_text(
        text.replace(
            "  admin_public: admin.pub\n",
            "  admin_public: admin.pub\n  revocations: revoked.list\n",
        )
    )
    node = ExitNode(load_config(lab.exit_config, env={}), ExitOptions(status=False))
    table_path = node.config.keys.credentials
    assert table_path is not None
    serial = load_certificate(tmp_path / "laptop.cert").serial
    revoked = lab.admin.revoke(None, serial, "lost", int(time.time()))
    armored = codec.armor(CRL_LABEL, lab.admin.sign_list(revoked.entries, 2).encode())
    # The credential of each device, as its client holds it.
    creds = {
        name: load_wallet(tmp_path / f"{name}.credentials.json").for_exit(lab.exit_node_id)
        for name in ("laptop", "desk")
    }
    api = ExitManagement(PeerTable(), node.authorizer, tmp_path / "revoked.list",
                         cancel_credentials=node.cancel_credentials)  # fmt: skip
    out = asyncio.run(api.install_revocations(armored))
    assert out["credentials_cancelled"] == ["laptop"]
    on_disk = {e.name: e.revoked for e in load_table(table_path)}
    assert on_disk == {"laptop": True, "desk": False}
    now = time.time()
    laptop_cred, desk_cred = creds["laptop"], creds["desk"]
    assert laptop_cred is not None and desk_cred is not None
    assert node.verifier.check(mint_token(laptop_cred, now), now) is None
    assert node.verifier.rejected["revoked"] == 1
    assert node.verifier.check(mint_token(desk_cred, now), now) is not None
    # The watcher then installs the table saved under the lock; the revocation holds.
    assert node.reload_credentials() is True
    assert {e.name: e.revoked for e in node.verifier.table} == {"laptop": True, "desk": False}
    assert node.verifier.check(mint_token(laptop_cred, now), now) is None
    assert node.reload_credentials() is False
