"""Failover figures: a file of an exit changes and is loaded, the client refuses it and
moves to the other.

Real Anvil, two swtpm, two exits on loopback, the client's data path over an in-memory TAP
(the setup of tests/integration/e2e/test_registry_failover.py). Measures, per run:
detection (changed file measured -> refusal, bounded by the check interval) and resume
(refusal -> first frame echoed through the next exit). Between runs both exits reboot
(TPM power cycle, a fresh boot log and IMA list): a changed exit is trusted again only
after it booted approved software. Prints one JSON line.

    python3 bench/failover.py [--runs 3] [--check 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location(
    "e2e_world", ROOT / "tests" / "integration" / "e2e" / "test_registry_failover.py"
)
assert _spec is not None and _spec.loader is not None
e2e = importlib.util.module_from_spec(_spec)
sys.modules["e2e_world"] = e2e
_spec.loader.exec_module(e2e)

from exitnode.upkeep import RegistryUpkeep  # noqa: E402
from hardware.tap import FakeTap  # noqa: E402
from l2bridge.client.failover import DialSettings, ExitFinder  # noqa: E402
from l2bridge.client.pump import Backoff, Client  # noqa: E402
from l2bridge.client.selection import SelectionPolicy  # noqa: E402
from l2bridge.node.metrics import Metrics  # noqa: E402

APPROVED = "print('the exit software')\n"


async def one_run(world, check: float, tag: int) -> tuple[float, float]:
    _chain, registry, operators, exits, golden = world
    software = exits[0].kernel.log_path.parent.parent / "software" / "shadowmesh" / "exit.py"
    config = exits[0].kernel.log_path.parent.parent / "exit-policy.yaml"
    software.write_text(APPROVED)
    for x in exits:  # reboot: TPM power cycle, firmware and kernel measure again
        x.kernel.tpm.shutdown()
        x.kernel.tpm.close()
        x.swtpm.restart()
        x.kernel = e2e.boot(x.swtpm, x.kernel.log_path.parent)
        for path in (software, config):
            e2e.load(x, path)
        x.lifecycle.tcti = x.swtpm.tcti  # a restarted swtpm listens on new ports
        x.lifecycle._open()
    servers = [await e2e.serve_exit(x) for x in exits]
    for x, op in zip(exits, operators, strict=True):
        if not x.voucher.exists():
            e2e.vouch(registry, x, op.address)  # vouched once; later runs are registered
        x.upkeep = RegistryUpkeep(lambda op=op: registry.with_account(op), x.lifecycle, x.url,
                                  interval=e2e.INTERVAL, voucher=x.voucher)  # fmt: skip
        await asyncio.to_thread(x.upkeep.step)
    finder = ExitFinder(
        e2e.RegistryClient(registry.w3, registry.address),
        DialSettings(identity=e2e.CLIENT, credentials=e2e.CLIENT_WALLET, policy=golden),
        SelectionPolicy(max_attestation_age=e2e.INTERVAL),
        check_interval=check,
    )
    tap = FakeTap()
    client = Client(tap, finder.connect, Metrics("client"), backoff=Backoff(initial=0.05))
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(client.run(stop)), asyncio.ensure_future(finder.watch(stop))]
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        assert await e2e.echoed(tap, tag)
        first = finder.current
        changed = time.monotonic()
        software.write_text("print('the exit software, logging every frame')\n")
        e2e.load(next(x for x in exits if x.node_id == first.node_id), software)
        while finder.refusals.refusal(first.node_id) is None:
            await asyncio.sleep(0.005)
        refused = time.monotonic()
        while True:
            tap.inject(e2e.frame(tag + 1))
            await asyncio.sleep(0.01)
            if any(f == e2e.frame(tag + 1) for f in tap.delivered()):
                break
        resumed = time.monotonic()
        return refused - changed, resumed - refused
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        tap.close()
        for s in servers:
            s.close()
            await s.wait_closed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--check", type=float, default=1.0, help="client re-check interval (s)")
    ns = p.parse_args()
    gen = e2e.world.__wrapped__(_Factory())
    world = next(gen)
    detect, resume = [], []
    try:
        for i in range(ns.runs):
            d, r = asyncio.run(one_run(world, ns.check, 100 + 10 * i))
            detect.append(d)
            resume.append(r)
    finally:
        gen.close()
    print(json.dumps({
        "runs": ns.runs, "check_interval_s": ns.check,
        "detect_s_median": round(statistics.median(detect), 3),
        "detect_s_max": round(max(detect), 3),
        "resume_after_refusal_s_median": round(statistics.median(resume), 3),
        "resume_after_refusal_s_max": round(max(resume), 3),
    }))  # fmt: skip


class _Factory:
    def mktemp(self, name: str) -> Path:
        import tempfile

        return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


if __name__ == "__main__":
    main()
