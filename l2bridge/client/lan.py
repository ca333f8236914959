"""The client's LAN interfaces (``network.lan_interfaces``): into its bridge, and back.

At start each named interface is put into the client's bridge, brought up, and its
global addresses move to the bridge (an interface inside a bridge no longer answers for
its own addresses, so without the move the gateway would lose its LAN address). At stop
each goes back: out of the bridge, its addresses restored, up or down as it was.
Like wg-quick's PostUp/PostDown, but declared in the config and undone by the client.

An interface that is missing or already in another bridge is refused at start (one line
naming ``network.lan_interfaces``), before anything has changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from hardware import netns

log = logging.getLogger(__name__)


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


class LanAttachment:
    """Attach with :meth:`attach` (all or nothing); undo with :meth:`restore`."""

    def __init__(
        self, bridge: str, names: tuple[str, ...], ns: netns.Namespace | None = None
    ) -> None:
        self.ns = ns  # None: this process's network namespace
        self.bridge = bridge
        self.names = names
        self._saved: list[_Saved] = []

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
        try:
            for name, doc in docs.items():
                flags = doc.get("flags") or []
                saved = _Saved(name, "UP" in flags, _addresses(doc))  # type: ignore[operator]
                self._saved.append(saved)
                for addr in saved.addresses:
                    netns.ip(self.ns, "addr", "del", addr.cidr, "dev", name, check=False)
                netns.attach(self.ns, name, self.bridge)
                netns.ip(self.ns, "link", "set", name, "up")
                for addr in saved.addresses:
                    netns.ip(self.ns, "addr", "replace", addr.cidr, "dev", self.bridge)
                log.info(
                    "LAN interface %s joined %s (%d address(es) moved)",
                    name, self.bridge, len(saved.addresses),
                )  # fmt: skip
        except netns.NetnsError as exc:
            self.restore()
            raise LanError(f"network.lan_interfaces: {exc}") from None

    def restore(self) -> None:
        """Give every attached interface back as it was; never raises."""
        while self._saved:
            saved = self._saved.pop()
            name = saved.name
            netns.ip(self.ns, "link", "set", name, "nomaster", check=False)
            for addr in saved.addresses:
                netns.ip(self.ns, "addr", "del", addr.cidr, "dev", self.bridge, check=False)
                netns.ip(self.ns, "addr", "replace", addr.cidr, "dev", name, check=False)
            state = "up" if saved.was_up else "down"
            netns.ip(self.ns, "link", "set", name, state, check=False)
            log.info("LAN interface %s left %s", name, self.bridge)
