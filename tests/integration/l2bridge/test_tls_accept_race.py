"""A TLS client whose ClientHello is already in the socket when the exit accepts it gets
its handshake (the exit's own loop, uvloop, and asyncio's).

uvloop starts reading an accepted socket right after ``connection_made``, whatever
``pause_reading`` asked there; with ``start_tls`` started as a plain task, a ClientHello
that was already waiting reached the plain protocol first and was lost to TLS: the
handshake hung until the header timeout and the client's opening timed out (a busy exit
accepts late, so it happened under load). Client and exit in one loop here, so every
ClientHello is in the socket before the exit accepts.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import uvloop

from l2bridge.commands.initfiles import write_private_tls
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings, serve_exit, start_now
from l2bridge.transport.tls import server_context

pytestmark = pytest.mark.integration

HOST = "localhost"


async def _connect_many(ca: Path, cert: Path, key: Path, count: int) -> list[bytes]:
    async def handler(_connection: object) -> None:
        await asyncio.sleep(0)

    settings = ServerSettings(DecoySite.builtin(), "/ws", None)
    server = await serve_exit(
        handler, settings, host="127.0.0.1", port=0, ssl=server_context(cert, key)
    )
    port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context(cafile=str(ca))
    answers = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=HOST),
                5,
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.readline(), 5))
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return answers


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_clienthello_waiting_at_accept_gets_its_handshake(tmp_path: Path, loop: str) -> None:
    ca, cert, key = write_private_tls(tmp_path / "tls", HOST)
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop) == (loop == "uvloop")
        answers = runner.run(_connect_many(ca, cert, key, 20))
    assert answers == [b"HTTP/1.1 200 OK\r\n"] * 20  # the decoy site, over TLS


def test_start_now_runs_the_first_step_at_once_and_the_rest_as_a_task() -> None:
    async def scenario() -> None:
        steps: list[str] = []
        gate = asyncio.get_running_loop().create_future()

        async def job() -> int:
            steps.append("first")
            await gate
            steps.append("second")
            return 7

        task = start_now(job())
        assert steps == ["first"]  # before start_now returned
        gate.set_result(None)
        assert await task == 7 and steps == ["first", "second"]

        async def fails() -> None:
            raise ValueError("at once")

        with pytest.raises(ValueError, match="at once"):
            await start_now(fails())

        cleaned: list[str] = []

        async def waits() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cleaned.append("cancelled inside")
                raise

        task2 = start_now(waits())
        await asyncio.sleep(0.01)
        task2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task2
        assert cleaned == ["cancelled inside"]

    uvloop.run(scenario())
