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
import dataclasses
import ipaddress
import logging
import resource
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exitnode import constants
from exitnode.attested import AttestedExit
from exitnode.errors import ExitConfigError
from exitnode.handoff import Intake
from exitnode.host import HostSetup, Masquerade
from exitnode.peers import ExitManagement, Peer, PeerTable
from exitnode.policy import HOURS_CHECK_S, RateLimitedLink, hours_text, port_policy, within_hours
from exitnode.relay import DeviceLinks, Relay, registry_endpoints
from exitnode.revocations import LiveSessions, RevocationWatch
from exitnode.switch import PortPolicy, Switch, SwitchConfig
from exitnode.switchboard import Switchboard
from hardware import ethernet
from hardware.announce import stable_mac
from hardware.gro_port import GroPortError, plan
from hardware.tap import TapConfig
from l2bridge.constants import Mode
from l2bridge.crypto.pq import get_backend
from l2bridge.errors import AuthenticationFailed, BackendUnavailable, KeyFileError, L2BridgeError
from l2bridge.identity import keyfiles
from l2bridge.identity.keys import Authorizer, HybridSigningKey, load_public
from l2bridge.node import link as tunnel
from l2bridge.node.audit import audit
from l2bridge.node.config import Config, load_config, naming
from l2bridge.node.cover import obfuscation_settings, shaping_plan
from l2bridge.node.credfiles import (
    load_master_key,
    load_table,
    load_wallet,
    stamp,
    update_table,
)
from l2bridge.node.health import components
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import RekeyTally
from l2bridge.node.status import StatusServer, read_token
from l2bridge.protocol.handshake import EvidenceProvider, EvidenceSinceProvider, ServerHandshake
from l2bridge.protocol.helloguard import HelloGuard
from l2bridge.protocol.session import SessionConfig
from l2bridge.transport.admission import REASONS, TokenVerifier
from l2bridge.transport.credentials import CredentialTable, CredentialWallet
from l2bridge.transport.decoy import DecoySite
from l2bridge.transport.server import ServerSettings, screening_summary
from l2bridge.transport.tls import TlsError, server_context
from l2bridge.transport.token import MasterKey

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
    config_path: Path | None = None  # re-read by the management API's reload


def vlan_policy(vlans: tuple[int, ...] | frozenset[int]) -> PortPolicy:
    return PortPolicy(vlans=frozenset(vlans) if vlans else None)


def load_authorizer(config: Config) -> Authorizer:
    """Each file's failure is one line naming its setting (keys.admin_public, ...)."""
    keys = config.keys
    if keys.admin_public is None and keys.allow_list is None:
        raise ExitConfigError("keys: an exit needs admin_public or allow_list to admit devices")
    with naming("keys.admin_public"):
        admins = [load_public(keys.admin_public)] if keys.admin_public else []
    with naming("keys.allow_list"):
        allow = keyfiles.load_allow_list(keys.allow_list) if keys.allow_list else None
    authorizer = Authorizer(admins, allow_list=allow)
    if keys.revocations is not None:
        with naming("keys.revocations"):
            rl = keyfiles.load_revocations(keys.revocations)
            try:
                authorizer.update_revocations(rl)
            except AuthenticationFailed as exc:
                raise KeyFileError(f"{keys.revocations}: {exc.detail}") from None
    return authorizer


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


def load_fallback(config: Config) -> tuple[str, int] | None:
    """endpoints.fallback, refused when it is the exit's own listening address (a loop)."""
    ep = config.endpoints
    if ep.fallback is not None and ep.fallback == ep.listen:
        raise ExitConfigError("endpoints.fallback: must be another server than endpoints.listen")
    return ep.fallback


def load_access_key(path: Path | None) -> MasterKey:
    """The exit's master key (endpoints.access_key_file)."""
    if path is None:
        raise ExitConfigError("endpoints.access_key_file: required (the exit's master key)")
    try:
        # A secret like the identity: refused when group or others may read it.
        return load_master_key(path)
    except L2BridgeError as exc:
        raise ExitConfigError(f"endpoints.access_key_file: {exc}") from None


