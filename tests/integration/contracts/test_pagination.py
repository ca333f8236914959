"""listHealthy over 200 registered nodes, page by page."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

NODES = 200


def test_pagination_over_200_nodes(operator, reporter, kit):
    nodes = [kit.ExitNode.new() for _ in range(NODES)]
    kit.to_window(60)  # all register early in one attestation window
    # One nonce block for the whole batch: it stays within the freshness window.
    for node in nodes:
        quote, block = node.quote(operator)
        operator.register(
            node.node_id, "wss://e/ws", node.ak, quote, block,
            stake_wei=10 * kit.ETHER, voucher=node.voucher(operator),
        )  # fmt: skip
    assert operator.node_count() == NODES
    everyone = [n.node_id for n in nodes]
    assert list(operator.healthy_nodes(page=37)) == everyone
    # Make some unhealthy: ten leave, and one loses reputation.
    for node in nodes[::20]:
        operator.request_withdrawal(node.node_id)
    kit.to_window(5)  # the next window, still on time for every node
    quote, block = nodes[7].quote(operator)
    operator.attest(nodes[7].node_id, quote, block)  # 510 reputation
    healthy = [n.node_id for i, n in enumerate(nodes) if i % 20]
    pages = []
    cursor = 0
    while True:
        page = operator.healthy_page(cursor, 64)
        pages.append(page)
        if page.next_cursor == 0:
            break
        cursor = page.next_cursor
    assert [p.next_cursor for p in pages] == [64, 128, 192, 0]
    assert [i for p in pages for i in p.node_ids] == healthy
    assert list(operator.healthy_nodes(min_reputation=501, page=500)) == [nodes[7].node_id]
    kit.advance(kit.INTERVAL + 1)
    assert list(operator.healthy_nodes(page=500)) == []
