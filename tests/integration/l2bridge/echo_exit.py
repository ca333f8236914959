"""A minimal exit process for fault tests: serves tunnels and echoes every batch back.

``python -m tests.integration.l2bridge.echo_exit IDENTITY_FILE CLIENT_ID_HEX MASTER_KEY HANDLE``
admits the one credential HANDLE (base64url) of that client, listens on a free loopback
port, prints it on one line, and serves until killed.
Keepalive 0.25 s and liveness 1 s, so tests see faults within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, serve
from l2bridge.protocol.handshake import ServerHandshake
from l2bridge.transport.admission import TokenVerifier
from l2bridge.transport.credentials import CredentialTable
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import MasterKey, b64_bytes

KEEPALIVE_S = 0.25
LIVENESS_S = 1.0


async def echo(link: Link) -> None:
    with contextlib.suppress(TransportClosed):
        while True:
            await link.send_frames(await link.recv_frames())


async def main(identity_file: str, client_hex: str, master_text: str, handle_text: str) -> None:
    identity = HybridSigningKey.load(identity_file)
    key = MasterKey.from_text(master_text)
    table = CredentialTable()
    handle = b64_bytes(handle_text, 16, "handle")
    table.issue(key, identity.node_id, bytes.fromhex(client_hex), "c", 0, handle=handle)
    authorizer = Authorizer(allow_list=AllowList().add(bytes.fromhex(client_hex), "c"))
    verifier = TokenVerifier(key, identity.node_id, table, per_device=10_000)
    settings = ServerSettings(DecoySite.builtin(), "/ws", verifier)
    server = await serve(
        echo,
        settings,
        lambda: ServerHandshake(identity, authorizer),
        host="127.0.0.1",
        port=0,
        keepalive_s=KEEPALIVE_S,
        liveness_s=LIVENESS_S,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
