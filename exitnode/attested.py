"""An exit's attestation, registry upkeep and disciplined clock, built from its config.

``AttestedExit.from_config`` decides what runs:

* TPM (``tpm.tcti``, AK kept at ``tpm.ak_context`` or ``<state dir>/ak.json``): when
  ``security.attestation_required`` is true or ``tpm.ak_context`` is set. With
  ``attestation_required`` a TPM that cannot be reached is a start-up error
  (``AttestationUnavailable``); without it the exit starts, says so, and serves no evidence.
* Registry upkeep: when ``chain.rpc_url`` and ``chain.contract_address`` are set (operator
  key from ``chain.keystore`` or $SHADOWMESH_REGISTRY_KEY), every
  ``chain.attestation_interval``; the first registration needs the enroller's voucher at
  ``chain.enrolment_voucher`` (``exitnode.upkeep``).
* Clock: the ``atomic_time`` sources when enabled (a dead source falls back per
  ``timing.clock``, stated in the status page), else the system clock.

The exit measures nothing about itself: the kernel's IMA measures every file it loads,
the configuration file included (``tpm.ima_list`` / ``tpm.event_log`` say where the logs
are when they are not the kernel's). ``measured_config`` renders the behaviour-relevant part
of a configuration (security, network, exit_nodes, obfuscation, atomic_time, chain
interval) as canonical JSON, so two exits' settings can be compared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from attestation.evidence import Since
from contracts.client import RegistryClient, connect, load_account
from exitnode.errors import AttestationUnavailable
from exitnode.lifecycle import ExitLifecycle
from exitnode.statefile import write_atomic
from exitnode.upkeep import RegistryUpkeep
from l2bridge.node.config import Config
from l2bridge.node.metrics import Metrics
from l2bridge.node.rotation import RekeyTally, TunnelClock
from l2bridge.protocol.handshake import EvidenceSince, EvidenceSinceProvider
from timing.chrony import ChronyFeeder
from timing.config import build, feeders, settings_from
from timing.sources import Source

log = logging.getLogger(__name__)

MEASURED_CONFIG = "measured-config.json"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, int | float | str):
        return value.value
    return value


def _time_settings(settings: Any) -> dict[str, Any]:
    """The clock settings without per-node paths: two exits with the same kinds of time
    sources on different serial devices run the same approved configuration."""
    doc = _plain(settings)
    if not isinstance(doc, dict):
        return {"value": doc}
    doc.pop("chrony_socket", None)
    for source in doc.get("sources", []):
        if isinstance(source, dict):
            source.pop("device", None)
            source["pps"] = source.get("pps") is not None
    return dict(doc)


def measured_config(config: Config, state_dir: Path) -> Path:
    """Write the measured part of ``config`` as canonical JSON; return its path.

    Raises StateFileError (one line) when it cannot be written."""
    net = config.network
    doc = {
        "security": _plain(config.security),
        "network": {"layer": net.layer, "mtu": net.mtu, "vlan_allow": list(net.vlan_allow)},
        "exit_nodes": _plain(config.exit_nodes),
        "obfuscation": _plain(config.obfuscation),
        "atomic_time": _time_settings(config.atomic_time),
        "chain": {"attestation_interval": config.chain.attestation_interval},
    }
    path = state_dir / MEASURED_CONFIG
    write_atomic(path, json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n", mode=0o644)
    return path


class AttestedExit:
    """The optional layers of an exit; ``run`` drives them beside the exit's data path."""

    def __init__(
        self,
        clock: TunnelClock,
        metrics: Metrics,
        *,
        lifecycle: ExitLifecycle | None = None,
        upkeep: RegistryUpkeep | None = None,
        sources: list[Source | ChronyFeeder] | None = None,
    ) -> None:
        self.clock = clock
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.upkeep = upkeep
        self.sources = sources or []
        self.tally = RekeyTally(metrics.counters)
        clock.publish(metrics)

    @classmethod
    def from_config(
        cls,
        config: Config,
        node_id: bytes,
        metrics: Metrics,
        *,
        public_url: str,
        state_dir: Path,
        ek_anchors: tuple[Path, ...] = (),
        ek_intermediates: tuple[Path, ...] = (),
    ) -> AttestedExit:
        """Raises AttestationUnavailable when attestation is required and impossible."""
        time_settings = settings_from(config.atomic_time)
        sources: list[Source | ChronyFeeder] = []
        if time_settings.enabled and time_settings.sources:
            disciplined, clock_sources = build(time_settings)
            sources = [*clock_sources, *feeders(time_settings, disciplined)]
            clock = TunnelClock(disciplined)
        else:
            clock = TunnelClock(None)
        lifecycle = None
        tpm = config.tpm
        if config.security.attestation_required or tpm.ak_context is not None:
            lifecycle = ExitLifecycle(
                tpm.tcti,
                node_id,
                state_dir,
                ima_list=tpm.ima_list,
                event_log=tpm.event_log,
                ek_anchors=ek_anchors,
                ek_intermediates=ek_intermediates,
                ak_file=tpm.ak_context,
                clock=clock.now,
                timeout_s=tpm.timeout,
                metrics=metrics,
            )
            try:
                lifecycle.start()
            except AttestationUnavailable as exc:
                if config.security.attestation_required:
                    raise
                log.warning("serving WITHOUT attestation (not required here): %s", exc)
                lifecycle = None
        upkeep = None
        chain = config.chain
        if lifecycle is not None and chain.rpc_url and chain.contract_address:
            rpc, address, keystore = chain.rpc_url, chain.contract_address, chain.keystore

            def registry() -> RegistryClient:
                return RegistryClient(connect(rpc), address, load_account(keystore))

            upkeep = RegistryUpkeep(
                registry,
                lifecycle,
                public_url,
                interval=chain.attestation_interval,
                voucher=chain.enrolment_voucher,
                region=chain.region,
                clock=clock.now,
                metrics=metrics,
            )
        metrics.set_info(
            attestation="tpm" if lifecycle is not None else "none",
            registry="on" if upkeep is not None else "off",
        )
        return cls(clock, metrics, lifecycle=lifecycle, upkeep=upkeep, sources=sources)

    @property
    def evidence_provider(self) -> Any:
        return self.lifecycle.evidence if self.lifecycle is not None else None

    @property
    def evidence_since_provider(self) -> EvidenceSinceProvider | None:
        """Evidence for a hello that says how much of the IMA list the client has."""
        lifecycle = self.lifecycle
        if lifecycle is None:
            return None

        def provide(nonce: bytes, node_id: bytes, since: EvidenceSince) -> bytes:
            return lifecycle.evidence(nonce, node_id, Since(since.reset_count, since.ima_count))

        return provide

    async def run(self, stop: asyncio.Event) -> None:
        for s in self.sources:
            s.start()
        tasks = [asyncio.ensure_future(self.tally.run(stop))]
        if self.upkeep is not None:
            tasks.append(asyncio.ensure_future(self.upkeep.run(stop)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for s in self.sources:
                s.stop()
            if self.lifecycle is not None:
                self.lifecycle.close()
