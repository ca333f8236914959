"""Pieces the ``client`` and ``exit`` commands share: network overrides, logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from l2bridge.errors import L2BridgeError
from l2bridge.node import allocator
from l2bridge.node import audit as audit_log
from l2bridge.node.config import Config, ConfigError


def guarded(
    command: str, func: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """``func`` with a local error (L2BridgeError, OSError) printed as one line naming the
    command, exit status 1, instead of a traceback."""

    def run(ns: argparse.Namespace) -> int:
        try:
            return int(func(ns))
        except (L2BridgeError, OSError) as exc:
            print(f"shadowmesh {command}: {exc}", file=sys.stderr)
            return 1

    return run


def add_network_overrides(parser: argparse.ArgumentParser) -> None:
    """Options the client and the exit share: where the TAP goes and how it runs."""
    parser.add_argument("--tap", help="TAP device name (network.tap)")
    parser.add_argument("--bridge", help="Linux bridge for the TAP, created if missing")
    parser.add_argument(
        "--mtu", type=int, help="TAP MTU (network.mtu; default 1500, 9000 for jumbo frames)"
    )
    offload = parser.add_mutually_exclusive_group()
    offload.add_argument(
        "--offload", dest="vnet_hdr", action="store_true", default=None,
        help="vnet_hdr + checksum/TSO offloads (64 KiB super-frames)",
    )  # fmt: skip
    offload.add_argument("--no-offload", dest="vnet_hdr", action="store_false")
    parser.add_argument("--status-listen", metavar="HOST:PORT", help="override status.listen")


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an exit listens publicly


def apply_overrides(config: Config, ns: argparse.Namespace) -> Config:
    """The config file's values, with whatever the command line set on top."""
    changes = {
        k: v
        for k, v in vars(ns).items()
        if k in ("tap", "bridge", "mtu", "vnet_hdr") and v is not None
    }
    config = dataclasses.replace(config, network=dataclasses.replace(config.network, **changes))
    ep = config.endpoints
    if getattr(ns, "listen", None):
        ep = dataclasses.replace(ep, listen=parse_address(ns.listen, "--listen"))
    if getattr(ns, "connect", None):
        ep = dataclasses.replace(ep, connect=ns.connect)
    if getattr(ns, "exit_node_id", None):
        try:
            ep = dataclasses.replace(ep, exit_node_id=bytes.fromhex(ns.exit_node_id))
        except ValueError:
            raise ConfigError("--exit-node-id: not hex") from None
    config = dataclasses.replace(config, endpoints=ep)
    if ns.status_listen:
        listen = parse_address(ns.status_listen, "--status-listen")
        config = dataclasses.replace(
            config, status=dataclasses.replace(config.status, listen=listen)
        )
    return config


def setup_logging(level: str, *, audit: bool = False) -> None:
    """``logging.level`` for the node's lines; ``logging.audit`` turns the audit trail on."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    audit_log.configure(audit)


# The node's event loop: uvloop (libuv; a loop iteration and a socket callback cost a
# fraction of asyncio's); SHADOWMESH_EVENT_LOOP=asyncio picks the standard loop (to
# compare, or to rule the loop out when debugging).
EVENT_LOOP_ENV = "SHADOWMESH_EVENT_LOOP"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop") == "asyncio":
        return None
    return uvloop.new_event_loop


def run_node(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a node's main coroutine until SIGINT/SIGTERM, on the chosen event loop, with
    the allocator tuned for the data path (``l2bridge.node.allocator``)."""
    allocator.tune()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run_until_signalled(run))


async def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)
