"""close_when_flushed: a closing connection keeps sending while its reader makes progress."""

import asyncio

from l2bridge.transport.server import close_when_flushed


class FakeTransport(asyncio.Transport):
    def __init__(self, buffered: int) -> None:
        super().__init__()
        self.buffered = buffered
        self.closed = False
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def test_waits_for_every_layer_then_closes():
    async def scenario():
        tls, tcp = FakeTransport(1000), FakeTransport(5000)
        close_when_flushed(tls, [tls, tcp], stall_s=1.0)
        for left in (4000, 2000, 0):  # the reader keeps reading, slowly
            await asyncio.sleep(0.2)
            assert not tls.closed and not tls.aborted
            tcp.buffered = left
            tls.buffered = 0
        await asyncio.sleep(0.2)
        assert tls.closed and not tls.aborted

    asyncio.run(scenario())


def test_a_stalled_reader_is_dropped_after_the_send_timeout():
    async def scenario():
        tls, tcp = FakeTransport(0), FakeTransport(5000)
        close_when_flushed(tls, [tls, tcp], stall_s=0.5)
        await asyncio.sleep(0.2)
        assert not tls.closed and not tls.aborted
        await asyncio.sleep(0.8)
        assert tls.aborted and not tls.closed

    asyncio.run(scenario())


def test_nothing_buffered_closes_at_once():
    async def scenario():
        plain = FakeTransport(0)
        close_when_flushed(plain, [plain], stall_s=1.0)
        assert plain.closed

    asyncio.run(scenario())
