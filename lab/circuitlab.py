"""Relaying exits on loopback for tests and benchmarks: the real transport, handshake,
links, Relay and Switchboard, in one process.

Each ``RelayExit`` serves tunnels like ``ExitNode`` does (``tunnel.serve`` behind the decoy
site, its Authorizer, then ``Relay.admit``: circuit links to the relay, others to the
switch), with an in-memory FakeTap as its LAN, so the tail's segment can be watched.
Every exit admits the client and every other exit (their identities on its allow-list:
the role ``keys.relay_certificate`` plays in a deployment). ``fake_provider`` /
``fake_checker`` stand in for TPM evidence where no swtpm runs: a hash over exactly what
real evidence must cover (the bound nonce and the nodeId), so a hop that answers for another
exchange is still refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import Server

from exitnode.relay import Relay
from exitnode.switch import PortPolicy, Switch
from exitnode.switchboard import Switchboard
from hardware.tap import FakeTap
from l2bridge.client.circuit import Hop
from l2bridge.client.selection import Candidate
from l2bridge.constants import Mode
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node import link as tunnel
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.handshake import ClientHandshake, EvidenceProvider, ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.token import AccessKey, TokenVerifier, mint_token

ACCESS = AccessKey.generate()
CLIENT = HybridSigningKey.generate()
ANY = PortPolicy(vlans=None)


def fake_provider(nonce: bytes, node_id: bytes) -> bytes:
    return b"EV" + hashlib.sha256(nonce + node_id).digest()


def fake_checker(evidence: bytes, nonce: bytes, node_id: bytes) -> None:
    if evidence != fake_provider(nonce, node_id):
        raise ValueError("evidence does not cover this exchange")


@dataclass
class RelayExit:
    identity: HybridSigningKey
    allow: AllowList
    provider: EvidenceProvider | None = fake_provider
    mode: Mode = Mode.HYBRID
    url: str = ""
    metrics: Metrics = field(default_factory=lambda: Metrics("exit"))
    tap: FakeTap = field(default_factory=FakeTap)
    relay: Relay | None = None
    server: Server | None = None
    links: list[tunnel.Link] = field(default_factory=list)

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    async def start(self, port: int = 0) -> RelayExit:
        board = Switchboard(Switch(), self.metrics, local=self.tap)
        self.relay = Relay(
            self.identity, self.metrics, mode=self.mode, board=board, policy=ANY,
            evidence_provider=self.provider, decide_s=0.5,
        )  # fmt: skip
        self._stop = asyncio.Event()
        self._board_task = asyncio.ensure_future(board.run(self._stop))

        async def on_link(link: tunnel.Link) -> None:
            self.links.append(link)
            assert self.relay is not None
            port_link = await self.relay.admit(link)
            if port_link is not None:
                await board.serve_link(port_link, "device", ANY)

        settings = ServerSettings(
            DecoySite.builtin(), "/ws", TokenVerifier(ACCESS, self.node_id), header_timeout=2.0
        )
        self.server = await tunnel.serve(
            on_link,
            settings,
            lambda: ServerHandshake(
                self.identity, Authorizer(allow_list=self.allow), modes=(self.mode,)
            ),
            host="127.0.0.1",
            port=port,
        )
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws"
        return self

    async def kill(self) -> None:
        """Stop serving and drop every link, as a crashed exit does."""
        assert self.server is not None
        self.server.close()
        for link in self.links:
            with contextlib.suppress(Exception):
                await link.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 10)
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._board_task, 5)
        self.tap.close()


async def start_exits(n: int, mode: Mode = Mode.HYBRID) -> list[RelayExit]:
    keys = [HybridSigningKey.generate() for _ in range(n)]
    allow = AllowList().add(CLIENT.node_id, "client")
    for i, k in enumerate(keys):
        allow = allow.add(k.node_id, f"relay-{i}")
    return [await RelayExit(k, allow, mode=mode).start() for k in keys]


def hop_of(x: RelayExit, operator: str = "") -> Hop:
    cand = Candidate(x.node_id, x.url, 900, 0.0, b"", b"")
    return Hop(cand, operator, None)


def dialer(mode: Mode = Mode.HYBRID) -> Callable[[Hop], object]:
    async def dial(hop: Hop) -> tunnel.Link:
        hs = ClientHandshake(CLIENT, mode=mode, pinned_node_id=hop.candidate.node_id)
        return await tunnel.connect(
            hop.candidate.endpoint, hs, access_key=ACCESS, node_id=hop.candidate.node_id
        )

    return dial


def token_for(hop: Hop) -> str:
    return mint_token(ACCESS, hop.candidate.node_id, time.time())
