"""Key rotation driven by disciplined clocks on both ends of a real Link (loopback).

The client's clock listens to a simulated GPSDO, the exit's to a simulated SCPI rubidium,
each on its own pseudo-terminal with a different small error. An EpochScheduler on the
client calls ``link.rekey(epoch)`` at every 1 s boundary while frames stream through; the
exit checks each new epoch against its own clock. No frame may be lost.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import time

import pytest

from hardware.serial_port import PySerialPort, SerialSettings
from l2bridge.identity.keys import AllowList, Authorizer, HybridSigningKey
from l2bridge.node.link import Link, connect, serve
from l2bridge.protocol.handshake import ClientHandshake, ServerHandshake
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.errors import TransportClosed
from l2bridge.transport.server import ServerSettings
from lab.clocksim import ClockModel, GpsdoSim, ScpiSim
from lab.credlab import ExitCredentials
from timing import clock as clk
from timing.epoch import EpochScheduler, epoch_matches
from timing.sources import GpsdoSource, ScpiSource

pytestmark = pytest.mark.integration

INTERVAL = 1.0
TOLERANCE = 0.05  # the two clocks agree far better than this
FRAMES = 1500


def _wait_synced(clock: clk.DisciplinedClock, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = clock.status()
        if st.mode == clk.SYNCED and st.sources[0].samples >= 3:
            return
        time.sleep(0.05)
    raise AssertionError(f"clock not synced: {clock.status()}")


def test_both_ends_rotate_on_the_same_boundaries_without_losing_frames():
    exit_key, client_key = HybridSigningKey.generate(), HybridSigningKey.generate()
    with tempfile.TemporaryDirectory(prefix=f"rot-{os.getpid()}-") as d:
        # both devices tell UTC = host + 0.2 s, each with its own small error
        gps = GpsdoSim(f"{d}/gps", ClockModel(offset=0.2, jitter=100e-6, seed=2))
        rb = ScpiSim(f"{d}/rb", ClockModel(offset=0.2003))
        client_clock = clk.DisciplinedClock()
        exit_clock = clk.DisciplinedClock()
        sources = [
            GpsdoSource("gps", client_clock, PySerialPort(SerialSettings(f"{d}/gps"))),
            ScpiSource("rb", exit_clock, PySerialPort(SerialSettings(f"{d}/rb"))),
        ]
        for x in (gps, rb, *sources):
            x.start()
        try:
            _wait_synced(client_clock, 15)
            _wait_synced(exit_clock, 15)
            result = asyncio.run(
                asyncio.wait_for(_transfer(exit_key, client_key, client_clock, exit_clock), 60)
            )
        finally:
            for x in sources:
                x.stop()
            for x in (gps, rb):
                x.stop()
    received, exit_epochs, scheduler_epochs, stats = result
    assert received == list(range(FRAMES))  # every frame, in order
    assert len(scheduler_epochs) >= 3
    seen = [e for e, _ok in exit_epochs]
    assert seen == scheduler_epochs[: len(seen)] and len(seen) >= 3
    assert all(ok for _e, ok in exit_epochs), exit_epochs
    assert stats["rekeys_started"] == len(scheduler_epochs)


async def _transfer(exit_key, client_key, client_clock, exit_clock):
    allow = AllowList().add(client_key.node_id, "c")
    creds = ExitCredentials(exit_key.node_id)
    key = creds.issue(client_key.node_id, "c")
    settings = ServerSettings(DecoySite.builtin(), "/ws", creds.verifier())
    received: list[int] = []
    exit_epochs: list[tuple[int, bool]] = []
    done = asyncio.Event()

    async def on_link(link: Link) -> None:
        generation = link.session.epoch
        try:
            while len(received) < FRAMES:
                for frame in await link.recv_frames():
                    received.append(struct.unpack_from("!I", frame)[0])
                if link.session.epoch != generation:
                    generation = link.session.epoch
                    epoch = link.session.clock_epoch
                    # the exit checks the client's epoch against its own clock
                    ok = epoch_matches(epoch, exit_clock.now(), INTERVAL, TOLERANCE)
                    exit_epochs.append((epoch, ok))
        except TransportClosed:
            pass
        done.set()

    server = await serve(
        on_link,
        settings,
        lambda: ServerHandshake(exit_key, Authorizer(allow_list=allow)),
        host="127.0.0.1",
        port=0,
    )
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    try:
        link = await connect(
            url,
            ClientHandshake(client_key, pinned_node_id=exit_key.node_id),
            credential=key,
            node_id=exit_key.node_id,
        )
        scheduler = EpochScheduler(client_clock.now, INTERVAL)
        fired: list[int] = []
        scheduler.add(lambda e: fired.append(e) if link.rekey(e) else None)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        # stream frames for about four rotations
        for i in range(FRAMES):
            await link.send_frames([struct.pack("!I", i) + b"\x00" * 96])
            await asyncio.sleep(4.5 / FRAMES)
        await asyncio.wait_for(done.wait(), 20)
        stop.set()
        await task
        stats = link.stats()
        await link.close()
    finally:
        server.close()
        await server.wait_closed()
    return received, exit_epochs, fired, stats
