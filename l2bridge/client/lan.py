"""The client's LAN interfaces (``network.lan_interfaces``): into its bridge, and back.

At start each named interface is put into the client's bridge, brought up, and its
global addresses move to the bridge (an interface inside a bridge no longer answers for
its own addresses, so without the move the gateway would lose its LAN address). At stop
each goes back: out of the bridge, its addresses restored, up or down as it was.
Like wg-quick's PostUp/PostDown, but declared in the config and undone by the client.

With ``gro`` (``network.gro`` with ``vnet_hdr``), Linux's GRO is switched on for each
interface that has it off (a container's veth, a NIC someone tuned), and off again at
stop: the kernel then merges a flow's plain TCP segments before they reach the TAP, far
more cheaply than the client's own merging (``hardware.gro``) can.

An interface that is missing or already in another bridge is refused at start (one line
naming ``network.lan_interfaces``), before anything has changed.

What each interface looked like before is also written to ``STATE_DIR/lan-<bridge>-<netns>.json``
and removed after the restore, so a client that was killed (no restore) and started again
finds its interfaces still in its bridge, takes their earlier state from that file, and
gives them back properly at its next stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from hardware import netns

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/shadowmesh")


class LanError(Exception):
    """A LAN interface cannot be attached; the message names it and why."""


@dataclass(frozen=True, slots=True)
class _Address:
    family: str  # "inet" or "inet6"
    cidr: str


@dataclass(frozen=True, slots=True)
class _Saved:
    name: str
    was_up: bool
    addresses: tuple[_Address, ...]
    gro_was_off: bool = False  # we switched GRO on: switch it off again at restore


def _gro_off(ns: netns.Namespace | None, name: str) -> bool:
    """Whether ``name`` has GRO off and could have it on (not "[fixed]")."""
    try:
        out = netns.ethtool(ns, "-k", name)
    except netns.NetnsError:
        return False  # no ethtool, or no such feature: leave it as it is
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "generic-receive-offload":
            return value.split() == ["off"]
    return False


def _show(ns: netns.Namespace | None, name: str) -> dict[str, object]:
    try:
        out = netns.ip(ns, "-j", "addr", "show", "dev", name)
        docs = json.loads(out)
    except (netns.NetnsError, ValueError):
        raise LanError(f"network.lan_interfaces: {name}: no such interface") from None
    if not isinstance(docs, list) or len(docs) != 1 or not isinstance(docs[0], dict):
        raise LanError(f"network.lan_interfaces: {name}: no such interface")
    return docs[0]


def _addresses(doc: dict[str, object]) -> tuple[_Address, ...]:
    out = []
    for info in doc.get("addr_info") or []:  # type: ignore[attr-defined]
        if not isinstance(info, dict) or info.get("scope") != "global":
            continue
        out.append(_Address(str(info["family"]), f"{info['local']}/{info['prefixlen']}"))
    return tuple(out)


def _netns_inode() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


class LanAttachment:
    """Attach with :meth:`attach` (all or nothing); undo with :meth:`restore`."""

    def __init__(
        self,
        bridge: str,
        names: tuple[str, ...],
        ns: netns.Namespace | None = None,
        state_dir: Path = STATE_DIR,
        *,
        gro: bool = False,
    ) -> None:
        self.ns = ns  # None: this process's network namespace
        self.bridge = bridge
        self.names = names
        self.gro = gro
        self._saved: list[_Saved] = []
        # One network namespace's bridge (several namespaces may share one /run).
        where = ns.name if ns is not None else str(_netns_inode())
        self.state_file = state_dir / f"lan-{bridge}-{where}.json"

    def _earlier(self) -> dict[str, _Saved]:
        """What a previous run, killed before its restore, recorded (empty when none)."""
        try:
            docs = json.loads(self.state_file.read_text("utf-8"))
            return {
                d["name"]: _Saved(
                    d["name"], bool(d["was_up"]),
                    tuple(_Address(a["family"], a["cidr"]) for a in d["addresses"]),
                    bool(d.get("gro_was_off", False)),
                )
                for d in docs
            }  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _record(self) -> None:
        try:
            self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(s) for s in self._saved]), "utf-8")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning(
                "cannot record the LAN interfaces' state in %s: %s (a crash would leave "
                "them in %s)", self.state_file, exc.strerror, self.bridge,
            )  # fmt: skip

    def attach(self) -> None:
        """Raises LanError, with every interface already attached given back."""
        docs = {name: _show(self.ns, name) for name in self.names}  # all checked before any change
        for name, doc in docs.items():
            master = doc.get("master")
            if master is not None and master != self.bridge:
                raise LanError(
                    f"network.lan_interfaces: {name} is already in bridge {master}; "
                    "take it out first or name that bridge in network.bridge"
                )
        earlier = self._earlier()
        try:
            for name, doc in docs.items():
                flags = doc.get("flags") or []
                saved = _Saved(name, "UP" in flags, _addresses(doc))  # type: ignore[operator]
                if doc.get("master") == self.bridge and name in earlier:
                    saved = earlier[name]  # still ours from a run that was killed
                    log.info("LAN interface %s: state from the previous run restored", name)
                self._saved.append(saved)
                self._record()
                for addr in saved.addresses:
                    netns.ip(self.ns, "addr", "del", addr.cidr, "dev", name, check=False)
                netns.attach(self.ns, name, self.bridge)
                netns.ip(self.ns, "link", "set", name, "up")
                for addr in saved.addresses:
                    netns.ip(self.ns, "addr", "replace", addr.cidr, "dev", self.bridge)
                if self.gro and not saved.gro_was_off and _gro_off(self.ns, name):
                    self._gro_on(saved)
                log.info(
                    "LAN interface %s joined %s (%d address(es) moved)",
                    name, self.bridge, len(saved.addresses),
                )  # fmt: skip
        except netns.NetnsError as exc:
            self.restore()
            raise LanError(f"network.lan_interfaces: {exc}") from None

    def _gro_on(self, saved: _Saved) -> None:
        """Switch GRO on for the interface just attached; a refusal only costs speed."""
        try:
            netns.ethtool(self.ns, "-K", saved.name, "gro", "on")
        except netns.NetnsError as exc:
            log.warning("LAN interface %s: GRO stays off (%s)", saved.name, exc)
            return
        self._saved[-1] = replace(saved, gro_was_off=True)
        self._record()
        log.info("LAN interface %s: GRO switched on while in %s", saved.name, self.bridge)

    def restore(self) -> None:
        """Give every attached interface back as it was; never raises."""
        while self._saved:
            saved = self._saved.pop()
            name = saved.name
            netns.ip(self.ns, "link", "set", name, "nomaster", check=False)
            for addr in saved.addresses:
                netns.ip(self.ns, "addr", "del", addr.cidr, "dev", self.bridge, check=False)
                netns.ip(self.ns, "addr", "replace", addr.cidr, "dev", name, check=False)
            if saved.gro_was_off:
                netns.ethtool(self.ns, "-K", name, "gro", "off", check=False)
            state = "up" if saved.was_up else "down"
            netns.ip(self.ns, "link", "set", name, state, check=False)
            log.info("LAN interface %s left %s", name, self.bridge)
        with contextlib.suppress(OSError):
            self.state_file.unlink()