def load_credentials(path: Path | None) -> CredentialTable:
    """The credential table (keys.credentials); a missing file is an empty table."""
    if path is None:
        raise ExitConfigError(
            "keys.credentials: required (the credential table that "
            "'shadowmesh credentials issue' writes)"
        )
    try:
        return load_table(path)
    except L2BridgeError as exc:
        raise ExitConfigError(f"keys.credentials: {exc}") from None


def _device_refused_at_the_gate(name: str, reason: str) -> None:
    # A genuine token of a known device (its MAC verified), at most once a minute per device.
    log.warning("device %s refused at the front door: %s (answered as a web server)", name, reason)
    audit("tunnel_refused", device=name, reason=reason)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one (often 1,024 vs 524,288 under
    systemd): every connection, idle or flooding, is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.debug("open files limit raised from %d to %d", soft, hard)


class ExitNode:
    """One exit; build with the config, then ``await run(stop)``."""

    def __init__(
        self,
        config: Config,
        options: ExitOptions | None = None,
        *,
        evidence_provider: EvidenceProvider | None = None,
        evidence_since_provider: EvidenceSinceProvider | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.options = options or ExitOptions()
        net = config.network
        ep = config.endpoints
        if ep.listen is None:
            raise ExitConfigError("endpoints.listen: required for an exit")
        if config.keys.identity is None:
            raise ExitConfigError("keys.identity: required for an exit")
        with naming("keys.identity"):
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
        self.master_key = load_access_key(ep.access_key_file)
        self._table_stamp = stamp(config.keys.credentials) if config.keys.credentials else None
        self._credential_gone: set[bytes] = set()  # devices whose last credential was revoked
        self.verifier = TokenVerifier(
            self.master_key,
            self.identity.node_id,
            load_credentials(config.keys.credentials),
            window_s=int(ep.token_window),
            revoked_serials=self.authorizer.revoked_serials,
            per_device=ep.handshakes_per_device,
            per_source=ep.handshakes_per_source,
            on_device_refused=_device_refused_at_the_gate,
        )
        self.tls = load_tls(config)
        site = (
            DecoySite.from_directory(ep.decoy_dir, server=ep.server_header, gzip=ep.decoy_gzip)
            if ep.decoy_dir
            else DecoySite.builtin(server=ep.server_header, gzip=ep.decoy_gzip)
        )
        self.settings = ServerSettings(
            site=site,
            ws_path=ep.path,
            verifier=self.verifier,
            header_timeout=ep.header_timeout,
            keepalive_timeout=ep.keepalive_timeout,
            send_timeout=ep.send_timeout,
            fallback=load_fallback(config),
            max_connections=ep.max_connections,
            max_connections_per_source=ep.max_connections_per_source,
        )
        self.mode = Mode.from_name(config.security.post_quantum_mode)
        try:
            self.backend = get_backend(config.security.pq_backend)
        except BackendUnavailable as exc:
            raise ExitConfigError(f"security.pq_backend: {exc}") from None
        pad_to, self.cover = obfuscation_settings(config.obfuscation)
        self.shaping = shaping_plan(config.obfuscation)
        self.session_config = SessionConfig(
            rekey_interval=config.security.key_rotation_interval, pad_to=pad_to
        )
        self.evidence_provider = evidence_provider
        self.evidence_since_provider = evidence_since_provider
        # The same MAC at every start: the LAN's ARP entries for the gateway stay right.
        mac = net.mac or stable_mac(self.identity.node_id)
        try:
            # What network.gro asks for here ("auto": kernel where it can work); a port that
            # cannot be built at run() falls back to software under auto.
            self.gro = plan(net.gro, net.tap, net.vnet_hdr, net.bridge)
        except GroPortError as exc:
            raise ExitConfigError(str(exc)) from None
        self.tap_config = TapConfig(
            name=net.tap,
            mtu=net.mtu,
            offload=net.vnet_hdr,
            mac=mac,
            coalesce=self.gro != "off",
            rps=net.rps,
        )
        self.default_policy = vlan_policy(net.vlan_allow)
        self.metrics = metrics or Metrics("exit")
        self.clock: Callable[[], float] = time.time
        self.attested: AttestedExit | None = None
        self.metrics.set_info(
            node_id=self.identity.node_id.hex(),
            listen=f"{ep.listen[0]}:{ep.listen[1]}",
            gro=self.gro,  # "kernel": the TAP is behind the merging port (set again at run)
        )
        for reason in REASONS:  # tokens refused at the gate, by reason (never told)
            self.metrics.set_gauge(
                "tokens_refused_" + reason.replace(" ", "_"), self._refused_count(reason)
            )
        self.metrics.set_gauge("credentials", lambda: float(len(self.verifier.table)))
        self.board: Switchboard | None = None
        self.peers = PeerTable()
        self.relay: Relay | None = None  # endpoints.relay: built in run() beside the board
        self.relay_certificate = None
        if config.keys.relay_certificate is not None:
            try:
                self.relay_certificate = keyfiles.load_certificate(config.keys.relay_certificate)
            except L2BridgeError as exc:
                raise ExitConfigError(f"keys.relay_certificate: {exc}") from None
        # endpoints.relay: this exit's own credentials for the hops it extends circuits to.
        self.relay_credentials: CredentialWallet | None = None
        if ep.credential_file is not None:
            try:
                self.relay_credentials = load_wallet(ep.credential_file)
            except L2BridgeError as exc:
                raise ExitConfigError(f"endpoints.credential_file: {exc}") from None
        self.listening = asyncio.Event()
        # How connections to the tunnel port were screened (counts by kind, for status
        # and the metrics' ``shadowmesh_connections_total``).
        self.screening = screening_summary(total=self.metrics.counters.connections)
        # Duplicate hellos and the per-device TPM-quote quota, shared by every connection.
        self.hello_guard = HelloGuard(quotes_per_minute=self.config.tpm.quotes_per_device)
        # A worker of a multi-process exit (exitnode.workers) listens on no socket of its
        # own: its supervisor hands it connections over this channel (exitnode.handoff);
        # and it has its device admissions confirmed by the supervisor (``claim`` /
        # ``release``).
        self.handoff: socket.socket | None = None
        self.claim: Callable[[Peer], Awaitable[None]] | None = None
        self.release: Callable[[Peer], None] | None = None
        # A worker's bound on circuit links per device is its supervisor's (over all workers).
        self.device_links: DeviceLinks | None = None
        # Completed rekeys into the metrics without the attested layers (a worker's).
        self.tally: RekeyTally | None = None

    def tunnel_health(self) -> dict[str, object]:
        """The tunnel port for a status page (plain JSON values): listening, devices
        attached, and how connections to the port were screened since start."""
        return {
            "ok": self.listening.is_set(),
            "listening": self.listening.is_set(),
            "devices": len(self.board.clients) if self.board is not None else 0,
            "screened": dict(self.screening.total),
            "tokens_refused": {k: n for k, n in self.verifier.rejected.items() if n},
        }

    def _refused_count(self, reason: str) -> Callable[[], float]:
        return lambda: float(self.verifier.rejected[reason])

    def reload_credentials(self) -> bool:
        """Re-read keys.credentials when the file changed; a broken file keeps the table
        in use (logged). Returns whether a new table was installed."""
        path = self.config.keys.credentials
        if path is None:
            return False
        now = stamp(path)
        if now == self._table_stamp:
            return False
        try:
            table = load_table(path)
        except L2BridgeError as exc:
            log.error("keys.credentials: %s; the previous table stays in use", exc)
            return False
        self._table_stamp = now
        old, self.verifier.table = self.verifier.table, table
        log.info("keys.credentials reloaded: %d credential(s)", len(table))
        live = {e.device for e in table if not e.revoked}
        self._credential_gone |= {e.device for e in old if not e.revoked} - live
        return True

    async def _end_tunnels_without_credential(self) -> list[str]:
        """End (as revoked) the tunnels of devices whose last credential was revoked."""
        gone, self._credential_gone = self._credential_gone, set()
        ended = [p for p in self.peers if p.authorization.device_id in gone]
        for peer in ended:
            log.warning("device %s: its credential was revoked; tunnel ended", peer.name)
            audit("device_disconnected", device=peer.name, by="credential revoked")
        await asyncio.gather(*(p.link.close(revoked=True) for p in ended))
        return sorted({p.name for p in ended})

    def cancel_credentials(self, serials: frozenset[bytes]) -> list[str]:
        """Mark revoked the credentials issued against these certificates and save the
        table (the gate already refuses them through the live revocation list)."""
        # Whatever `shadowmesh credentials` wrote meanwhile first, or saving would drop it.
        self.reload_credentials()
        names = self.verifier.table.revoke_serials(serials)
        path = self.config.keys.credentials
        if names and path is not None:
            # Under the table's lock, on what is on disk now; the watcher installs the
            # saved table at its next poll (with anything the command added meanwhile).
            try:
                update_table(path, lambda table: table.revoke_serials(serials))
            except (OSError, L2BridgeError) as exc:
                log.error("keys.credentials: cannot save (%s)", type(exc).__name__)
        return names

    async def _watch_credentials(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.revocation_poll_s)
                return
            self.reload_credentials()
            if self._credential_gone:
                await self._end_tunnels_without_credential()

    def tpm_health(self) -> dict[str, object] | None:
        """``ExitLifecycle.health()`` when this exit attests, else None."""
        if self.attested is None or self.attested.lifecycle is None:
            return None
        return self.attested.lifecycle.health()

    def attach(self, attested: AttestedExit) -> None:
        """Serve with attestation evidence, registry upkeep and the disciplined clock."""
        self.attested = attested
        self.evidence_provider = attested.evidence_provider
        self.evidence_since_provider = attested.evidence_since_provider
        self.clock = attested.clock.now

    def _status_server(self) -> StatusServer:
        cfg = self.config.status
        token = read_token(cfg.admin_token_file) if cfg.admin_token_file else None
        api = ExitManagement(
            self.peers, self.authorizer, self.config.keys.revocations,
            attestation_age=self._evidence_age,
            reload=self.reload, cancel_credentials=self.cancel_credentials,
        )  # fmt: skip
        atomic = bool(self.config.atomic_time.enabled)
        return StatusServer(
            self.metrics, *cfg.listen, token=token, api=api,
            api_loop=asyncio.get_running_loop(),
            health=lambda: components(self.metrics.snapshot(), atomic_time=atomic),
        ).start()  # fmt: skip

    def _check_mtu(self, name: str, link: tunnel.Link) -> None:
        theirs = getattr(link.session, "peer_mtu", None)
        ours = self.tap_config.mtu
        if theirs is not None and theirs != ours:
            log.warning(
                "device %s: its network.mtu is %d, this exit's is %d: frames larger than %d "
                "bytes are dropped on the way; set the same network.mtu on both",
                name, theirs, ours, min(theirs, ours),
            )  # fmt: skip

    async def _one_tunnel_per_device(self, peer: Peer) -> None:
        """Past security.tunnels_per_device, the device's oldest tunnels end (the newest
        wins: a client that lost its network and reconnects must not be locked out)."""
        limit = self.config.security.tunnels_per_device
        circuit_links = self.relay.circuit_links if self.relay is not None else {}
        same = [
            p for p in self.peers.of_device(peer.authorization.device_id)
            if p.link not in circuit_links
        ]  # fmt: skip
        for old in same[: max(0, len(same) - limit)]:
            log.warning("device %s: a newer tunnel replaces the one from %s "
                        "(security.tunnels_per_device: %d)", old.name,
                        old.link.remote_address, limit)  # fmt: skip
            audit("tunnel_replaced", device=old.name, address=old.link.remote_address)
            await old.link.close()

    def _evidence_age(self) -> float | None:
        # Published by the TPM lifecycle when there is one (exitnode.lifecycle).
        read = self.metrics.gauges.get("evidence_age_s")
        return None if read is None else read()

    def _metrics_server(self) -> StatusServer | None:
        listen = self.config.status.metrics_listen
        if listen is None:
            return None
        atomic = bool(self.config.atomic_time.enabled)
        return StatusServer(
            self.metrics, *listen, metrics_only=True, setting="status.metrics_listen",
            health=lambda: components(self.metrics.snapshot(), atomic_time=atomic),
        ).start()  # fmt: skip

    async def _watch_hours(self, stop: asyncio.Event) -> None:
        """Ends the tunnels of devices whose allowed hours are over."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOURS_CHECK_S)
                return
            now = time.time()
            for peer in self.peers:
                device = self.config.device(peer.authorization.name)
                if not within_hours(device, now):
                    assert device is not None
                    log.warning("device %s: its hours (%s) are over; tunnel ended",
                                peer.name, hours_text(device))  # fmt: skip
                    audit("device_disconnected", device=peer.name, by="hours")
                    await peer.link.close()

    async def reload(self) -> dict[str, Any]:
        """Re-read what changes without a restart: the revocation lists and, with the
        config file known, logging.level and the ``devices`` policies (a connected device
        whose policy changed has its tunnel ended: it comes back under the new one)."""
        changed = self.revocations.check()
        out: dict[str, Any] = {
            "revocation_lists_reloaded": changed,
            "credentials_reloaded": self.reload_credentials(),
            "credential_revoked": await self._end_tunnels_without_credential(),
        }
        path = self.options.config_path
        if path is not None:
            with naming(str(path)):
                fresh = load_config(path)
            logging.getLogger().setLevel(fresh.logging.level.upper())
            out["logging.level"] = fresh.logging.level
            old, self.config = self.config, dataclasses.replace(self.config, devices=fresh.devices)
            ended = []
            for peer in self.peers:
                name = peer.authorization.name
                if old.device(name) != self.config.device(name):
                    ended.append(peer.name)
                    await peer.link.close()
            out["policy_changed"] = sorted(set(ended))
        log.info("reloaded by the operator: %s", out)
        return out

    def _handshake(self) -> ServerHandshake:
        return ServerHandshake(
            self.identity,
            self.authorizer,
            modes=(self.mode,),
            evidence_provider=self.evidence_provider,
            evidence_since_provider=self.evidence_since_provider,
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
        """--device-vlans, else the config's ``devices`` entry, else the default."""
        vlans = self.options.device_vlans.get(name)
        if vlans is not None:
            return vlan_policy(vlans)
        return port_policy(self.config.device(name), self.default_policy)

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
        admission = link.admission
        if admission is None or admission.device != auth.device_id:
            # The token was minted from another device's credential: a stolen or shared
            # credential does not let one device in as another.
            who = auth.name or auth.device_id.hex()[:16]
            log.warning("tunnel refused: %s presented the credential of another device", who)
            audit("tunnel_refused", device=who, reason="credential of another device",
                  address=link.remote_address)  # fmt: skip
            return
        log.info("device %s (%s) connected", auth.name, auth.device_id.hex()[:16])
        name = auth.name or auth.device_id.hex()[:16]
        if self.attested is not None:
            self.attested.tally.track(link)
        elif self.tally is not None:
            self.tally.track(link)  # a worker's (exitnode.worker)
        device = self.config.device(auth.name)
        if not within_hours(device, time.time()):
            assert device is not None
            log.warning("device %s refused: outside its hours (%s)", name, hours_text(device))
            audit("tunnel_refused", device=name, reason="outside its hours")
            return
        if not self.sessions.add(link, name, self.clock()):
            return  # refused since its handshake (a list reloaded meanwhile)
        policy = self.policy_for(auth.name)
        self._check_mtu(name, link)
        port_link: Any = link
        if device is not None and device.rate is not None:
            port_link = RateLimitedLink(link, device.rate, self.metrics)
        peer = self.peers.add(name, auth, link, policy)
        audit("device_admitted", device=name, device_id=auth.device_id.hex(),
              admitted_by=auth.method, address=link.remote_address)  # fmt: skip
        try:
            port: Any = port_link
            if self.relay is not None:
                # A circuit link is served by the relay until it ends (then None). It holds
                # no switch port, so security.tunnels_per_device does not apply: a relaying
                # exit carries its circuits to us over links of its own (the relay bounds
                # links per device and circuits per link).
                admitted = await self.relay.admit(link)
                if admitted is None:
                    return
                port = admitted
                if device is not None and device.rate is not None:
                    port = RateLimitedLink(admitted, device.rate, self.metrics)
            await self._one_tunnel_per_device(peer)
            if self.claim is not None:
                await self.claim(peer)  # the device's tunnels at the other workers end
            await self.board.serve_link(port, name, policy, owner=auth.device_id.hex())
        finally:
            self.peers.remove(peer)
            self.sessions.discard(link)
            if self.release is not None:
                self.release(peer)

    async def run(self, stop: asyncio.Event) -> None:
        ep = self.config.endpoints
        assert ep.listen is not None
        raise_open_files_limit()
        host = HostSetup(
            self.tap_config,
            self.config.network.bridge,
            masquerade=self.options.masquerade,
            gro=self.gro,
            gro_fallback=self.config.network.gro == "auto",
        )
        self.metrics.set_info(gro=host.gro)  # in effect: auto may have fallen back
        status: StatusServer | None = None
        metrics_only: StatusServer | None = None
        server = None
        intake: Intake | None = None
        try:
            assert host.tap is not None
            switch = Switch(self.switch_config())
            self.board = Switchboard(switch, self.metrics, local=host.tap)
            self.metrics.watch_tap(host.tap.stats)
            if self.config.endpoints.relay:
                self.relay = Relay(
                    self.identity, self.metrics, mode=self.mode, backend=self.backend,
                    evidence_provider=self.evidence_provider,
                    certificate=self.relay_certificate, session_config=self.session_config,
                    board=self.board, policy=self.default_policy, clock=self.clock,
                    endpoint_of=registry_endpoints(self.config),
                    credentials=self.relay_credentials,
                    token_window=int(ep.token_window), device_links=self.device_links,
                )  # fmt: skip
            with naming(f"endpoints.listen ({ep.listen[0]}:{ep.listen[1]})"):
                server = await tunnel.serve(
                    self._on_link,
                    self.settings,
                    self._handshake,
                    host=ep.listen[0],
                    port=ep.listen[1],
                    clock=self.clock,
                    ssl=self.tls,
                    cover=self.cover,
                    shaping=self.shaping,
                    keepalive_s=ep.keepalive_interval,
                    liveness_s=ep.liveness_timeout,
                    backlog=ep.listen_backlog,
                    summary=self.screening,
                    hello_guard=self.hello_guard,
                    listen=self.handoff is None,
                )
            if self.handoff is not None:
                intake = Intake(self.handoff, server.adopt, on_gone=stop.set)
                intake.start()
            self.metrics.set_gauge("tunnel_listening", lambda: 1.0 if server.is_serving() else 0.0)
            if self.options.status:
                status = self._status_server()
                metrics_only = self._metrics_server()
            self.listening.set()
            log.info("exit listening on %s:%d (%s)", *ep.listen, "wss" if self.tls else "ws")
            jobs = [
                self.board.run(stop),
                self.revocations.run(stop, self.sessions, self.clock),
                self._watch_hours(stop),
                self._watch_credentials(stop),
            ]
            if self.attested is not None:
                jobs.append(self.attested.run(stop))
            if self.relay is not None:
                jobs.append(self.relay.run(stop))
            await asyncio.gather(*jobs)
        finally:
            if intake is not None:
                intake.close()
            if server is not None:
                server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), constants.STATS_INTERVAL_S)
            self.listening.clear()
            for listener in (status, metrics_only):
                if listener is not None:
                    listener.stop()
            host.close()
            self.identity.wipe()
