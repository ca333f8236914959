"""The client's multi-hop circuits: choosing hops from the registry, building, rebuilding.

:class:`CircuitLink` drives one ``ClientCircuit`` (l2bridge.protocol.circuit) over the
tunnel link to hop 1 and is a frame link for ``l2bridge.client.pump.Client``: frames go out
sealed in one onion layer per hop, and come back from the tail's L2 segment.

:func:`choose_hops` picks the hops, sans-I/O: in ranking order (healthy, reputation at least
``min_reputation``, fresh attestation, never a refused node: ``selection.rank``), no nodeId
twice, no on-chain operator account twice, and no region twice among hops whose region is
known (with ``jurisdictions``, no country twice either). Regions come from the registry, where
each exit's operator declares one (an ISO 3166 code, ``contracts.region``); the client's
``exit_nodes.regions_file`` (nodeId hex -> region, :func:`load_regions`) overrides them node by
node, because an on-chain region is only its operator's claim and a client (or its
organisation) may know better. Nodes with no known region are not held back by it.

:class:`CircuitBuilder` is the ``connect`` callable of the pump in multi-hop mode. Each call
reads the registry, chooses ``hops`` nodes and telescopes: the tunnel link to hop 1 (its
nodeId pinned), then one CREATE / EXTEND per hop, each with a fresh nonce whose evidence is
checked by the same ``ChainBoundChecker`` as a single-hop exit (AK on chain, nodeId, the
golden policy). A hop whose evidence, identity or signature fails is refused (never chosen
again until it attests on chain anew) and the circuit is built again without it; a hop that
does not answer is skipped the same way for a few seconds. When a hop dies later, its
neighbour sends DESTROY, the circuit link ends, and the pump's next ``connect`` builds a new
circuit (counted in ``rebuilds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attestation.checker import EvidenceChecker as AttestationChecker
from contracts.region import check_region, jurisdiction
from l2bridge.client.failover import ChainBoundChecker, DialSettings
from l2bridge.client.selection import (
    Candidate,
    NodeRecord,
    Refusals,
    RegistryView,
    SelectionPolicy,
    rank,
)
from l2bridge.constants import MAX_HOPS, Mode
from l2bridge.crypto.pq import Backend
from l2bridge.errors import L2BridgeError, NoExitAvailable, PeerError
from l2bridge.node import link as tunnel
from l2bridge.node.metrics import Metrics
from l2bridge.protocol.circuit import ClientCircuit, Destroyed, HopAdded, HopRefused
from l2bridge.protocol.handshake import ClientHandshake, EvidenceChecker
from l2bridge.protocol.records import Buffer
from l2bridge.protocol.session import Session
from l2bridge.transport.errors import TransportClosed

log = logging.getLogger(__name__)

HOP_TIMEOUT_S = 20.0  # one CREATE/EXTEND answered within this long (TPM quote included)
BUILD_ATTEMPTS = 8
INBOX_BATCHES = 256
REGISTRY_TIMEOUT_S = 10.0

Clock = Callable[[], float]


class HopFailed(L2BridgeError):
    """Adding ``node_id`` failed; ``refused``: its answer did not check (else: no answer)."""

    def __init__(self, node_id: bytes, reason: str, *, refused: bool) -> None:
        super().__init__(f"hop {node_id.hex()[:16]}: {reason}")
        self.node_id = node_id
        self.reason = reason
        self.refused = refused


@dataclass(frozen=True, slots=True)
class Hop:
    candidate: Candidate
    operator: str  # on-chain operator account ("" when the registry does not say)
    region: str | None  # regions file, else the registry; None: unknown


def load_regions(path: Path | None) -> dict[bytes, str]:
    """``nodeId -> region`` from a YAML mapping of hex nodeIds to region names."""
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of nodeId hex to region")
    out: dict[bytes, str] = {}
    for key, value in data.items():
        if isinstance(key, int):  # YAML reads an unquoted 0x... key as a number
            if not 0 <= key < 2**256:
                raise ValueError(f"{path}: bad entry {key!r}")
            node = key.to_bytes(32, "big")
        else:
            node = bytes.fromhex(str(key).removeprefix("0x"))
        if len(node) != 32 or not isinstance(value, str) or not value:
            raise ValueError(f"{path}: bad entry {key!r}")
        out[node] = value
    return out


def choose_hops(
    order: Sequence[Candidate],
    operators: Mapping[bytes, str],
    regions: Mapping[bytes, str],
    count: int,
    *,
    skip: Iterable[bytes] = (),
    first_of: frozenset[bytes] | None = None,
    jurisdictions: bool = False,
) -> list[Hop] | None:
    """The first ``count`` candidates (in ranking order) with distinct nodeIds, operators
    and known regions (and, with ``jurisdictions``, known countries: ``DE-BE`` and ``DE-BY``
    are one jurisdiction); None when the registry has too few such nodes.

    ``first_of``: hop 1 must be one of these (the exits this client holds a credential
    for: it dials hop 1 itself; every later hop is dialled by the hop before it)."""
    chosen: list[Hop] = []
    nodes: set[bytes] = set(skip)
    ops: set[str] = set()
    places: set[str] = set()
    if first_of is not None:
        eligible = [c for c in order if c.node_id in first_of and c.node_id not in nodes]
        if not eligible:
            return None
        order = [eligible[0]] + [c for c in order if c is not eligible[0]]
    for cand in order:
        operator = operators.get(cand.node_id, "").lower()
        region = regions.get(cand.node_id)
        if cand.node_id in nodes or (operator and operator in ops):
            continue
        keys = _places(region, jurisdictions)
        if places.intersection(keys):
            continue
        chosen.append(Hop(cand, operator, region))
        nodes.add(cand.node_id)
        if operator:
            ops.add(operator)
        places.update(keys)
        if len(chosen) == count:
            return chosen
    return None


def _places(region: str | None, jurisdictions: bool) -> set[str]:
    """What two hops may not share: the region, and with ``jurisdictions`` its country."""
    if region is None:
        return set()
    if not jurisdictions:
        return {region}
    return {region, "country:" + jurisdiction(region)}


def registry_regions(records: Iterable[NodeRecord]) -> dict[bytes, str]:
    """``nodeId -> region`` as the registry's records declare them (well-formed ISO 3166
    codes only: a record whose region does not parse counts as unknown)."""
    out: dict[bytes, str] = {}
    for record in records:
        region = getattr(record, "region", None)
        if isinstance(region, str):
            with contextlib.suppress(ValueError):
                out[bytes(record.node_id)] = check_region(region)
    return out


class CircuitLink:
    """One built (or building) circuit as a frame link: ``send_frames``/``recv_frames``."""

    def __init__(self, link: tunnel.Link, circuit: ClientCircuit, clock: Clock) -> None:
        self.link = link
        self.circuit = circuit
        self._clock = clock
        self._inbox: asyncio.Queue[list[Buffer] | None] = asyncio.Queue(INBOX_BATCHES)
        self._waiter: asyncio.Future[HopAdded] | None = None
        self.hop_ms: list[float] = []  # time to add each hop (through the ones before it)
        self.ended: str | None = None
        self.drops = circuit.stats.drops
        link.deliver_to(self._cells_in)
        self._watch = asyncio.ensure_future(self._watch_link())

    # -- what the rotation driver sees -----------------------------------------------------
    @property
    def session(self) -> Session:
        """The session with hop 1 (its record keys are rekeyed in band as usual)."""
        return self.link.session

    @property
    def rekeys_completed(self) -> int:
        return self.link.rekeys_completed

    @rekeys_completed.setter
    def rekeys_completed(self, value: int) -> None:
        self.link.rekeys_completed = value

    def rekey(self, epoch: int) -> bool:
        """Rekey the link to hop 1 and ratchet every hop's forward layer."""
        started = self.link.rekey(epoch)
        if self.ended is None and self.circuit.length:
            self.circuit.ratchet()
        return started

    # -- building --------------------------------------------------------------------------
    async def add(self, cells: Sequence[Buffer], node_id: bytes) -> HopAdded:
        self._waiter = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        try:
            await self.link.send_frames(cells)
            async with asyncio.timeout(HOP_TIMEOUT_S):
                added = await self._waiter
        except (TimeoutError, TransportClosed):
            raise HopFailed(node_id, "no answer", refused=False) from None
        finally:
            self._waiter = None
        self.hop_ms.append((time.monotonic() - started) * 1000.0)
        return added

    # -- data ------------------------------------------------------------------------------
    async def send_frames(self, frames: Sequence[Buffer]) -> None:
        if self.ended is not None:
            raise TransportClosed(self.ended)
        await self.link.send_frames(self.circuit.seal_frames(frames))

    async def recv_frames(self) -> list[Buffer]:
        batch = await self._inbox.get()
        if batch is None:
            self._inbox.put_nowait(None)  # every later call ends too
            raise TransportClosed(self.ended or "circuit closed")
        return batch

    async def close(self) -> None:
        if self.ended is None:
            self._end("closed")
            with contextlib.suppress(TransportClosed):
                self.link.send_now([self.circuit.close()])
        self._watch.cancel()
        await self.link.close()

    # -- cells in --------------------------------------------------------------------------
    def _cells_in(self, frames: list[memoryview]) -> None:
        now = self._clock()
        out: list[Buffer] = []
        for frame in frames:
            got = self.circuit.receive(frame, now)
            out.extend(got.frames)
            for event in got.events:
                self._event(event)
        if out:
            try:
                self._inbox.put_nowait(out)
            except asyncio.QueueFull:
                self.drops["inbox_full"] += len(out)

    def _event(self, event: HopAdded | HopRefused | Destroyed) -> None:
        waiter = self._waiter
        if isinstance(event, Destroyed):
            self._end(f"destroyed by a hop ({event.reason.name})")
            return
        if waiter is None or waiter.done():
            return
        if isinstance(event, HopAdded):
            waiter.set_result(event)
        else:
            waiter.set_exception(HopFailed(event.node_id, event.reason, refused=not event.usable))

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            log.info("circuit ended: %s", why)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TransportClosed(why))
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(None)

    async def _watch_link(self) -> None:
        with contextlib.suppress(TransportClosed):
            while True:  # with a sink set this only waits for the link's end
                await self.link.recv_frames()
        self._end("link to hop 1 closed")


