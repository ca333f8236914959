"""The exit node: tunnels (``l2bridge.node.link.serve``) + virtual switch + local TAP + status.

``run_exit(config, options, stop)`` loads the keys named in the config, opens the TAP in
its bridge (and the optional internet exit), serves tunnels behind the decoy site, and
attaches each authenticated device to the switch with its VLAN allow-list, until ``stop``.

A device's VLANs come from ``options.device_vlans`` (by the name in its certificate or
allow-list entry), else ``network.vlan_allow`` (empty: every VLAN and untagged).
Attestation is a later layer: an ``evidence_provider`` may be passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exitnode import constants
from exitnode.attested import AttestedExit
from exitnode.errors import ExitConfigError
from exitnode.host import HostSetup, Masquerade
from exitnode.relay import Relay, registry_endpoints
from exitnode.revocations import LiveSessions, RevocationWatch
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from exitnode.switchboard import PortLink, Switchboard
from hardware import ethernet
from hardware.tap import TapConfig
from l2bridge.constants import Mode
from l2bridge.crypto.pq import get_backend
from l2bridge.errors import BackendUnavailable, L2BridgeError
from l2bridge.identity import keyfiles
from l2bridge.identity.keys import Authorizer, HybridSigningKey, read_private_file
from l2bridge.node import link as tunnel
from l2bridge.node.config import Config
from l2bridge.node.cover import obfuscation_settings
from l2bridge.node.metrics import Metrics
from l2bridge.node.status import StatusServer
from l2bridge.protocol.handshake import EvidenceProvider, ServerHandshake
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings
from l2bridge.transport.tls import TlsError, server_context
from l2bridge.transport.token import AccessKey, TokenVerifier

log = logging.getLogger(__name__)

AUTH_POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class ExitOptions:
    """What the command line adds to (or overrides in) the config file."""

    device_vlans: Mapping[str, frozenset[int]] = field(default_factory=dict)
    masquerade: Masquerade | None = None
    status: bool = True
    mac_ageing_s: float = constants.MAC_AGEING_S
    revocation_poll_s: float = constants.REVOCATION_POLL_S


def vlan_policy(vlans: tuple[int, ...] | frozenset[int]) -> PortPolicy:
    return PortPolicy(vlans=frozenset(vlans) if vlans else None)


def load_authorizer(config: Config) -> Authorizer:
    keys = config.keys
    if keys.admin_public is None and keys.allow_list is None:
        raise ExitConfigError("keys: an exit needs admin_public or allow_list to admit devices")
    return keyfiles.load_authorizer(
        [keys.admin_public] if keys.admin_public else [],
        [keys.revocations] if keys.revocations else [],
        keys.allow_list,
    )


def load_tls(config: Config) -> ssl.SSLContext | None:
    """The TLS context for wss:// when endpoints.tls_cert and tls_key are set, else None."""
    ep = config.endpoints
    if ep.tls_cert is None and ep.tls_key is None:
        return None
    if ep.tls_cert is None or ep.tls_key is None:
        raise ExitConfigError("endpoints.tls_cert and endpoints.tls_key: set both or neither")
    try:
        return server_context(ep.tls_cert, ep.tls_key)
    except TlsError as exc:
        raise ExitConfigError(f"endpoints.tls_cert: {exc}") from None


def load_access_key(path: Path | None) -> AccessKey:
    if path is None:
        raise ExitConfigError("endpoints.access_key_file: required")
    try:
        # A secret like the identity: refused when group or others may read it.
        return AccessKey.from_text(read_private_file(path))
    except L2BridgeError as exc:
        raise ExitConfigError(f"endpoints.access_key_file: {exc}") from None


