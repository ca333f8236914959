"""The audit trail (``logging.audit``): security events as one JSON line each.

Events go to the ``shadowmesh.audit`` logger, so they reach stderr (journald) beside the
node's other lines whatever ``logging.level`` is, and can be routed apart by logger name.
With ``logging.audit: false`` (the default) nothing is written. Events never carry key
material or exception text from a peer: names, ids, addresses, reasons we chose.
"""

from __future__ import annotations

import json
import logging

AUDIT = logging.getLogger("shadowmesh.audit")
AUDIT.disabled = True  # until configure(True)


def configure(enabled: bool) -> None:
    AUDIT.disabled = not enabled
    AUDIT.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)


def audit(event: str, **fields: object) -> None:
    """Record one event (``device_admitted``, ``tunnel_refused``, ...) when auditing is on."""
    if AUDIT.disabled:
        return
    AUDIT.info(json.dumps({"event": event, **fields}, sort_keys=True, default=str))
