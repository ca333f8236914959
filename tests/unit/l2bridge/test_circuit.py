"""Multi-hop circuits, sans-I/O: layered seal/open, what each hop can and cannot see."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from l2bridge.constants import (
    ATTESTATION_NONCE_SIZE,
    MAX_FRAME_SIZE,
    MAX_HOP_EVIDENCE_SIZE,
    MAX_HOPS,
    ONION_HEADER_SIZE,
    ONION_SLOT_SIZE,
    RELAY_SIZE_CLASSES,
    Mode,
)
from l2bridge.errors import RecordRejected, StateError
from l2bridge.protocol import onion
from l2bridge.protocol.cells import (
    CellKind,
    Extend,
    Reassembler,
    RelayCommand,
    cell_header,
    handshake_cells,
    parse_cell,
    relay_payloads,
)
from l2bridge.protocol.circuit import ClientCircuit, HopAdded, HopRefused
from tests.unit.l2bridge.circuitnet import NOW, Net, checker, identities

FRAME = bytes(range(256)) * 5 + b"\x01" * 234  # 1514 bytes, like a full Ethernet frame


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_frames_cross_every_circuit_length_both_ways(n):
    net = Net.build(n)
    sent = [FRAME, b"\x02" * 60, os.urandom(9000), os.urandom(65_600)]
    net.send(sent)
    assert net.frames_at_tail == sent
    net.reply(sent)
    assert net.client_frames == sent
    for hop in net.hops:
        assert not hop.stats.drops
    assert not net.client.stats.drops


def test_pqc_only_mode_builds_like_the_ultra_secure_config():
    net = Net.build(5, mode=Mode.PQC_ONLY)
    net.send([FRAME])
    assert net.frames_at_tail == [FRAME]


@pytest.mark.parametrize("n", [3, 5])
def test_every_hop_sees_the_same_sizes_whatever_its_position(n):
    seen: list[tuple[int, str, int]] = []

    def tap(link, direction, body):
        seen.append((link, direction, len(body)))
        return body

    net = Net.build(n)
    net.tap = tap
    net.send([FRAME])
    net.reply([FRAME])
    sizes = {size for _link, _d, size in seen}
    # One size class for a 1514-byte frame, the same header on every link in both directions.
    assert sizes == {ONION_HEADER_SIZE + 2048}


def test_a_middle_hop_opens_only_its_own_layer():
    net = Net.build(3)
    bodies: dict[int, bytes] = {}

    def tap(link, direction, body):
        if direction == "F":
            bodies[link] = body
        return body

    net.tap = tap
    secret = b"\xab" * 1500
    net.send([secret])
    assert net.frames_at_tail == [secret]
    # What hop 1 received: only hop 1's layer opens; hops 2 and 3 cannot open it.
    for other in (1, 2):
        before = sum(net.hops[other].stats.drops.values())
        out = net.hops[other].from_previous(bodies[0], NOW)
        assert out.forward is None and not out.frames
        assert sum(net.hops[other].stats.drops.values()) == before + 1
    # After hop 1 peeled its layer, the frame is still under hops 2 and 3's layers.
    assert secret[:64] not in bodies[1] and secret[:64] not in bodies[2]
    # Hop 1 cannot open what travels between hops 2 and 3 either.
    before = sum(net.hops[0].stats.drops.values())
    assert net.hops[0].from_previous(bodies[2], NOW).forward is None
    assert sum(net.hops[0].stats.drops.values()) == before + 1


@pytest.mark.parametrize("where", ["payload", "own_slot", "later_slot"])
def test_a_tampered_layer_is_dropped_and_counted(where):
    net = Net.build(3)

    def tap(link, direction, body):
        if link != 1 or direction != "F":
            return body
        b = bytearray(body)
        index = {"payload": ONION_HEADER_SIZE + 10, "own_slot": 3, "later_slot": 40}[where]
        b[index] ^= 1
        return bytes(b)

    net.tap = tap
    net.send([FRAME])
    assert net.frames_at_tail == []
    dropped_at = 1 if where in ("payload", "own_slot") else 2
    assert sum(net.hops[dropped_at].stats.drops.values()) == 1
    # The circuit keeps working for cells that were not touched.
    net.tap = None
    net.send([FRAME])
    assert net.frames_at_tail == [FRAME]


def test_tampered_backward_cell_is_dropped_by_the_client():
    net = Net.build(3)

    def tap(link, direction, body):
        if direction == "B" and link == 1:
            b = bytearray(body)
            b[-1] ^= 0x80
            return bytes(b)
        return body

    net.tap = tap
    net.reply([FRAME])
    assert net.client_frames == []
    assert net.client.stats.drops["bad_tag"] == 1


def test_a_replayed_cell_is_dropped():
    net = Net.build(2)
    captured: list[bytes] = []

    def tap(link, direction, body):
        if link == 0 and direction == "F":
            captured.append(body)
        return body

    net.tap = tap
    net.send([FRAME])
    net.tap = None
    net.forward(0, captured[0])
    assert net.frames_at_tail == [FRAME]
    assert net.hops[0].stats.drops["replayed"] == 1


def test_rekey_of_all_layers_loses_no_frame():
    net = Net.build(3)
    early = net.client.seal_frames([b"before" * 100])  # sealed in generation 0 ...
    net.client.ratchet()
    net.send([b"after" * 100])  # ... generation 1 arrives first
    net.deliver_from_client(early)  # the old generation is still accepted (grace)
    assert net.frames_at_tail == [b"after" * 100, b"before" * 100]
    for hop in net.hops:
        hop.ratchet()
    net.reply([FRAME])
    assert net.client_frames == [FRAME]
    for layer in net.client.hops:
        assert layer.forward.generation == 1 and layer.backward.generation == 1
    assert not any(h.stats.drops for h in net.hops)


def _layer_pair():
    fwd, _ = onion.derive_hop(b"k" * 64, b"salt")
    fwd2, _ = onion.derive_hop(b"k" * 64, b"salt")
    return onion.LayerSender(fwd, onion.FORWARD), onion.LayerReceiver(fwd2, onion.FORWARD)


def test_an_idle_circuit_keeps_up_with_many_epochs():
    sender, receiver = _layer_pair()
    for _ in range(50):  # fifty clock epochs without a cell
        sender.ratchet()
    ct, slot = sender.seal(b"x" * 512, 0)
    assert receiver.open(slot, ct, NOW) == b"x" * 512
    assert receiver.generation == sender.generation == 1


def test_a_receiver_does_not_jump_generations():
    sender, receiver = _layer_pair()
    sender.ratchet()
    sender.seal(b"lost" * 128, 0)  # never delivered
    sender.ratchet()
    ct, slot = sender.seal(b"x" * 512, 1)  # two generations ahead of the receiver
    with pytest.raises(RecordRejected) as info:
        receiver.open(slot, ct, NOW)
    assert info.value.reason == "unknown_generation"
    assert receiver.generation == 0


def test_forged_slots_and_cross_direction_cells_are_refused():
    sender, receiver = _layer_pair()
    ct, slot = sender.seal(b"x" * 512, 7)
    with pytest.raises(RecordRejected) as info:
        receiver.open(os.urandom(16) + slot[16:], ct, NOW)
    assert info.value.reason in ("bad_slot", "unknown_generation", "bad_tag")
    # The same keys for the other direction: the associated data differs.
    fwd, _ = onion.derive_hop(b"k" * 64, b"salt")
    backward_receiver = onion.LayerReceiver(fwd, onion.BACKWARD)
    with pytest.raises(RecordRejected) as info:
        backward_receiver.open(slot, ct, NOW)
    assert info.value.reason == "bad_tag"
    assert receiver.open(slot, ct, NOW) == b"x" * 512


def test_the_hop_must_be_the_registry_node():
    net = Net.build(1)
    keys = identities(3)
    # The tail answers with its own key, but the client expects another nodeId.
    net.keys = [keys[0], keys[2]]
    cells = net.client.extend(keys[1].node_id, "ws://x/ws", checker)
    net.deliver_from_client(cells)
    refused = [e for e in net.events if isinstance(e, HopRefused)]
    assert refused and refused[0].node_id == keys[1].node_id
    assert net.client.length == 1


def test_evidence_for_another_exchange_is_refused():
    net = Net.build(1)
    net.keys = identities(2)
    # The hop replays evidence made for a different nonce (another client's exchange).
    net.providers[1] = lambda nonce, node: b"EV" + bytes(32)
    net.deliver_from_client(net.client.extend(net.keys[1].node_id, "ws://x/ws", checker))
    refused = net.events[-1]
    assert isinstance(refused, HopRefused) and not refused.usable
    assert net.client.length == 1
    # Hop 1 still holds a link to the refused hop: the circuit carries nothing more.
    with pytest.raises(StateError):
        net.send([FRAME])
    with pytest.raises(StateError):
        net.client.extend(identities(3)[2].node_id, "ws://x/ws", checker)


def test_extension_messages_survive_fragmentation_with_large_evidence():
    net = Net.build(1)
    net.keys = identities(2)
    big = os.urandom(30_000)
    net.providers[1] = lambda nonce, node: big + nonce + node
    seen = Counter()

    def tap(link, direction, body):
        seen[direction] += 1
        return body

    net.tap = tap

    def check(evidence, nonce, node):
        if evidence != big + nonce + node:
            raise ValueError("bad")

    net.deliver_from_client(net.client.extend(net.keys[1].node_id, "ws://x/ws", check))
    assert isinstance(net.events[-1], HopAdded)
    assert net.events[-1].evidence[:30_000] == big
    assert seen["B"] > 15  # EXTENDED went back in many fragments


def test_a_real_exits_evidence_fits_the_first_hop_and_an_extension():
    """An exit's evidence carries its IMA list (~73 kB for the ~1,050 files a ShadowMesh
    exit loads): CREATED (hop 1) and EXTENDED (later hops) must carry up to the hop
    evidence limit."""
    size = MAX_HOP_EVIDENCE_SIZE - 2 * ATTESTATION_NONCE_SIZE
    big = os.urandom(size)
    net = Net(mode=Mode.HYBRID, keys=identities(2), client=ClientCircuit(7, mode=Mode.HYBRID))
    net.providers[0] = net.providers[1] = lambda nonce, node: big + nonce[:32] + node

    def check(evidence, nonce, node):
        if evidence[:size] != big:
            raise ValueError("bad")

    net.deliver_from_client(net.client.first_hop(net.keys[0].node_id, check))
    net.deliver_from_client(net.client.extend(net.keys[1].node_id, "ws://x/ws", check))
    added = [e for e in net.events if isinstance(e, HopAdded)]
    assert [e.length for e in added] == [1, 2]
    assert all(e.evidence[:size] == big for e in added)


def test_a_lost_fragment_drops_the_partial_message():
    drops: Counter[str] = Counter()
    r = Reassembler(drops)
    parts = list(relay_payloads(RelayCommand.EXTENDED, os.urandom(5000)))
    assert len(parts) == 3
    assert r.add(0, parts[0]) is None
    assert r.add(2, parts[2]) is None  # part 1 lost on the way
    assert drops["fragment_gap"] == 1
    whole = os.urandom(5000)
    parts = list(relay_payloads(RelayCommand.EXTENDED, whole))
    got = [r.add(10 + i, p) for i, p in enumerate(parts)]
    assert got[-1] is not None and got[-1].data == whole


def test_reassembly_is_bounded():
    drops: Counter[str] = Counter()
    r = Reassembler(drops, limit=4000)
    for i, part in enumerate(relay_payloads(RelayCommand.EXTENDED, bytes(9000))):
        assert r.add(i, part) is None
    assert drops["message_too_large"] == 1


def test_cells_have_fixed_size_classes():
    cells = handshake_cells(CellKind.CREATE, 1, b"x" * 5000)
    assert len({len(c) for c in cells}) == 1 and len(cells) == 3
    for size in (1, 100, 1514, 9000, 65_000):
        (payload,) = relay_payloads(RelayCommand.DATA, bytes(size))
        assert len(payload) in RELAY_SIZE_CLASSES
    # A GSO super-frame goes in two cells: the largest class, then the smallest that fits.
    first, second = relay_payloads(RelayCommand.DATA, bytes(MAX_FRAME_SIZE))
    assert (len(first), len(second)) == (RELAY_SIZE_CLASSES[-1], 512)


def test_every_cell_fits_in_one_link_frame():
    net = Net.build(5)
    cells = net.client.seal_frames([os.urandom(MAX_FRAME_SIZE), os.urandom(9014), b"x"])
    assert len(cells) == 4
    assert max(map(len, cells)) <= MAX_FRAME_SIZE
    net.deliver_from_client(cells)
    assert [len(f) for f in net.frames_at_tail] == [MAX_FRAME_SIZE, 9014, 1]
    bodies = net.hops[-1].originate([os.urandom(MAX_FRAME_SIZE)])
    assert len(bodies) == 2 and all(len(b) + 9 <= MAX_FRAME_SIZE for b in bodies)


def test_circuit_rules():
    c = ClientCircuit(1)
    with pytest.raises(StateError):
        c.seal_frames([b"x"])
    with pytest.raises(StateError):
        c.extend(b"\0" * 32, "ws://a/ws", None)
    net = Net.build(MAX_HOPS)
    with pytest.raises(StateError):
        net.client.extend(os.urandom(32), "ws://a/ws", checker)
    with pytest.raises(StateError):  # a node never appears twice
        Net.build(1).client.extend(identities(1)[0].node_id, "ws://a/ws", checker)


def test_extend_rejects_non_websocket_endpoints():
    data = Extend(b"\1" * 32, "http://a/", b"c").encode()
    with pytest.raises(Exception) as info:
        Extend.decode(data)
    assert "malformed" in str(info.value)


def test_header_is_five_slots():
    assert ONION_HEADER_SIZE == MAX_HOPS * ONION_SLOT_SIZE
    net = Net.build(2)
    cell = parse_cell(net.client.seal_frames([b"x"])[0])
    assert len(cell.body) == ONION_HEADER_SIZE + 512


def test_unreachable_next_hop_leaves_a_usable_tail():
    from l2bridge.protocol.cells import ExtendFailure

    net = Net.build(1)
    keys = identities(3)
    cells = net.client.extend(keys[1].node_id, "ws://x/ws", checker)
    # Hop 1 gets the EXTEND but cannot reach the next hop.
    for frame in cells:
        out = net.hops[0].from_previous(bytes(parse_cell(frame).body), NOW)
    assert out.extend is not None and out.extend.node_id == keys[1].node_id
    for body in net.hops[0].extend_failed(ExtendFailure.UNREACHABLE):
        net.backward(0, body)
    refused = net.events[-1]
    assert isinstance(refused, HopRefused) and refused.usable
    net.keys = [keys[0], keys[2]]
    net.deliver_from_client(net.client.extend(keys[2].node_id, "ws://y/ws", checker))
    assert isinstance(net.events[-1], HopAdded) and net.client.length == 2
    net.send([FRAME])
    assert net.frames_at_tail == [FRAME]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_only_the_tail_joins_its_segment_and_before_any_frame(n):
    """A built circuit asks the tail (and only the tail) to join its L2 segment, so frames
    from the far side reach a client whose own LAN has said nothing yet; middle hops see one
    cell of an ordinary size."""
    net = Net.build(n)
    sizes: list[int] = []
    net.tap = lambda link, direction, body: sizes.append(len(body)) or body
    net.deliver_from_client(net.client.join_segment())
    assert net.joined == [n - 1] and net.frames_at_tail == []
    assert len(set(sizes)) == 1 and len(sizes) == n
    net.send([FRAME])  # data joins too (a tail that missed the padding)
    assert net.joined == [n - 1, n - 1] and net.frames_at_tail == [FRAME]
    for hop in net.hops:
        assert not hop.stats.drops


def test_filler_slots_are_never_reused():
    """Filler comes from a pool of random bytes per layer; no two cells (nor two slots of
    one cell) carry the same filler, or hops could line cells up by it."""
    net = Net.build(1)
    bodies: list[bytes] = []
    net.tap = lambda link, direction, body: bodies.append(body) or body
    net.send([FRAME] * 300)  # more cells than one pool holds
    fillers = [b[i : i + 32] for b in bodies for i in range(32, 160, 32)]
    assert len(fillers) == 4 * 300 and len(set(fillers)) == len(fillers)


def test_a_relay_writes_the_next_links_cell_in_one_buffer():
    """exitnode/relay.py passes the next link's cell header as ``prefix``: the forwarded
    buffer is a whole cell for that link, which the next hop opens like any other."""
    net = Net.build(3)
    (cell,) = net.client.seal_frames([FRAME])
    header = cell_header(CellKind.RELAY, 0xABCDEF01)
    out = net.hops[0].from_previous(parse_cell(cell).body, NOW, header)
    assert out.forward is not None
    forwarded = parse_cell(out.forward)
    assert forwarded.kind is CellKind.RELAY and forwarded.circuit == 0xABCDEF01
    assert len(forwarded.body) == len(parse_cell(cell).body)
    net.forward(1, bytes(forwarded.body))
    assert net.frames_at_tail == [FRAME]
    # Backward the same way: the prefix and our layer over the body, one buffer.
    (body,) = net.hops[2].originate([FRAME])
    wrapped = net.hops[1].from_next(body, header)
    assert wrapped is not None and parse_cell(wrapped).circuit == 0xABCDEF01
    net.backward(0, net.hops[0].from_next(bytes(parse_cell(wrapped).body)) or b"")
    assert net.client_frames == [FRAME]


def test_delivered_frames_stay_intact_while_more_traffic_passes():
    """Frames come out as views of the opened payload and layers reuse scratch buffers:
    a frame already delivered must never change when later cells are sealed or opened."""
    net = Net.build(3)
    first = [os.urandom(1500), os.urandom(65_000), os.urandom(60)]
    net.send(first)
    net.reply(first)
    kept_tail, kept_client = list(net.frames_at_tail), list(net.client_frames)
    for _ in range(3):
        more = [os.urandom(1500), os.urandom(65_000), os.urandom(60)]
        net.send(more)
        net.reply(more)
    assert [bytes(f) for f in kept_tail] == first
    assert [bytes(f) for f in kept_client] == first
    assert not any(h.stats.drops for h in net.hops) and not net.client.stats.drops


def test_a_bad_cell_does_not_disturb_the_layers_scratch():
    sender, receiver = _layer_pair()
    ct, slot = sender.seal(b"a" * 2048, 1)
    bad = bytearray(ct)
    bad[5] ^= 1
    with pytest.raises(RecordRejected):
        receiver.open(slot, bad, NOW)
    ct2, slot2 = sender.seal(b"b" * 512, 2)
    assert receiver.open(slot2, ct2, NOW) == b"b" * 512
    assert receiver.open(slot, ct, NOW) == b"a" * 2048  # the untouched cell still opens
