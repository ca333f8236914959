"""``shadowmesh exit``: run an exit node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exitnode import constants
from exitnode.attested import AttestedExit
from exitnode.errors import ExitError
from exitnode.host import Masquerade
from exitnode.server import ExitNode, ExitOptions
from exitnode.workers import Supervisor, WorkersMetrics, worker_count
from l2bridge.commands.common import (
    add_network_overrides,
    apply_overrides,
    run_node,
    setup_logging,
)
from l2bridge.errors import L2BridgeError
from l2bridge.node.config import Config, ConfigError, ensure_startable, load_config

log = logging.getLogger("shadowmesh.exit")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration (see exit.yaml)")
    add_network_overrides(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", help="override endpoints.listen")
    parser.add_argument(
        "--device-vlans",
        metavar="NAME=VID,...",
        action="append",
        default=[],
        help="VLANs a device may use (0 = untagged); repeat per device",
    )
    parser.add_argument(
        "--masquerade",
        metavar="ADDR/PREFIX",
        help="internet exit: give the bridge this address and masquerade its subnet",
    )
    parser.add_argument("--masquerade-backend", choices=["auto", "nft", "iptables"], default="auto")
    parser.add_argument("--public-url", help="URL registered on chain (default ws://LISTEN/path)")
    parser.add_argument(
        "--state-dir", type=Path, help="AK and measured config (default: beside --config)"
    )
    parser.add_argument("--ek-ca", type=Path, action="append", default=[],
                        help="TPM maker CA (PEM) to enrol the AK against; repeat")  # fmt: skip
    parser.add_argument("--ek-intermediate", type=Path, action="append", default=[])
    parser.add_argument(
        "--mac-ageing",
        type=float,
        default=constants.MAC_AGEING_S,
        metavar="SECONDS",
        help="forget a MAC address not seen for this long",
    )
    parser.add_argument("--no-status", action="store_true", help="no local status endpoint")
    parser.set_defaults(func=main)


def parse_device_vlans(items: list[str]) -> dict[str, frozenset[int]]:
    out: dict[str, frozenset[int]] = {}
    for item in items:
        name, sep, ids = item.partition("=")
        try:
            vids = frozenset(int(v) for v in ids.split(",") if v.strip())
        except ValueError:
            vids = frozenset({-1})
        if not sep or not name or any(not 0 <= v <= 4094 for v in vids):
            raise ConfigError(f"--device-vlans {item!r}: expected NAME=VID[,VID...] (0-4094)")
        out[name] = vids
    return out


def attested_layers(config: Config, node: ExitNode, ns: argparse.Namespace) -> AttestedExit:
    ep = config.endpoints
    assert ep.listen is not None
    public_url = ns.public_url or f"ws://{ep.listen[0]}:{ep.listen[1]}{ep.path}"
    base = ns.config.parent if ns.config is not None else Path("/var/lib/shadowmesh")
    return AttestedExit.from_config(
        config, node.identity.node_id, node.metrics, public_url=public_url,
        state_dir=ns.state_dir or base / "state",
        ek_anchors=tuple(ns.ek_ca), ek_intermediates=tuple(ns.ek_intermediate),
    )  # fmt: skip


def main(ns: argparse.Namespace) -> int:
    try:
        config = apply_overrides(load_config(ns.config), ns)
        setup_logging(config.logging.level, audit=config.logging.audit)
        for problem in ensure_startable(config, role="exit"):
            log.warning("%s: %s", problem.field, problem.message)
        if not 0 < ns.mac_ageing <= 86400:
            raise ConfigError("--mac-ageing: must be 0-86400 seconds")
        masquerade = (
            Masquerade(ns.masquerade, backend=ns.masquerade_backend) if ns.masquerade else None
        )
        options = ExitOptions(
            device_vlans=parse_device_vlans(ns.device_vlans),
            masquerade=masquerade,
            status=not ns.no_status,
            mac_ageing_s=ns.mac_ageing,
            config_path=ns.config,
        )
        workers = worker_count(config)
        if workers > 1:
            # Every core: worker processes on the tunnel port, this one supervising them.
            node = ExitNode(config, options, metrics=WorkersMetrics())
            supervisor = Supervisor(node, workers)
            node.attach(attested_layers(config, node, ns))
            run_node(supervisor.run)
            return 0
        node = ExitNode(config, options)
        node.attach(attested_layers(config, node, ns))
        run_node(node.run)
    except (ExitError, L2BridgeError) as exc:
        print(f"shadowmesh exit: {exc}", file=sys.stderr)
        return 1
    return 0
