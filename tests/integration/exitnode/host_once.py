"""Runs in an exit namespace: HostSetup as the exit does, prints what the LAN sees, waits.

``python -m tests.integration.exitnode.host_once NODE_ID_HEX`` opens TAP sm0 with the MAC
derived from the nodeId in bridge br0 with gateway 10.77.0.254/24, prints one JSON line
(TAP MAC, bridge MAC, announcements sent), then holds everything until SIGTERM (undone)
or SIGKILL (a crash: left behind).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from exitnode.host import HostSetup, Masquerade
from hardware.announce import stable_mac
from hardware.tap import TapConfig


def mac_of(dev: str) -> str:
    out = subprocess.run(["ip", "-j", "link", "show", "dev", dev], capture_output=True, check=True)
    return str(json.loads(out.stdout)[0]["address"])


def main(node_id_hex: str) -> None:
    mac = stable_mac(bytes.fromhex(node_id_hex))
    host = HostSetup(
        TapConfig(name="sm0", mtu=1500, mac=mac), "br0", masquerade=Masquerade("10.77.0.254/24")
    )
    try:
        print(
            json.dumps(
                {"tap": mac_of("sm0"), "bridge": mac_of("br0"), "announced": host.announced}
            ),
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    finally:
        host.close()


if __name__ == "__main__":
    main(sys.argv[1])