class ExitNode:
    """One exit; build with the config, then ``await run(stop)``."""

    def __init__(
        self,
        config: Config,
        options: ExitOptions | None = None,
        *,
        evidence_provider: EvidenceProvider | None = None,
    ) -> None:
        self.config = config
        self.options = options or ExitOptions()
        net = config.network
        ep = config.endpoints
        if ep.listen is None:
            raise ExitConfigError("endpoints.listen: required for an exit")
        if config.keys.identity is None:
            raise ExitConfigError("keys.identity: required for an exit")
        self.identity = HybridSigningKey.load(config.keys.identity)
        self.authorizer = load_authorizer(config)
        self.revocations = RevocationWatch(
            self.authorizer,
            [config.keys.revocations] if config.keys.revocations else [],
            self.options.revocation_poll_s,
            allow_list=config.keys.allow_list,
        )
        # Admitted tunnels, re-authorised after every list reload and periodically.
        self.sessions = LiveSessions(config.security.reauth_interval)
        access_key = load_access_key(ep.access_key_file)
        self.tls = load_tls(config)
        site = (
            DecoySite.from_directory(ep.decoy_dir, server=ep.server_header)
            if ep.decoy_dir
            else DecoySite.builtin(server=ep.server_header)
        )
        self.settings = ServerSettings(
            site=site,
            ws_path=ep.path,
            verifier=TokenVerifier(
                access_key, self.identity.node_id, window_s=int(ep.token_window)
            ),
            header_timeout=ep.header_timeout,
        )
        self.mode = Mode.from_name(config.security.post_quantum_mode)
        try:
            self.backend = get_backend(config.security.pq_backend)
        except BackendUnavailable as exc:
            raise ExitConfigError(f"security.pq_backend: {exc}") from None
        pad_to, self.cover = obfuscation_settings(config.obfuscation)
        self.session_config = SessionConfig(
            rekey_interval=config.security.key_rotation_interval, pad_to=pad_to
        )
        self.evidence_provider = evidence_provider
        self.tap_config = TapConfig(name=net.tap, mtu=net.mtu, offload=net.vnet_hdr)
        self.default_policy = vlan_policy(net.vlan_allow)
        self.metrics = Metrics("exit")
        self.clock: Callable[[], float] = time.time
        self.attested: AttestedExit | None = None
        self.metrics.set_info(node_id=self.identity.node_id.hex(), listen=f"{ep.listen}")
        self.board: Switchboard | None = None
        self.relay: Relay | None = None  # endpoints.relay: built in run() beside the board
        self.relay_certificate = None
        if config.keys.relay_certificate is not None:
            try:
                self.relay_certificate = keyfiles.load_certificate(config.keys.relay_certificate)
            except L2BridgeError as exc:
                raise ExitConfigError(f"keys.relay_certificate: {exc}") from None
        self.listening = asyncio.Event()

    def attach(self, attested: AttestedExit) -> None:
        """Serve with attestation evidence, registry upkeep and the disciplined clock."""
        self.attested = attested
        self.evidence_provider = attested.evidence_provider
        self.clock = attested.clock.now

    def _handshake(self) -> ServerHandshake:
        return ServerHandshake(
            self.identity,
            self.authorizer,
            modes=(self.mode,),
            evidence_provider=self.evidence_provider,
            config=self.session_config,
            backend=self.backend,
        )

    def switch_config(self) -> SwitchConfig:
        net = self.config.network
        tpids = {ethernet.TPID_8021Q} | ({ethernet.TPID_8021AD} if net.service_tags else set())
        return SwitchConfig(
            ageing_s=self.options.mac_ageing_s,
            mtu=self.tap_config.mtu,
            protected_ips=frozenset(ipaddress.ip_address(ip).packed for ip in net.gateway_ips),
            tag_tpids=frozenset(tpids),
        )

    def policy_for(self, name: str) -> PortPolicy:
        vlans = self.options.device_vlans.get(name)
        return self.default_policy if vlans is None else vlan_policy(vlans)

    async def _on_link(self, link: tunnel.Link) -> None:
        """Admit one tunnel once its device is authenticated, then switch its frames."""
        assert self.board is not None
        # The ClientFinish follows the hello at once; a link that never authenticates
        # (or fails to) ends here with nothing switched.
        try:
            async with asyncio.timeout(tunnel.HANDSHAKE_TIMEOUT_S):
                while not link.peer_authenticated:
                    if link.close_reason is not None:
                        return
                    await asyncio.sleep(AUTH_POLL_S)
        except TimeoutError:
            log.info("tunnel closed: the device never finished its handshake")
            return
        auth = link.session.authorization
        if auth is None:
            return
        log.info("device %s (%s) connected", auth.name, auth.device_id.hex()[:16])
        name = auth.name or auth.device_id.hex()[:16]
        if self.attested is not None:
            self.attested.tally.track(link)
        if not self.sessions.add(link, name, self.clock()):
            return  # refused since its handshake (a list reloaded meanwhile)
        try:
            port: PortLink | None = link
            if self.relay is not None:
                # A circuit link is served by the relay until it ends (then None).
                port = await self.relay.admit(link)
            if port is None:
                return
            await self.board.serve_link(
                port, name, self.policy_for(auth.name), owner=auth.device_id.hex()
            )
        finally:
            self.sessions.discard(link)

    async def run(self, stop: asyncio.Event) -> None:
        ep = self.config.endpoints
        assert ep.listen is not None
        host = HostSetup(
            self.tap_config, self.config.network.bridge, masquerade=self.options.masquerade
        )
        status: StatusServer | None = None
        server = None
        try:
            switch = Switch(self.switch_config())
            self.board = Switchboard(switch, self.metrics, local=host.tap)
            if self.config.endpoints.relay:
                self.relay = Relay(
                    self.identity, self.metrics, mode=self.mode, backend=self.backend,
                    evidence_provider=self.evidence_provider,
                    certificate=self.relay_certificate, session_config=self.session_config,
                    board=self.board, policy=self.default_policy, clock=self.clock,
                    endpoint_of=registry_endpoints(self.config),
                )  # fmt: skip
            server = await tunnel.serve(
                self._on_link,
                self.settings,
                self._handshake,
                host=ep.listen[0],
                port=ep.listen[1],
                clock=self.clock,
                ssl=self.tls,
                cover=self.cover,
            )
            if self.options.status:
                status = StatusServer(self.metrics, *self.config.status.listen).start()
            self.listening.set()
            log.info("exit listening on %s:%d (%s)", *ep.listen, "wss" if self.tls else "ws")
            jobs = [
                self.board.run(stop),
                self.revocations.run(stop, self.sessions, self.clock),
            ]
            if self.attested is not None:
                jobs.append(self.attested.run(stop))
            if self.relay is not None:
                jobs.append(self.relay.run(stop))
            await asyncio.gather(*jobs)
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), constants.STATS_INTERVAL_S)
            if status is not None:
                status.stop()
            host.close()
            self.identity.wipe()