async def build(
    hops: Sequence[Hop],
    dial_first: Callable[[Hop], Any],
    checker_for: Callable[[Hop], EvidenceChecker | None],
    *,
    mode: Mode = Mode.HYBRID,
    backend: Backend | None = None,
    clock: Clock = time.time,
) -> CircuitLink:
    """Telescope a circuit through ``hops``; HopFailed names the hop that failed."""
    if not 0 < len(hops) <= MAX_HOPS:
        raise ValueError("1..MAX_HOPS hops")
    first = hops[0]
    try:
        link: tunnel.Link = await dial_first(first)
    except PeerError as exc:
        raise HopFailed(first.candidate.node_id, f"link: {exc}", refused=True) from None
    except (OSError, TimeoutError, L2BridgeError) as exc:
        raise HopFailed(first.candidate.node_id, type(exc).__name__, refused=False) from None
    circuit = ClientCircuit(secrets.randbelow(2**32), mode=mode, backend=backend)
    cl = CircuitLink(link, circuit, clock)
    try:
        node = first.candidate.node_id
        await cl.add(circuit.first_hop(node, checker_for(first)), node)
        for hop in hops[1:]:
            node = hop.candidate.node_id
            cells = circuit.extend(node, hop.candidate.endpoint, checker_for(hop))
            await cl.add(cells, node)
        # The tail joins its segment now, not at our first frame: our LAN may be silent
        # while the far side already speaks to us.
        await link.send_frames(circuit.join_segment())
    except BaseException:
        await cl.close()
        raise
    return cl


