"""``/health``: can this node serve as configured? One verdict per component.

Read from the gauges the components already publish on the node's Metrics (so this
module knows no component's internals):

  tunnel  exit: ``tunnel_listening``; client: ``connected``           (always configured)
  tpm     ``tpm_ok`` (exitnode.lifecycle)                             (when it is published)
  clock   ``clock_mode`` (l2bridge.node.rotation): unsynced fails; the system clock
          standing in for configured atomic sources is degraded
  chain   ``registry_state`` (exitnode.upkeep): 0 starting, 1 registered/attested,
          2 and up failed                                             (when published)

A component not configured is ``off``. The answer is HTTP 503 when any configured
component ``failed``, else 200 (``degraded`` still serves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK, DEGRADED, FAILED, OFF, STARTING = "ok", "degraded", "failed", "off", "starting"
CLOCK_MODES = {0.0: "synced", 1.0: "holdover", 2.0: "system", 3.0: "unsynced"}


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    state: str
    detail: str = ""


def components(snapshot: dict[str, Any], *, atomic_time: bool) -> list[Component]:
    """The components' verdicts from a ``Metrics.snapshot()``."""
    gauges: dict[str, float | None] = snapshot.get("gauges", {})
    info: dict[str, Any] = snapshot.get("info", {})
    out = []
    if snapshot.get("role") == "exit":
        listening = gauges.get("tunnel_listening")
        out.append(
            Component("tunnel", OK, "listening")
            if listening == 1.0
            else Component("tunnel", FAILED, "not listening")
        )
    else:
        connected = gauges.get("connected")
        out.append(
            Component("tunnel", OK, "connected")
            if connected == 1.0
            else Component("tunnel", FAILED, "no tunnel to an exit")
        )
    if "tpm_ok" in gauges:
        tpm = gauges["tpm_ok"]
        out.append(Component("tpm", OK) if tpm == 1.0 else Component("tpm", FAILED, "TPM lost"))
    else:
        out.append(Component("tpm", OFF))
    mode = CLOCK_MODES.get(gauges.get("clock_mode") or -1.0)
    if mode is None or (mode == "system" and not atomic_time):
        out.append(Component("clock", OK if mode else OFF, mode or ""))
    elif mode == "unsynced":
        out.append(Component("clock", FAILED, "no usable time source"))
    elif mode == "system":
        out.append(Component("clock", DEGRADED, "atomic sources lost: system clock"))
    else:
        out.append(Component("clock", OK if mode == "synced" else DEGRADED, mode))
    if "registry_state" in gauges:
        code = gauges["registry_state"]
        detail = str(info.get("registry_state", ""))
        if code is None or code >= 2.0:
            out.append(Component("chain", FAILED, detail))
        else:
            out.append(Component("chain", STARTING if code == 0.0 else OK, detail))
    else:
        out.append(Component("chain", OFF))
    return out


def verdict(parts: list[Component]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON document) for ``/health``."""
    failed = [p.name for p in parts if p.state == FAILED]
    degraded = any(p.state == DEGRADED for p in parts)
    status = "failed" if failed else ("degraded" if degraded else "ok")
    doc = {
        "status": status,
        "components": {p.name: {"state": p.state, "detail": p.detail} for p in parts},
    }
    return (503 if failed else 200), doc
