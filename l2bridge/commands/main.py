"""The one ``shadowmesh`` command.

Each subcommand lives in the package it belongs to and is imported only when it
is asked for, so ``shadowmesh clock status`` does not pay for importing web3.
A subcommand module exposes ``register(parser: argparse.ArgumentParser) -> None``,
which adds its arguments and sets ``func`` (called with the parsed namespace and
returning the process exit status).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("l2bridge.commands.init", "set up an exit or a client in one step (start here)"),
    "keys": ("l2bridge.commands.keys", "identities, admin key, device certificates"),
    "client": ("l2bridge.commands.client", "bridge a LAN to an exit node"),
    "exit": ("exitnode.cli", "run an exit node"),
    "attest": ("attestation.cli", "TPM enrolment, quotes, golden policy, verification"),
    "registry": ("contracts.cli", "the on-chain exit-node registry"),
    "enrol": ("exitnode.enrolment", "enrolment ceremony: EK chain, activation, identity, voucher"),
    "clock": ("l2bridge.commands.clock", "atomic clock sources and their discipline"),
    "simulate": ("lab.clocksim.cli", "a simulated rubidium or GPSDO on a pseudo-terminal"),
    "status": ("l2bridge.commands.status", "read a running client's or exit's status"),
    "peers": ("l2bridge.commands.peers", "list, disconnect or revoke an exit's devices"),
    "credentials": ("l2bridge.commands.credentials", "issue, list or revoke device credentials"),
    "demo": ("lab.demo", "two LANs bridged through attested, registered exits"),
}


# Nodes that carry traffic for hours. Their start-up heap (imports: web3, cryptography,
# websockets; ~100k objects) is frozen out of the garbage collector's view: a full
# collection over it takes ~50 ms on a 2-core VM and the data path's allocations trigger
# collections, each one stalling every tunnel (ping spikes). Garbage made later is
# collected as usual.
LONG_RUNNING = frozenset({"client", "exit"})


def _usage() -> str:
    lines = ["usage: shadowmesh <command> [options]", "", "commands:"]
    for name, (_module, text) in COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name = args[0]
    if name not in COMMANDS:
        print(f"shadowmesh: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name in LONG_RUNNING:
        gc.collect()
        gc.freeze()
    parser = argparse.ArgumentParser(prog=f"shadowmesh {name}", description=COMMANDS[name][1])
    module.register(parser)
    ns = parser.parse_args(args[1:])
    func = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(ns) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
