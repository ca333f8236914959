"""Circuits through relaying exits on loopback: real transport, handshakes, relays, switch.

A client telescopes through 3 (and 5) exits; frames cross into the tail's LAN and back;
the first hop never sees the frames in clear; a middle hop's death reaches the client as a
closed circuit; a hop with bad evidence is refused by name; a hop whose own evidence fails
answers DESTROY; a relay's queues stay bounded
(tests/unit/exitnode/test_relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os

import pytest

from attestation.errors import RateLimited
from l2bridge.client.circuit import HOP_TIMEOUT_S, Hop, HopFailed, build
from l2bridge.client.selection import Candidate
from l2bridge.constants import MAX_HOP_EVIDENCE_SIZE, Mode
from l2bridge.protocol.cells import CellKind, parse_cell
from l2bridge.transport.credentials import CredentialWallet
from l2bridge.transport.errors import TransportClosed
from lab.circuitlab import (
    CLIENT,
    dialer,
    fake_checker,
    hop_of,
    lab_builder,
    start_exits,
)

pytestmark = pytest.mark.integration

A, B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
C = bytes.fromhex("02000000000c")


def ether(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + payload


def tunnel_frame(frame: bytes) -> bytes:
    """A frame as the tunnel carries it: the 10-byte virtio-net header (zero: no offloads)."""
    return bytes(10) + frame


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def stop_all(exits) -> None:
    for x in exits:
        await x.kill()


@pytest.mark.parametrize("n", [3, 5])
def test_frames_cross_the_circuit_with_equal_sha256(n):
    async def scenario():
        exits = await start_exits(n)
        try:
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert cl.circuit.length == n and len(cl.hop_ms) == n
            tail = exits[-1]
            blob = os.urandom(200_000)
            chunks = [blob[i : i + 1400] for i in range(0, len(blob), 1400)]
            for i in range(0, len(chunks), 16):
                await cl.send_frames([tunnel_frame(ether(A, B, c)) for c in chunks[i : i + 16]])
            got: list[bytes] = []
            await until(lambda: got.extend(tail.lan_frames()) or len(got) >= len(chunks), 30)
            assert hashlib.sha256(b"".join(f[14:] for f in got)).digest() == (
                hashlib.sha256(blob).digest()
            )
            # ... and back from the tail's LAN to the client.
            back = [ether(B, A, os.urandom(1000)) for _ in range(20)]
            for f in back:
                tail.tap.inject(f)
            received: list[bytes] = []
            async with asyncio.timeout(10):
                while len(received) < len(back):
                    received.extend(bytes(f) for f in await cl.recv_frames())
            assert received == [tunnel_frame(f) for f in back]
            # Only the tail switched anything; hop 1 and the middle hops relayed ciphertext.
            for x in exits[:-1]:
                assert x.lan_frames() == []
                assert x.relay is not None and x.relay.relayed_bytes > 0
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_pqc_only_circuit_of_five_hops():
    async def scenario():
        exits = await start_exits(5, mode=Mode.PQC_ONLY)
        try:
            cl = await build(
                [hop_of(x) for x in exits], dialer(Mode.PQC_ONLY), lambda h: fake_checker,
                mode=Mode.PQC_ONLY,
            )  # fmt: skip
            await cl.send_frames([tunnel_frame(ether(A, B, b"pq" * 100))])
            await until(lambda: bool(exits[-1].lan_frames()))
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_hop_one_sees_only_ciphertext_and_fixed_sizes():
    async def scenario():
        exits = await start_exits(3)
        try:
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            secret = b"TOP-SECRET-PAYLOAD" * 50
            cells = cl.circuit.seal_frames([tunnel_frame(ether(A, B, secret))])
            for c in cells:
                cell = parse_cell(c)
                assert cell.kind is CellKind.RELAY
                assert b"TOP-SECRET" not in bytes(cell.body)
            await cl.link.send_frames(cells)
            await until(lambda: bool(exits[-1].lan_frames()))
            # A cell changed on the way is dropped by the hop whose layer fails, and counted
            # in that exit's metrics (the status page's drops).
            forged = bytearray(cl.circuit.seal_frames([tunnel_frame(ether(A, B, b"z" * 50))])[0])
            forged[-1] ^= 1
            await cl.link.send_frames([bytes(forged)])
            await until(lambda: exits[0].metrics.counters.drops["bad_tag"] == 1)
            assert not exits[-1].lan_frames()
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_circuits_through_the_same_exits_share_their_links():
    """Two clients' circuits through the same three exits: hop 1 and hop 2 each open one
    link to their next hop and carry both circuits on it (their own circuit ids); one
    circuit ending leaves the other working on the same links; the link's end (the tail
    killed) ends the other circuit at its client, and hop 1's link to hop 2 (alive) stays
    open, idle, for circuits to come."""

    async def scenario():
        exits = await start_exits(3)
        killed = []
        seen: set[bytes] = set()

        def tail_saw(payload: bytes) -> bool:
            seen.update(f[14:] for f in exits[2].lan_frames())
            return payload in seen

        try:
            first = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            second = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            relays = [x.relay for x in exits]
            assert all(r is not None for r in relays)
            assert [r.next_links_opened for r in relays] == [1, 1, 0]
            # Each downstream exit serves one circuit link from the exit before it.
            assert len(relays[1].circuit_links) == 1 and len(relays[2].circuit_links) == 1
            (shared,) = relays[0].next_links[(exits[1].node_id, exits[1].url)]
            assert len(shared.hops) == 2
            # (each client's LAN has its own station: the tail's switch gives a MAC to one port)
            for cl, src, tag in ((first, A, b"one"), (second, C, b"two")):
                await cl.send_frames([tunnel_frame(ether(src, B, tag * 50))])
            await until(lambda: tail_saw(b"one" * 50) and tail_saw(b"two" * 50))
            await first.close()
            await until(lambda: len(shared.hops) == 1)
            await second.send_frames([tunnel_frame(ether(C, B, b"still" * 20))])
            await until(lambda: tail_saw(b"still" * 20))
            assert [r.next_links_opened for r in relays] == [1, 1, 0]
            killed.append(exits[2])
            await exits[2].kill()
            with pytest.raises(TransportClosed):
                async with asyncio.timeout(15):
                    while True:
                        await second.recv_frames()
            await until(lambda: not relays[0].hops and not shared.hops)
            assert relays[0].next_links == {shared.key: [shared]}
            assert shared.link.close_reason is None and shared.idle is not None
        finally:
            await stop_all([x for x in exits if x not in killed])

    run(scenario())


def test_a_next_hop_link_outlives_its_last_circuit_for_a_while():
    """Hop 1's link to hop 2 stays open after its only circuit ends: the next circuit
    through the same hops is extended over it (no new link); with no circuit for the idle
    time, it closes, and the next circuit opens a new one."""

    async def scenario():
        exits = await start_exits(3, next_link_idle_s=1.0)
        relays = [x.relay for x in exits]
        key = (exits[1].node_id, exits[1].url)
        try:
            first = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            (shared,) = relays[0].next_links[key]
            (onward,) = relays[1].next_links[(exits[2].node_id, exits[2].url)]
            await first.close()
            await until(lambda: not shared.hops and not relays[0].hops)
            assert shared.link.close_reason is None and relays[0].next_links[key] == [shared]
            gauges = exits[0].metrics.snapshot()["gauges"]
            assert (gauges["relay_next_links"], gauges["relay_next_links_idle"]) == (1.0, 1.0)
            second = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert relays[0].next_links[key] == [shared] and len(shared.hops) == 1
            assert exits[0].metrics.snapshot()["gauges"]["relay_next_links_idle"] == 0.0
            assert [r.next_links_opened for r in relays] == [1, 1, 0]
            await second.send_frames([tunnel_frame(ether(A, B, b"reused" * 20))])
            await until(lambda: any(b"reused" in f for f in exits[2].lan_frames()))
            await second.close()
            # 0.75-1.25 s with no circuit: closed, and no longer offered.
            await until(lambda: None not in (shared.link.close_reason, onward.link.close_reason))
            assert key not in relays[0].next_links and not relays[1].next_links
            third = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert [r.next_links_opened for r in relays] == [2, 2, 0]
            await third.close()
            await until(lambda: not relays[0].hops)
            idle = [s for r in relays for links in r.next_links.values() for s in links]
            assert len(idle) == 2 and all(s.link.close_reason is None for s in idle)
        finally:
            await stop_all(exits)
        # Stopping an exit closes its idle links too: nothing is left open behind it.
        await until(lambda: all(s.link.close_reason is not None for s in idle), timeout=5)
        assert not any(r.next_links for r in relays)

    run(scenario())


def test_killing_a_middle_hop_ends_the_circuit_at_the_client():
    async def scenario():
        exits = await start_exits(3)
        try:
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            await cl.send_frames([tunnel_frame(ether(A, B, b"x" * 100))])
            await until(lambda: bool(exits[2].lan_frames()))
            await exits[1].kill()
            with pytest.raises(TransportClosed):
                async with asyncio.timeout(15):
                    while True:
                        await cl.recv_frames()
            assert cl.ended is not None
            # Hop 1 tore its half down too (no circuit left behind).
            assert exits[0].relay is not None
            await until(lambda: not exits[0].relay.hops)
            # A new circuit through the survivors works.
            again = await build(
                [hop_of(exits[0]), hop_of(exits[2])], dialer(), lambda h: fake_checker
            )
            await again.send_frames([tunnel_frame(ether(A, B, b"y" * 100))])
            await until(lambda: any(b"y" * 100 in f for f in exits[2].lan_frames()))
            await again.close()
            await cl.close()
        finally:
            await stop_all([exits[0], exits[2]])

    run(scenario())


def test_a_hop_with_bad_evidence_is_refused_by_name():
    async def scenario():
        exits = await start_exits(3)
        exits[1].relay.evidence_provider = lambda nonce, node: b"EV" + bytes(32)  # stale
        try:
            with pytest.raises(HopFailed) as info:
                await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert info.value.node_id == exits[1].node_id and info.value.refused
            # Hop 1 closed its link to the refused hop once the client dropped the circuit.
            await until(lambda: not exits[0].relay.hops and not exits[1].relay.hops)
        finally:
            await stop_all(exits)

    run(scenario())


def test_an_unreachable_next_hop_is_reported_and_the_tail_stays_usable():
    async def scenario():
        exits = await start_exits(3)
        await exits[1].kill()
        try:
            with pytest.raises(HopFailed) as info:
                await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert info.value.node_id == exits[1].node_id and not info.value.refused
        finally:
            await stop_all([exits[0], exits[2]])

    run(scenario())


def test_extend_goes_only_to_the_endpoint_the_registry_lists():
    async def scenario():
        exits = await start_exits(3)
        listed = {x.node_id: x.url for x in exits}
        for x in exits:
            assert x.relay is not None
            x.relay.endpoint_of = listed.get
        try:
            # A client names another host for exit 1: hop 0 refuses to connect there.
            elsewhere = Hop(
                Candidate(exits[1].node_id, "ws://127.0.0.1:9/ws", 900, 0.0, b"", b""), "", None
            )
            with pytest.raises(HopFailed) as info:
                await build(
                    [hop_of(exits[0]), elsewhere, hop_of(exits[2])], dialer(),
                    lambda h: fake_checker,
                )  # fmt: skip
            assert info.value.node_id == exits[1].node_id and not info.value.refused
            assert exits[0].metrics.counters.drops["extend_not_in_registry"] == 1
            # The listed endpoints work.
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_builder_rebuilds_without_a_hop_that_fell_out_of_the_registry():
    async def scenario():
        exits = await start_exits(4)
        builder = lab_builder(exits, 3)
        try:
            first = await builder.connect()
            path = [h.candidate.node_id for h in builder.path]
            assert await builder.check_path() is True
            # The middle hop is no longer healthy on chain: the circuit is dropped...
            middle = path[1]
            record = builder.registry.records[middle]
            builder.registry.records[middle] = dataclasses.replace(
                record, healthy=False, status="stale"
            )
            assert await builder.check_path() is False
            assert first.ended is not None
            refusal = builder.refusals.refusal(middle)
            assert refusal is not None and "no longer healthy" in refusal.reason
            # ... and the next one is built without it.
            second = await builder.connect()
            assert middle not in [h.candidate.node_id for h in builder.path]
            assert builder.rebuilds == 1
            await second.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_an_unreadable_relay_certificate_is_a_config_error(tmp_path):
    from exitnode.errors import ExitConfigError
    from exitnode.server import ExitNode
    from tests.integration.l2bridge import nodes

    files, _port = nodes.make_lab(tmp_path)
    path = nodes.edit(
        files.exit_config,
        lambda doc: (
            doc["keys"].update(relay_certificate="missing.cert")
            or doc["endpoints"].update(relay=True)
        ),
    )
    with pytest.raises(ExitConfigError, match=r"keys\.relay_certificate"):
        ExitNode(nodes.config(path))


def test_each_hop_sees_a_token_of_the_hop_before_never_the_clients():
    async def scenario():
        exits = await start_exits(3)
        try:
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            # Hop 1 admitted the client's credential; hops 2 and 3 the relaying exit's own.
            assert [link.admission.device for link in exits[0].links] == [CLIENT.node_id]
            assert [link.admission.device for link in exits[1].links] == [exits[0].node_id]
            assert [link.admission.device for link in exits[2].links] == [exits[1].node_id]
            # The later hops never issued (or saw) a credential naming the client.
            for x in exits[1:]:
                assert x.creds is not None
                assert CLIENT.node_id not in {e.device for e in x.creds.table}
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_a_client_whose_lan_is_silent_still_hears_the_tails_segment():
    """The tail joins its segment as soon as the circuit is built: a broadcast on the tail's
    LAN reaches a client that has not sent one frame (two circuits meeting at one tail used
    to hear nothing from each other until both LANs had spoken)."""

    async def scenario():
        exits = await start_exits(3)
        try:
            cl = await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            tail = exits[-1]
            hello = ether(B, b"\xff" * 6, b"hello")
            received: list[bytes] = []
            async with asyncio.timeout(10):
                while tunnel_frame(hello) not in received:
                    tail.tap.inject(hello)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            received.extend(bytes(f) for f in await cl.recv_frames())
            assert cl.circuit.stats.bytes_out == 0  # no frame was ever sent
            await cl.close()
        finally:
            await stop_all(exits)

    run(scenario())


def test_a_relay_without_a_credential_for_the_next_hop_refuses_the_extend():
    async def scenario():
        exits = await start_exits(2)
        assert exits[0].relay is not None
        exits[0].relay.credentials = CredentialWallet()  # none for exit 1
        try:
            with pytest.raises(HopFailed) as info:
                await build([hop_of(x) for x in exits], dialer(), lambda h: fake_checker)
            assert info.value.node_id == exits[1].node_id and not info.value.refused
            assert exits[0].metrics.counters.drops["extend_no_credential"] == 1
            assert exits[1].links == []  # nothing reached exit 1
        finally:
            await stop_all(exits)

    run(scenario())


@pytest.mark.parametrize("failure", ["tpm", "too large"])
def test_a_hop_whose_own_evidence_fails_answers_destroy_at_once(failure):
    """A local failure at the hop (its TPM fails or is rate-limited; its evidence is more than
    a CREATED carries) is not the client's fault and not a silence: the hop answers DESTROY,
    so the client learns at once and builds through other hops."""

    def provider(nonce: bytes, node_id: bytes) -> bytes:
        if failure == "tpm":
            raise RateLimited("quote budget spent")
        return bytes(MAX_HOP_EVIDENCE_SIZE + 1)

    async def scenario():
        exits = await start_exits(2)
        assert exits[0].relay is not None
        exits[0].relay.evidence_provider = provider
        try:
            hops = [hop_of(x) for x in exits]
            with pytest.raises(HopFailed) as info:
                # well before the client would give up on a silent hop (HOP_TIMEOUT_S)
                async with asyncio.timeout(HOP_TIMEOUT_S / 4):
                    await build(hops, dialer(), lambda h: fake_checker)
            assert info.value.node_id == exits[0].node_id
            assert exits[0].metrics.counters.drops["create_failed_locally"] == 1
        finally:
            await stop_all(exits)

    run(scenario())