class CircuitBuilder:
    """Registry-driven ``connect`` for the pump in multi-hop mode."""

    def __init__(
        self,
        registry: RegistryView,
        settings: DialSettings,
        selection: SelectionPolicy,
        *,
        hops: int,
        regions: Mapping[bytes, str] | None = None,
        jurisdictions: bool = False,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        dial_timeout: float = 10.0,
    ) -> None:
        if not 1 <= hops <= MAX_HOPS:
            raise ValueError(f"hops must be 1..{MAX_HOPS}")
        self.registry = registry
        self.settings = settings
        self.selection = selection
        self.hops = hops
        self.regions = dict(regions or {})  # the client's own: override the registry's
        self.jurisdictions = jurisdictions
        self.metrics = metrics
        self._clock = clock
        self._dial_timeout = dial_timeout
        self.refusals = Refusals()
        self._aks: dict[bytes, bytes] = {}
        self._verifier = AttestationChecker(settings.policy, self._aks.get, clock=clock)
        self.builds = 0
        self.rebuilds = 0
        self.current: CircuitLink | None = None
        self.path: list[Hop] = []
        self.checkers: dict[bytes, ChainBoundChecker] = {}
        if metrics is not None:
            metrics.set_gauge("circuit_length", lambda: float(len(self.path)))
            metrics.set_gauge("circuit_rebuilds", lambda: float(self.rebuilds))
            metrics.set_gauge("circuit_relayed_bytes", self._relayed)
            metrics.set_gauge("circuit_drops", self._drops)

    def _relayed(self) -> float | None:
        cl = self.current
        if cl is None:
            return None
        return float(cl.circuit.stats.bytes_in + cl.circuit.stats.bytes_out)

    def _drops(self) -> float | None:
        """Cells the client dropped on the circuit in use (tampered, replayed, overflow)."""
        cl = self.current
        return None if cl is None else float(sum(cl.drops.values()))

    def _read(self) -> tuple[list[NodeRecord], dict[bytes, str], dict[bytes, str]]:
        ids = list(self.registry.healthy_nodes(self.selection.min_reputation))
        records = [self.registry.node(i) for i in ids]
        operators = {bytes(r.node_id): str(getattr(r, "operator", "") or "") for r in records}
        regions = registry_regions(records) | self.regions
        return records, operators, regions

    def _checker(self, hop: Hop) -> ChainBoundChecker:
        checker = ChainBoundChecker(hop.candidate, self._verifier, self._aks)
        self.checkers[hop.candidate.node_id] = checker
        return checker

    async def _dial(self, hop: Hop) -> tunnel.Link:
        s = self.settings
        cand = hop.candidate
        handshake = ClientHandshake(
            s.identity, certificate=s.certificate, mode=s.mode, pinned_node_id=cand.node_id,
            config=s.session_config, backend=s.backend,
        )  # fmt: skip
        async with asyncio.timeout(self._dial_timeout):
            return await tunnel.connect(
                cand.endpoint, handshake, credential=s.credentials.for_exit(cand.node_id),
                node_id=cand.node_id,
                token_window=s.token_window, clock=self._clock,
                ssl=s.tls if cand.endpoint.startswith("wss:") else None, cover=s.cover,
            )  # fmt: skip

    async def connect(self) -> CircuitLink:
        """A new circuit through ``hops`` checked nodes; NoExitAvailable when none can be."""
        try:
            async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                records, operators, regions = await asyncio.to_thread(self._read)
        except Exception as exc:  # web3 raises many types; all mean "no answer now"
            raise NoExitAvailable(f"registry unreachable ({type(exc).__name__})") from None
        tried: list[str] = []
        for _ in range(BUILD_ATTEMPTS):
            ranking = rank(records, self.selection, self.refusals, self._clock())
            # Nodes that just failed to answer go last in the ranking; skip them here.
            order = [
                c for c in ranking.order if not self.refusals.cooling(c.node_id, self._clock())
            ]
            path = choose_hops(
                order, operators, regions, self.hops, jurisdictions=self.jurisdictions,
                first_of=self.settings.credentials.exits(),
            )  # fmt: skip
            if path is None:
                break
            try:
                cl = await build(
                    path, self._dial, self._checker,
                    mode=self.settings.mode, backend=self.settings.backend, clock=self._clock,
                )  # fmt: skip
            except HopFailed as exc:
                tried.append(str(exc))
                self._failed(path, exc)
                continue
            if self.builds:
                self.rebuilds += 1
            self.builds += 1
            self.current, self.path = cl, list(path)
            if self.metrics is not None:
                self.metrics.set_info(
                    circuit=[h.candidate.short for h in path],
                    circuit_hop_ms=[round(ms, 1) for ms in cl.hop_ms],
                )
            log.info("circuit built through %s", " -> ".join(h.candidate.short for h in path))
            return cl
        raise NoExitAvailable(
            f"no circuit of {self.hops} hops with distinct nodes, operators and regions "
            f"(tried: {'; '.join(tried) or 'none'})"
        )

    __call__ = connect

    async def check_path(self) -> bool:
        """Re-read the registry records of the circuit's hops; False (circuit closed, the
        hop refused) when one is no longer healthy, changed its AK, or fell below
        ``min_reputation``. Fresh evidence is not asked again here: that would take a
        direct connection from the client to every hop, which a circuit exists to avoid."""
        cl, path = self.current, list(self.path)
        if cl is None or cl.ended is not None:
            return True
        for hop in path:
            cand = hop.candidate
            try:
                async with asyncio.timeout(REGISTRY_TIMEOUT_S):
                    record = await asyncio.to_thread(self.registry.node, cand.node_id)
            except Exception:  # no answer now: keep the circuit, its hops were checked
                return True
            why = None
            if not record.healthy or record.status != "active":
                why = f"no longer healthy on chain ({record.status})"
            elif bytes(record.ak.x) != cand.ak_x or bytes(record.ak.y) != cand.ak_y:
                why = "registry AK changed"
            elif record.reputation < self.selection.min_reputation:
                why = f"reputation fell to {record.reputation}"
            if why is not None:
                log.warning("hop %s: %s; rebuilding the circuit", cand.short, why)
                self.refusals.refuse(cand, why, self._clock())
                await cl.close()
                return False
        return True

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        """``check_path`` every ``interval`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return
            try:
                await self.check_path()
            except Exception:
                log.exception("circuit check failed")

    def _failed(self, path: Sequence[Hop], exc: HopFailed) -> None:
        hop = next(h for h in path if h.candidate.node_id == exc.node_id)
        if exc.refused:
            checker = self.checkers.get(exc.node_id)
            why = "; ".join(checker.reasons) if checker and checker.reasons else exc.reason
            log.warning("hop %s refused: %s", hop.candidate.short, why)
            self.refusals.refuse(hop.candidate, why, self._clock())
        else:
            log.info("hop %s did not answer", hop.candidate.short)
            self.refusals.unreachable(exc.node_id, self._clock())
