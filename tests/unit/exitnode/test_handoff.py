"""The supervisor's hand-over of tunnel connections to its workers (exitnode.handoff), with
real sockets: a listening TCP socket on loopback, the Unix socket pairs the descriptors
travel over, and a worker's intake on an event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from exitnode.handoff import Balance, Dispatcher, Intake, channel_pair, listen
from l2bridge.logsummary import Summary
from l2bridge.transport.caps import ConnectionCaps


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_worker_with_fewest_open_goes_first_and_ties_take_turns() -> None:
    balance = Balance(3)
    for i in range(3):
        balance.ready(i)
    got = []
    for _ in range(6):
        first = balance.order()[0]
        balance.took(first)
        got.append(first)
    assert got == [0, 1, 2, 0, 1, 2]
    balance.closed(1)
    balance.closed(1)
    assert balance.order()[0] == 1 and balance.open == [2, 0, 2]
    balance.gone(2)  # it died: its connections went with it, and it gets none
    assert balance.order() == [1, 0] and balance.open[2] == 0


@contextlib.contextmanager
def dispatcher(
    workers: int,
    clock: Clock | None = None,
    caps: ConnectionCaps | None = None,
    summary: Summary | None = None,
) -> Iterator[tuple[Dispatcher, int, list[socket.socket]]]:
    listeners = listen("127.0.0.1", 0, 16)
    port = listeners[0].getsockname()[1]
    d = Dispatcher(
        listeners, workers, caps=caps, summary=summary, hold_s=5.0, monotonic=clock or Clock()
    )
    theirs = []
    for i in range(workers):
        mine, their = channel_pair()
        d.attach(i, mine)
        theirs.append(their)
    try:
        yield d, port, theirs
    finally:
        d.close()
        for sock in theirs:
            sock.close()


def received(channel: socket.socket) -> socket.socket:
    return handed(channel)[1]


def handed(channel: socket.socket) -> tuple[bytes, socket.socket]:
    """(the connection's number, the connection) as a worker receives them."""
    channel.settimeout(2)
    message, fds, _, _ = socket.recv_fds(channel, 8, 8)
    assert len(message) == 8 and len(fds) == 1
    return message, socket.socket(fileno=fds[0])


def test_connections_are_spread_evenly_and_each_worker_gets_the_real_connection() -> None:
    with dispatcher(2) as (d, port, theirs):
        d.ready(0)
        d.ready(1)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        d.start()
        served = [
            received(theirs[0]),
            received(theirs[1]),
            received(theirs[0]),
            received(theirs[1]),
        ]
        peers = sorted(s.getpeername() for s in served)
        assert peers == sorted(c.getsockname() for c in clients)
        # What a client sends arrives at the worker that got its connection, and back.
        for s in served:
            for c in clients:
                if c.getsockname() == s.getpeername():
                    c.sendall(b"hello")
                    s.settimeout(2)
                    assert s.recv(5) == b"hello"
                    s.sendall(b"back")
                    c.settimeout(2)
                    assert c.recv(4) == b"back"
        for sock in (*served, *clients):
            sock.close()


def test_a_busy_worker_gets_none_until_the_others_catch_up_and_ends_count() -> None:
    with dispatcher(2) as (d, _, theirs):
        d.ready(0)
        a, b = socket.socketpair()
        with a, b:
            assert [d.hand(a) for _ in range(3)] == [0, 0, 0]  # worker 1 was not up
            d.ready(1)
            assert [d.hand(a) for _ in range(4)] == [1, 1, 1, 0]
            # Worker 0 says two of its connections ended: it is the less busy again.
            for _ in range(2):
                number, conn = handed(theirs[0])
                conn.close()
                theirs[0].send(number)
            assert d.open_connections() == {0: 2, 1: 3}
            assert d.hand(a) == 0


def test_the_caps_hold_for_the_whole_exit_over_every_worker() -> None:
    # Per worker each would take two from a source; the exit takes two in all.
    screening = Summary(logging.getLogger("test"), "screened")
    with dispatcher(2, caps=ConnectionCaps(3, 2), summary=screening) as (d, _, theirs):
        d.ready(0)
        d.ready(1)
        a, b = socket.socketpair()
        with a, b:
            assert [d.hand(a, "198.51.100.7") for _ in range(2)] == [0, 1]
            assert d.hand(a, "198.51.100.7") is None  # over the per-source cap
            assert d.hand(a, "203.0.113.9") == 0
            assert d.hand(a, "203.0.113.10") is None  # over the total
            # One of the source's connections ends at its worker: its slot is free.
            number, conn = handed(theirs[0])
            conn.close()
            theirs[0].send(number)
            assert d.hand(a, "198.51.100.7") is not None
            # A worker that dies takes its connections' slots with it.
            d.lost(1)
            assert d.hand(a, "203.0.113.10") == 0
    # The refusals are counted where the exit's metrics read them.
    assert screening.total == {"over a connection cap": 2}


def test_connections_wait_for_a_worker_that_is_starting_then_for_one_that_died() -> None:
    clock = Clock()
    with dispatcher(2, clock) as (d, _, _theirs):
        assert d.holding()  # nobody serves yet
        d.ready(0)
        assert d.holding()  # worker 1 is still starting
        clock.now += 5.0
        assert not d.holding()  # not forever: it is late, the others serve
        d.ready(1)
        assert not d.holding()
        d.lost(1)  # it died and will start again: its clients are to come back to it
        assert d.holding()
        mine, their = channel_pair()
        with their:
            d.attach(1, mine)
            clock.now += 1.0
            assert d.holding()
            d.ready(1)
            assert not d.holding()


def test_a_dead_or_stuck_worker_is_passed_over_and_with_none_left_the_connection_closes() -> None:
    screening = Summary(logging.getLogger("test"), "screened")
    with dispatcher(2, summary=screening) as (d, port, theirs):
        d.ready(0)
        d.ready(1)
        theirs[0].close()  # worker 0's process is gone
        a, b = socket.socketpair()
        with a, b:
            assert d.hand(a) == 1
            assert d.hand(a) == 1
            # Worker 1 stops reading: once its channel is full it is passed over too.
            for _ in range(10_000):
                if d.hand(a) is None:
                    break
            else:
                pytest.fail("the channel never filled")
        # Through the accepting thread, a client whose connection nobody can take is closed.
        client = socket.create_connection(("127.0.0.1", port))
        d.start()
        client.settimeout(5)
        with client:
            assert client.recv(1) == b""
    # Each connection closed unserved is counted with the screening's (for the metrics).
    assert screening.total["every worker busy or gone"] == 2


def test_a_failing_round_does_not_stop_the_accepting_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with dispatcher(1) as (d, port, theirs):
        d.ready(0)
        real = d._round
        failures = []

        def round_once_broken(selector: selectors.BaseSelector) -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("a bug")
            real(selector)

        monkeypatch.setattr(d, "_round", round_once_broken)
        d.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            served = received(theirs[0])
            assert served.getpeername() == client.getsockname()
            served.close()
        assert failures and d.accepting


def test_the_accepting_thread_stops_and_the_port_is_closed() -> None:
    with dispatcher(1) as (d, port, _):
        d.ready(0)
        assert not d.accepting
        d.start()
        assert d.accepting
        d.close()
        assert not d.accepting
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


def test_listen_names_the_address_it_cannot_take() -> None:
    with contextlib.ExitStack() as stack:
        taken = listen("127.0.0.1", 0, 4)
        for sock in taken:
            stack.callback(sock.close)
        with pytest.raises(OSError):
            listen("127.0.0.1", taken[0].getsockname()[1], 4)


def test_the_intake_adopts_each_connection_and_notices_a_gone_supervisor() -> None:
    async def main() -> None:
        mine, theirs = channel_pair()
        adopted: list[tuple[socket.socket, Callable[[], None]]] = []
        gone = asyncio.Event()

        async def adopt(sock: socket.socket, closed: Callable[[], None]) -> None:
            adopted.append((sock, closed))

        intake = Intake(theirs, adopt, on_gone=gone.set)
        intake.start()
        a, b = socket.socketpair()
        with a, b:
            socket.send_fds(mine, [(1).to_bytes(8, "big")], [a.fileno()])
            socket.send_fds(mine, [(2).to_bytes(8, "big")], [a.fileno()])
            socket.send_fds(mine, [b"nonsense"[:3]], [a.fileno()])  # not a supervisor's
            deadline = time.monotonic() + 2
            while len(adopted) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(adopted) == 2
            adopted[0][0].sendall(b"x")
            assert b.recv(1) == b"x"  # the very connection, not a copy of its bytes
            adopted[1][1]()  # the second one ended: the supervisor hears its number
            mine.settimeout(2)
            assert mine.recv(8) == (2).to_bytes(8, "big")
            mine.close()
            await asyncio.wait_for(gone.wait(), 2)
        for sock, _ in adopted:
            sock.close()
        assert theirs.fileno() == -1

    asyncio.run(main())
