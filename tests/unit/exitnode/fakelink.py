"""An in-memory link pair with the ``send_frames``/``recv_frames``/``close`` surface."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


class LinkClosed(ConnectionError):
    pass


class FakeLink:
    def __init__(self, maxsize: int = 4) -> None:
        self.inbox: asyncio.Queue[list[bytes]] = asyncio.Queue(maxsize)
        self.peer: FakeLink | None = None
        self.closed = asyncio.Event()

    async def send_frames(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        assert self.peer is not None
        if self.closed.is_set() or self.peer.closed.is_set():
            raise LinkClosed
        await self.peer.inbox.put([bytes(f) for f in frames])

    async def recv_frames(self) -> list[bytes]:
        if not self.inbox.empty():
            return self.inbox.get_nowait()
        get = asyncio.ensure_future(self.inbox.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            closed.cancel()
            return get.result()
        get.cancel()
        raise LinkClosed

    async def close(self) -> None:
        self.closed.set()
        if self.peer is not None:
            self.peer.closed.set()


def link_pair(maxsize: int = 4) -> tuple[FakeLink, FakeLink]:
    a, b = FakeLink(maxsize), FakeLink(maxsize)
    a.peer, b.peer = b, a
    return a, b
