"""The client's optional layers, built from its config: registry exit choice and clock.

* Registry mode: when ``endpoints.exit_node_id`` is not set and ``chain.rpc_url`` and
  ``chain.contract_address`` are, the client picks its exit from the registry
  (``l2bridge.failover.ExitFinder``) with ``exit_nodes.min_reputation``, checks every
  exit's fresh evidence against ``tpm.golden_policy`` (required then) and the AK on chain,
  re-checks the exit in use every ``chain.attestation_interval`` at most, and fails over.
  web3 is imported only in this mode, on first use.
* Clock: the ``atomic_time`` sources when enabled, else the system clock; rotations run on
  its epoch boundaries every ``security.key_rotation_interval``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attestation import policy as golden
from attestation.errors import PolicyError
from l2bridge.config import Config, ConfigError
from l2bridge.failover import DialSettings, ExitFinder
from l2bridge.metrics import Metrics
from l2bridge.rotation import TunnelClock
from l2bridge.selection import NodeRecord, SelectionPolicy
from timing.config import build, settings_from
from timing.sources import Source


class ChainRegistry:
    """A RegistryView over RPC that (re)connects on use, so a chain that is down at start
    or restarts later is picked up without restarting the client."""

    def __init__(self, rpc_url: str, address: str) -> None:
        self._rpc, self._address = rpc_url, address
        self._client: Any = None
        self._lock = threading.Lock()

    def _registry(self) -> Any:
        with self._lock:
            if self._client is None:
                # web3 only when the registry is used: the static client never pays for it
                from contracts.client import RegistryClient, connect  # noqa: PLC0415

                self._client = RegistryClient(connect(self._rpc), self._address)
            return self._client

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._registry(), name)(*args)
        except Exception:
            self._client = None  # reconnect next time
            raise

    def healthy_nodes(self, min_reputation: int = 0) -> Iterable[bytes]:
        return list(self._call("healthy_nodes", min_reputation))

    def node(self, node_id: bytes) -> NodeRecord:
        record: NodeRecord = self._call("node", node_id)
        return record


def tunnel_clock(config: Config) -> tuple[TunnelClock, list[Source]]:
    """The clock rotations run on, and its (not yet started) sources."""
    settings = settings_from(config.atomic_time)
    if settings.enabled and settings.sources:
        clock, sources = build(settings)
        return TunnelClock(clock), sources
    return TunnelClock(None), []


def load_policy(path: Path | None) -> golden.GoldenPolicy:
    if path is None:
        raise ConfigError("tpm.golden_policy: required to check exits chosen from the registry")
    try:
        return golden.parse(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"tpm.golden_policy: cannot read {path}: {exc.strerror}") from None
    except PolicyError as exc:
        raise ConfigError(f"tpm.golden_policy: {exc}") from None


def registry_finder(
    config: Config, settings_for: Any, metrics: Metrics, clock: TunnelClock
) -> ExitFinder | None:
    """An ExitFinder when the config asks for registry mode, else None.

    ``settings_for(policy)`` returns the DialSettings (identity, certificate, access key).
    """
    chain = config.chain
    if config.endpoints.exit_node_id is not None or not (chain.rpc_url and chain.contract_address):
        return None
    settings: DialSettings = settings_for(load_policy(config.tpm.golden_policy))
    selection = SelectionPolicy(
        min_reputation=config.exit_nodes.min_reputation,
        max_attestation_age=chain.attestation_interval,
    )
    return ExitFinder(
        ChainRegistry(chain.rpc_url, chain.contract_address),
        settings,
        selection,
        metrics=metrics,
        clock=clock.now,
    )
