"""``shadowmesh client``: bridge a LAN to an exit node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from l2bridge.client.node import ClientNode
from l2bridge.commands.common import (
    add_network_overrides,
    apply_overrides,
    run_node,
    setup_logging,
)
from l2bridge.errors import L2BridgeError
from l2bridge.node.config import ensure_startable, load_config

log = logging.getLogger("shadowmesh.client")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration (see client.yaml)")
    add_network_overrides(parser)
    parser.add_argument("--connect", metavar="URL", help="override endpoints.connect (ws://...)")
    parser.add_argument("--exit-node-id", metavar="HEX", help="override endpoints.exit_node_id")
    parser.add_argument("--no-status", action="store_true", help="no local status endpoint")
    parser.set_defaults(func=main)


def main(ns: argparse.Namespace) -> int:
    try:
        config = apply_overrides(load_config(ns.config), ns)
        setup_logging(config.logging.level, audit=config.logging.audit)
        for problem in ensure_startable(config, role="client"):
            log.warning("%s: %s", problem.field, problem.message)
        node = ClientNode(config, status=not ns.no_status)
        with contextlib.suppress(KeyboardInterrupt):
            run_node(node.run)
    except L2BridgeError as exc:
        print(f"shadowmesh client: {exc}", file=sys.stderr)
        return 1
    return 0
