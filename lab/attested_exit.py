"""An exit's attestation side as a process, driven line by line (tests, bench/tamper.py).

It imports the exit's modules (so the same code is loaded and measured as in a running
exit) and answers through the real ``exitnode.lifecycle.ExitLifecycle``, which reads the
IMA list and event log and quotes on the TPM. Run it under ``lab.imaharness`` so the files
it loads are measured. Commands on stdin, one answer line each on stdout:

    quote <nonce hex>          -> "ok <evidence hex>" (the handshake's evidence)
    import <module>            -> "ok" after importing it (the exit loading a module)
    run <path> [args...]       -> "ok <exit code>" (the exit starting a program)
    quit

Anything that fails answers "err <reason>".
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import exitnode.attested
import exitnode.server  # noqa: F401
from exitnode.lifecycle import ExitLifecycle

RUN_TIMEOUT_S = 30.0


def _answer(lifecycle: ExitLifecycle, node_id: bytes, line: str) -> str:
    verb, _, rest = line.partition(" ")
    if verb == "quote":
        data = lifecycle.evidence(bytes.fromhex(rest), node_id)
        return f"ok {data.hex()}" if data else f"err no evidence: {lifecycle.detail}"
    if verb == "import":
        importlib.import_module(rest)
        return "ok"
    if verb == "run":
        done = subprocess.run(rest.split(), capture_output=True, timeout=RUN_TIMEOUT_S, check=False)
        return f"ok {done.returncode}"
    return f"err unknown command {verb!r}"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m lab.attested_exit")
    p.add_argument("--tcti", required=True)
    p.add_argument("--state-dir", type=Path, required=True, help="holds ak.json")
    p.add_argument("--node-id", required=True)
    p.add_argument("--ima-list", type=Path, required=True)
    p.add_argument("--event-log", type=Path, required=True)
    ns = p.parse_args()
    node_id = bytes.fromhex(ns.node_id)
    lifecycle = ExitLifecycle(
        ns.tcti, node_id, ns.state_dir, ima_list=ns.ima_list, event_log=ns.event_log
    )
    lifecycle.start()
    print("ready", flush=True)
    for raw in sys.stdin:
        line = raw.strip()
        if line == "quit":
            break
        try:
            answer = _answer(lifecycle, node_id, line)
        except Exception as exc:  # reported to the driver, never fatal
            answer = f"err {type(exc).__name__}: {exc}"
        print(answer, flush=True)
    lifecycle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
