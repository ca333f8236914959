"""The exit's host plumbing: its TAP in a Linux bridge, and the optional internet exit.

The internet exit gives the bridge an address and masquerades the clients' subnet out of
the host's other interfaces with nftables (or iptables where nft is missing). The exit's
kernel is then the only IP stack on the path; everything before it is Layer 2.
Everything set up here is undone by ``HostSetup.close``.

With a MAC in the TAP's config (the exit's: ``network.mac`` or derived from its nodeId,
``hardware.announce.stable_mac``) the TAP and the bridge keep the same address across
restarts: a Linux bridge otherwise takes the lowest MAC among its ports, which a new TAP's
random one changes, and the LAN keeps sending to the old gateway MAC until its ARP entries
go stale. A bridge we created or whose gateway address we hold gets the same MAC
explicitly, and its addresses are announced (gratuitous ARP, unsolicited NA).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from exitnode.errors import HostSetupError
from hardware import netns
from hardware.announce import AnnounceError, addresses_of, announce, format_mac
from hardware.gro_port import GroPortError, join_bridge
from hardware.tap import FrameDevice, TapConfig, TapError, open_tap

log = logging.getLogger(__name__)

NFT_TABLE = "shadowmesh"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass(frozen=True, slots=True)
class Masquerade:
    address: str  # the bridge's address with prefix, e.g. 10.77.0.254/24 (the LAN gateway)
    backend: str = "auto"  # "nft", "iptables" or "auto"

    def network(self) -> str:
        try:
            return str(ipaddress.ip_interface(self.address).network)
        except ValueError:
            raise HostSetupError(f"masquerade address {self.address!r}: not ADDR/PREFIX") from None


class HostSetup:
    """Opens the TAP, puts it in the bridge, sets up masquerading; undoes it all on close."""

    def __init__(
        self,
        tap: TapConfig,
        bridge: str | None,
        *,
        masquerade: Masquerade | None = None,
        gro: str = "software",
        gro_fallback: bool = False,
        open_device: bool = True,
    ) -> None:
        """``open_device`` False: the bridge (with ``tap``'s MAC and MTU) and masquerading
        only; the workers of ``exitnode.workers`` bring TAPs of their own. ``gro`` "kernel":
        the TAP joins the bridge through the merging port (``hardware.gro_port``), or with
        ``gro_fallback`` directly where the port cannot be built; ``self.gro`` is the
        merging in effect."""
        self.gro = gro
        self._undo: list[list[str]] = []
        self._restore_forward: str | None = None
        self.tap: FrameDevice | None = None
        if open_device:
            try:
                self.tap = open_tap(tap)
            except TapError as exc:
                raise HostSetupError(str(exc)) from exc
        self.bridge_mac: bytes | None = None
        self.announced = 0  # announcements sent at start
        try:
            if bridge is not None:
                created = self._bridge(tap.name if open_device else None, bridge, tap.mtu,
                                       gro_fallback)  # fmt: skip
                if tap.mac is not None and (created or masquerade is not None):
                    # Ours (we made it, or it carries our gateway address): set explicitly,
                    # its MAC no longer follows its ports. An operator's own bridge keeps
                    # its address; with the TAP's MAC stable, it is stable too.
                    netns.ip(None, "link", "set", bridge, "address", format_mac(tap.mac))
                    self.bridge_mac = tap.mac
            if masquerade is not None:
                if bridge is None:
                    raise HostSetupError("the internet exit needs a bridge for its address")
                self._masquerade(bridge, masquerade)
        except (HostSetupError, netns.NetnsError, GroPortError) as exc:
            self.close()
            raise HostSetupError(str(exc)) from exc
        if bridge is not None and self.bridge_mac is not None:
            self._announce(bridge, self.bridge_mac)

    def _announce(self, bridge: str, mac: bytes) -> None:
        try:
            self.announced = announce(bridge, mac, addresses_of(bridge))
        except AnnounceError as exc:
            log.warning("%s (the LAN learns the gateway MAC when its ARP entries expire)", exc)
            return
        if self.announced:
            log.info(
                "announced %d address(es) of %s at %s", self.announced, bridge, format_mac(mac)
            )

    def _bridge(self, tap: str | None, bridge: str, mtu: int, fallback: bool) -> bool:
        """Put the TAP in ``bridge`` (created when missing), directly or through the merging
        port (``hardware.gro_port``); whether the bridge was created."""
        created = not netns.link_exists(None, bridge)
        if created:
            netns.bridge(None, bridge, mtu=mtu)
            self._undo.append(["ip", "link", "del", bridge])
        if tap is not None:
            undo, self.gro = join_bridge(tap, bridge, mtu, gro=self.gro, fallback=fallback)
            self._undo.extend(undo)
        return created

    def _masquerade(self, bridge: str, m: Masquerade) -> None:
        subnet = m.network()
        # "replace": after a crash (kill -9) the address and rules are still there.
        netns.ip(None, "addr", "replace", m.address, "dev", bridge)
        self._undo.append(["ip", "addr", "del", m.address, "dev", bridge])
        backend = m.backend
        if backend == "auto":
            backend = "nft" if shutil.which("nft") else "iptables"
        if backend == "nft":
            rules = (
                # Declare, delete, re-create: one atomic transaction, also over a crash's table.
                f"table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
                f"table ip {NFT_TABLE} {{\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    ip saddr {subnet} oifname != "{bridge}" masquerade\n'
                "  }\n"
                "}\n"
            )
            netns.run(["nft", "-f", "-"], stdin_text=rules)
            self._undo.append(["nft", "delete", "table", "ip", NFT_TABLE])
        elif backend == "iptables":
            rule = ["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"]
            try:  # already there after a crash: -C succeeds, nothing to add
                netns.run(["iptables", "-t", "nat", "-C", "POSTROUTING", *rule])
            except netns.NetnsError:
                netns.run(["iptables", "-t", "nat", "-A", "POSTROUTING", *rule])
            self._undo.append(["iptables", "-t", "nat", "-D", "POSTROUTING", *rule])
        else:
            raise HostSetupError(f"masquerade backend {backend!r}: nft, iptables or auto")
        try:
            self._restore_forward = IP_FORWARD.read_text().strip()
            IP_FORWARD.write_text("1\n")
        except OSError as exc:
            raise HostSetupError(f"cannot enable IPv4 forwarding: {exc.strerror}") from exc

    def close(self) -> None:
        if self._restore_forward is not None:
            with contextlib.suppress(OSError):
                IP_FORWARD.write_text(self._restore_forward + "\n")
            self._restore_forward = None
        tap = getattr(self, "tap", None)
        if tap is not None:
            tap.close()
        for cmd in reversed(self._undo):
            netns.run(cmd, check=False)
        self._undo.clear()
