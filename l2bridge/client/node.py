"""The client process: its TAP in a Linux bridge, links to the exit, a status endpoint.

The TAP joins the Linux bridge the operator names (created when missing), so every host
on that bridge's LAN reaches the far side. The link is re-established with backoff
whenever the exit goes away. ``shadowmesh client`` (l2bridge.commands.client) runs it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import urllib.parse

import yaml

from hardware import netns
from hardware.gro_port import GroPortError, join_bridge, plan
from hardware.tap import FrameDevice, TapConfig, TapError, open_tap
from l2bridge.client.circuit import CircuitBuilder, CircuitLink, load_regions
from l2bridge.client.failover import DialSettings
from l2bridge.client.lan import LanAttachment, LanError
from l2bridge.client.layers import pinned_attestation, registry_finder, tunnel_clock
from l2bridge.client.pump import Backoff, Client, FrameLink
from l2bridge.constants import ATTESTATION_NONCE_SIZE, Mode
from l2bridge.crypto.pq import get_backend
from l2bridge.errors import BackendUnavailable, L2BridgeError
from l2bridge.identity.keyfiles import load_certificate
from l2bridge.identity.keys import HybridSigningKey
from l2bridge.node import link as tunnel
from l2bridge.node.config import Config, ConfigError, naming
from l2bridge.node.cover import obfuscation_settings, shaping_plan
from l2bridge.node.credfiles import load_wallet
from l2bridge.node.health import components
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import RotationDriver
from l2bridge.node.status import StatusServer, read_token
from l2bridge.protocol.handshake import ClientHandshake, EvidenceChecker
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.tls import TlsError, client_context

log = logging.getLogger("shadowmesh.client")


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
        if ep.credential_file is None:
            raise ConfigError(
                "endpoints.credential_file: required (this device's credentials, from "
                "its join bundle or the exit's 'shadowmesh credentials issue')"
            )
        self.config = config
        with naming("keys.identity"):
            self.identity = HybridSigningKey.load(keys.identity)
        with naming("keys.certificate"):
            self.certificate = load_certificate(keys.certificate) if keys.certificate else None
        try:
            # A secret like the identity: refused when group or others may read it.
            self.credentials = load_wallet(ep.credential_file)
        except L2BridgeError as exc:
            raise ConfigError(f"endpoints.credential_file: {exc}") from None
        if ep.exit_node_id is not None and self.credentials.for_exit(ep.exit_node_id) is None:
            raise ConfigError(
                "endpoints.credential_file: holds no credential for endpoints.exit_node_id"
            )
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
        # endpoints.tls_impersonate: wss:// through curl_cffi (a browser's ClientHello)
        self.impersonate = (
            (ep.tls_impersonate, ep.tls_ca) if ep.tls_impersonate is not None else None
        )
        self.mode = Mode.from_name(config.security.post_quantum_mode)
        try:
            self.backend = get_backend(config.security.pq_backend)
        except BackendUnavailable as exc:
            raise ConfigError(f"security.pq_backend: {exc}") from None
        pad_to, self.cover = obfuscation_settings(config.obfuscation)
        self.shaping = shaping_plan(config.obfuscation)
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
            gro=config.network.gro,  # what is in effect once the TAP is open (_open_tap)
        )
        self.client: Client | None = None
        self.link: tunnel.Link | CircuitLink | None = None
        self.clock, self.clock_sources = tunnel_clock(config)
        self.clock.publish(self.metrics)
        # attestation_required with a pinned exit: a nonce and a checked answer every dial.
        self.attestation = pinned_attestation(config, self.clock.now)
        self.finder = registry_finder(
            config,
            lambda policy: DialSettings(
                self.identity, self.credentials, policy, self.certificate, self.mode,
                self.session_config, int(ep.token_window), self.tls, self.cover,
                self.backend,
                ep.keepalive_interval, ep.liveness_timeout, self.shaping, self.impersonate,
                config.network.mtu,
            ),
            self.metrics,
            self.clock,
        )  # fmt: skip
        # exit_nodes.multi_hop: circuits through registry exits instead of one exit.
        self.circuits: CircuitBuilder | None = None
        if config.exit_nodes.multi_hop:
            if self.finder is None:
                raise ConfigError(
                    "exit_nodes.multi_hop: hops come from the registry: set chain.rpc_url "
                    "and chain.contract_address, and no endpoints.exit_node_id"
                )
            try:
                regions = load_regions(config.exit_nodes.regions_file)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ConfigError(f"exit_nodes.regions_file: {exc}") from None
            self.circuits = CircuitBuilder(
                self.finder.registry, self.finder.settings, self.finder.selection,
                hops=config.exit_nodes.hops, regions=regions, metrics=self.metrics,
                jurisdictions=config.exit_nodes.jurisdictional_diversity,
                clock=self.clock.now,
            )  # fmt: skip
            self.finder = None

    async def connect(self) -> FrameLink:
        if self.circuits is not None:
            self.link = await self.circuits.connect()
            return self.link
        if self.finder is not None:
            self.link = await self.finder.connect()
            return self.link
        nonce: bytes | None = None
        checker = self.evidence_checker
        since = None
        if self.attestation is not None:
            nonce, checker = await self.attestation.prepare()
            since = self.attestation.since()
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
            backend=self.backend,
            mtu=self.config.network.mtu,
            evidence_since=since,
        )
        self.link = await tunnel.connect(
            self.url,
            handshake,
            credential=self.credentials.for_exit(self.exit_node_id),
            node_id=self.exit_node_id,
            token_window=int(self.config.endpoints.token_window),
            clock=self.clock.now,
            ssl=self.tls if self.url.startswith("wss:") else None,
            cover=self.cover,
            shaping=self.shaping,
            impersonate=self.impersonate if self.url.startswith("wss:") else None,
            keepalive_s=self.config.endpoints.keepalive_interval,
            liveness_s=self.config.endpoints.liveness_timeout,
        )
        return self.link

    def _open_tap(self) -> tuple[FrameDevice, list[list[str]], LanAttachment | None]:
        net = self.config.network
        undo: list[list[str]] = []
        if net.lan_interfaces and net.bridge is None:
            raise ConfigError("network.lan_interfaces: needs network.bridge (the bridge to join)")
        try:
            gro = plan(net.gro, net.tap, net.vnet_hdr, net.bridge)
        except GroPortError as exc:
            raise ConfigError(str(exc)) from None
        coalesce = gro != "off"
        try:
            tap_config = TapConfig(
                name=net.tap, mtu=net.mtu, offload=net.vnet_hdr, coalesce=coalesce, rps=net.rps
            )
            tap = open_tap(tap_config)
        except TapError as exc:
            raise ConfigError(f"network.tap: {exc}") from None
        lan = None
        try:
            if net.bridge is not None:
                if not netns.link_exists(None, net.bridge):
                    netns.bridge(None, net.bridge, mtu=net.mtu)
                    undo.append(["ip", "link", "del", net.bridge])
                port, gro = join_bridge(
                    tap.name, net.bridge, net.mtu, gro=gro, fallback=net.gro == "auto"
                )
                undo.extend(port)
                if net.lan_interfaces:
                    lan_gro = coalesce and net.vnet_hdr
                    lan = LanAttachment(net.bridge, net.lan_interfaces, gro=lan_gro)
                    lan.attach()
        except (netns.NetnsError, LanError, GroPortError) as exc:
            tap.close()
            for cmd in reversed(undo):
                netns.run(cmd, check=False)
            what = "network.bridge: " if isinstance(exc, netns.NetnsError) else ""
            raise ConfigError(f"{what}{exc}") from None
        # "kernel": the TAP is behind the merging port ("auto" may have fallen back)
        self.metrics.set_info(gro=gro)
        return tap, undo, lan

    async def run(self, stop: asyncio.Event) -> None:
        tap, undo, lan = self._open_tap()
        status = metrics_only = None
        try:
            # A failover must not wait behind a long backoff: the finder already skips
            # exits that refused or did not answer.
            self.client = Client(tap, self.connect, self.metrics, backoff=Backoff(initial=0.1))
            if self.status:
                cfg = self.config.status
                token = read_token(cfg.admin_token_file) if cfg.admin_token_file else None
                atomic = bool(self.config.atomic_time.enabled)
                health = lambda: components(self.metrics.snapshot(), atomic_time=atomic)  # noqa: E731
                status = StatusServer(self.metrics, *cfg.listen, token=token, health=health)
                status.start()
                if cfg.metrics_listen is not None:
                    metrics_only = StatusServer(
                        self.metrics, *cfg.metrics_listen, health=health, metrics_only=True,
                        setting="status.metrics_listen",
                    ).start()  # fmt: skip
            rotation = RotationDriver(
                self.clock, self.config.security.key_rotation_interval, lambda: self.link,
                self.metrics,
            )  # fmt: skip
            for source in self.clock_sources:
                source.start()
            jobs = [self.client.run(stop), rotation.run(stop)]
            if self.finder is not None:
                jobs.append(self.finder.watch(stop))
            if self.circuits is not None:
                interval = self.circuits.selection.max_attestation_age
                jobs.append(self.circuits.watch(stop, interval))
            await asyncio.gather(*jobs)
        finally:
            for source in self.clock_sources:
                source.stop()
            for listener in (status, metrics_only):
                if listener is not None:
                    listener.stop()
            if lan is not None:
                lan.restore()  # before the bridge goes: the LAN keeps its addresses
            tap.close()
            for cmd in reversed(undo):
                netns.run(cmd, check=False)
            self.identity.wipe()
