"""``shadowmesh client``: bridge a LAN to an exit node until SIGINT/SIGTERM.

The TAP joins the Linux bridge the operator names (created when missing), so every host
on that bridge's LAN reaches the far side. The link is re-established with backoff
whenever the exit goes away. Also holds the small pieces the exit's command shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import secrets
import signal
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from hardware import netns
from hardware.tap import FrameDevice, TapConfig, TapError, open_tap
from l2bridge import link as tunnel
from l2bridge.client import Backoff, Client, FrameLink
from l2bridge.client_layers import pinned_attestation, registry_finder, tunnel_clock
from l2bridge.config import Config, ConfigError, ensure_startable, load_config
from l2bridge.constants import ATTESTATION_NONCE_SIZE, Mode
from l2bridge.cover import obfuscation_settings
from l2bridge.errors import L2BridgeError
from l2bridge.failover import DialSettings
from l2bridge.handshake import ClientHandshake, EvidenceChecker
from l2bridge.identity import HybridSigningKey, read_private_file
from l2bridge.keyfiles import load_certificate
from l2bridge.metrics import Metrics
from l2bridge.rotation import RotationDriver
from l2bridge.session import SessionConfig
from l2bridge.status import StatusServer
from l2bridge.transport.tls import TlsError, client_context
from l2bridge.transport.token import AccessKey

log = logging.getLogger("shadowmesh.client")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration (see client.yaml)")
    add_network_overrides(parser)
    parser.add_argument("--connect", metavar="URL", help="override endpoints.connect (ws://...)")
    parser.add_argument("--exit-node-id", metavar="HEX", help="override endpoints.exit_node_id")
    parser.add_argument("--no-status", action="store_true", help="no local status endpoint")
    parser.set_defaults(func=main)


# --- pieces shared with ``shadowmesh exit`` -----------------------------------------------


def add_network_overrides(parser: argparse.ArgumentParser) -> None:
    """Options the client and the exit share: where the TAP goes and how it runs."""
    parser.add_argument("--tap", help="TAP device name (network.tap)")
    parser.add_argument("--bridge", help="Linux bridge for the TAP, created if missing")
    parser.add_argument("--mtu", type=int, help="TAP MTU: 1500, or 9000 for jumbo frames")
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


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def run_until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)


# --- the client ---------------------------------------------------------------------------


class ClientNode:
    """The client process: TAP in its bridge, links to the exit, status endpoint."""

    def __init__(
        self,
        config: Config,
        *,
        evidence_checker: EvidenceChecker | None = None,
        status: bool = True,
    ) -> None:
        ep, keys = config.endpoints, config.keys
        registry_mode = ep.exit_node_id is None and bool(
            config.chain.rpc_url and config.chain.contract_address
        )
        if ep.connect is None and not registry_mode:
            raise ConfigError("endpoints.connect: required for a client (or chain.* settings)")
        if ep.exit_node_id is None and not registry_mode:
            raise ConfigError("endpoints.exit_node_id: required (the exit's node id)")
        if keys.identity is None:
            raise ConfigError("keys.identity: required for a client")
        if ep.access_key_file is None:
            raise ConfigError("endpoints.access_key_file: required")
        self.config = config
        self.identity = HybridSigningKey.load(keys.identity)
        self.certificate = load_certificate(keys.certificate) if keys.certificate else None
        try:
            # A secret like the identity: refused when group or others may read it.
            self.access_key = AccessKey.from_text(read_private_file(ep.access_key_file))
        except L2BridgeError as exc:
            raise ConfigError(f"endpoints.access_key_file: {exc}") from None
        connect_url = ep.connect or ""
        parts = urllib.parse.urlsplit(connect_url)
        self.url = (
            connect_url if parts.path not in ("", "/") else parts._replace(path=ep.path).geturl()
        )
        self.exit_node_id = ep.exit_node_id or b""
        # wss:// (here or in the registry's endpoints): the system CAs, or only endpoints.tls_ca
        try:
            self.tls = client_context(ep.tls_ca)
        except TlsError as exc:
            raise ConfigError(f"endpoints.tls_ca: {exc}") from None
        self.mode = Mode.from_name(config.security.post_quantum_mode)
        pad_to, self.cover = obfuscation_settings(config.obfuscation)
        self.session_config = SessionConfig(
            rekey_interval=config.security.key_rotation_interval, pad_to=pad_to
        )
        self.evidence_checker = evidence_checker
        self.status = status
        self.metrics = Metrics("client")
        self.metrics.set_info(
            node_id=self.identity.node_id.hex(),
            exit=ep.connect,
            exit_node_id=self.exit_node_id.hex(),
        )
        self.client: Client | None = None
        self.link: tunnel.Link | None = None
        self.clock, self.clock_sources = tunnel_clock(config)
        self.clock.publish(self.metrics)
        # attestation_required with a pinned exit: a nonce and a checked answer every dial.
        self.attestation = pinned_attestation(config, self.clock.now)
        self.finder = registry_finder(
            config,
            lambda policy: DialSettings(
                self.identity, self.access_key, policy, self.certificate, self.mode,
                self.session_config, int(ep.token_window), self.tls, self.cover,
            ),
            self.metrics,
            self.clock,
        )  # fmt: skip

    async def connect(self) -> FrameLink:
        if self.finder is not None:
            self.link = await self.finder.connect()
            return self.link
        nonce: bytes | None = None
        checker = self.evidence_checker
        if self.attestation is not None:
            nonce, checker = await self.attestation.prepare()
        elif checker is not None:
            nonce = secrets.token_bytes(ATTESTATION_NONCE_SIZE)
        handshake = ClientHandshake(
            self.identity,
            certificate=self.certificate,
            mode=self.mode,
            pinned_node_id=self.exit_node_id,
            attestation_nonce=nonce,
            evidence_checker=checker,
            config=self.session_config,
        )
        self.link = await tunnel.connect(
            self.url,
            handshake,
            access_key=self.access_key,
            node_id=self.exit_node_id,
            token_window=int(self.config.endpoints.token_window),
            clock=self.clock.now,
            ssl=self.tls if self.url.startswith("wss:") else None,
            cover=self.cover,
        )
        return self.link

    def _open_tap(self) -> tuple[FrameDevice, list[list[str]]]:
        net = self.config.network
        undo: list[list[str]] = []
        try:
            tap = open_tap(TapConfig(name=net.tap, mtu=net.mtu, offload=net.vnet_hdr))
        except TapError as exc:
            raise ConfigError(f"network.tap: {exc}") from None
        try:
            if net.bridge is not None:
                if not netns.link_exists(None, net.bridge):
                    netns.bridge(None, net.bridge, mtu=net.mtu)
                    undo.append(["ip", "link", "del", net.bridge])
                netns.attach(None, tap.name, net.bridge)
        except netns.NetnsError as exc:
            tap.close()
            for cmd in reversed(undo):
                netns.run(cmd, check=False)
            raise ConfigError(f"network.bridge: {exc}") from None
        return tap, undo

    async def run(self, stop: asyncio.Event) -> None:
        tap, undo = self._open_tap()
        status = None
        try:
            # A failover must not wait behind a long backoff: the finder already skips
            # exits that refused or did not answer.
            self.client = Client(tap, self.connect, self.metrics, backoff=Backoff(initial=0.1))
            if self.status:
                status = StatusServer(self.metrics, *self.config.status.listen).start()
            rotation = RotationDriver(
                self.clock, self.config.security.key_rotation_interval, lambda: self.link,
                self.metrics,
            )  # fmt: skip
            for source in self.clock_sources:
                source.start()
            jobs = [self.client.run(stop), rotation.run(stop)]
            if self.finder is not None:
                jobs.append(self.finder.watch(stop))
            await asyncio.gather(*jobs)
        finally:
            for source in self.clock_sources:
                source.stop()
            if status is not None:
                status.stop()
            tap.close()
            for cmd in reversed(undo):
                netns.run(cmd, check=False)
            self.identity.wipe()


def main(ns: argparse.Namespace) -> int:
    try:
        config = apply_overrides(load_config(ns.config), ns)
        setup_logging(config.logging.level)
        for problem in ensure_startable(config):
            log.warning("%s: %s", problem.field, problem.message)
        node = ClientNode(config, status=not ns.no_status)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_until_signalled(node.run))
    except L2BridgeError as exc:
        print(f"shadowmesh client: {exc}", file=sys.stderr)
        return 1
    return 0
