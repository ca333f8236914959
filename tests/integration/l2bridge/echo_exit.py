"""A minimal exit process for fault tests: serves tunnels and echoes every batch back.

``python -m tests.integration.l2bridge.echo_exit IDENTITY_FILE CLIENT_ID_HEX ACCESS_KEY``
listens on a free loopback port, prints it on one line, and serves until killed.
Keepalive 0.25 s and liveness 1 s, so tests see faults within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, serve
from l2bridge.protocol.handshake import ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import AccessKey, TokenVerifier

KEEPALIVE_S = 0.25
LIVENESS_S = 1.0


async def echo(link: Link) -> None:
    with contextlib.suppress(TransportClosed):
        while True:
            await link.send_frames(await link.recv_frames())


async def main(identity_file: str, client_hex: str, access_key: str) -> None:
    identity = HybridSigningKey.load(identity_file)
    key = AccessKey.from_text(access_key)
    authorizer = Authorizer(allow_list=AllowList().add(bytes.fromhex(client_hex), "c"))
    settings = ServerSettings(DecoySite.builtin(), "/ws", TokenVerifier(key, identity.node_id))
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
    asyncio.run(main(*sys.argv[1:4]))
