"""The exit's registry upkeep: register once (with stake), then attest on chain each interval.

Each round (``step``): take a challenge from the chain (the hash of a recent block, so
anyone can check the quote is fresh), have the TPM quote the boot PCRs 0-9 with the
challenge's registry-domain qualifying data (bound to the chain id, the registry, that block
hash and our nodeId, never the handshake's domain), and submit it, naming ``release`` (the
release this software is, approved on chain with its runtime-policy hash), with
``register`` (stake = ``stake_wei``, default the registry's minimum) the first time and
``updateAttestation`` after that. The endpoint and the declared region (``region``,
``chain.region``: an ISO 3166 code, or None for not said) on chain are corrected if they
differ.

Registration needs an enrolment voucher (``contracts.voucher``): an appointed enroller's
EIP-712 signature, made after the enrolment ceremony (``shadowmesh enrol``: EK chain,
credential activation, our identity key's signature over the terms), made out to the
operator account that sends ``register`` (ours). It is read from ``voucher``
(``chain.enrolment_voucher``) at every registration attempt, so a voucher written while
the exit runs is picked up at the next retry. Once registered it is not needed.

``state`` (also a gauge and status info) is one of:

* ``registered`` / ``attested``: the last round went through;
* ``unreachable``: the RPC endpoint did not answer. Fallback: keep serving clients with
  fresh handshake evidence (local attestation), retry with exponential backoff from
  ``retry_s`` up to the interval. The node goes stale on chain if this lasts beyond the
  registry's window, and clients then stop choosing it;
* ``rejected: <reason>``: the contract refused the quote (e.g. ``PCR digest not approved``
  after the software changed); retried each ``retry_s`` in case the owner approves;
* ``tpm-unavailable``: no quote could be made (see ``exitnode.lifecycle``);
* ``no-operator-key``: no key to sign transactions with; registry upkeep is off.
* ``no-voucher``: not registered yet and no usable enrolment voucher (none configured,
  unreadable, or made for another operator, node, AK, registry or chain: the detail says
  which);
  retried with backoff. A voucher the contract refuses (its signer is not, or no longer,
  an enroller) is ``rejected: voucher not from an enroller``.

The chain calls block, so they run in a worker thread; the loop itself is asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attestation import tpms
from attestation.errors import AttestationError
from contracts.client import RegistryClient
from contracts.constants import QUOTED_PCRS, SOFTWARE_RELEASE
from contracts.errors import (
    ChainError,
    KeyLoadError,
    RegistryError,
    RegistryReverted,
    VoucherError,
)
from contracts.quote import AkPublic, ContractQuote, ak_public
from contracts.voucher import Voucher
from exitnode.lifecycle import AK_FILE, ExitLifecycle
from l2bridge.node.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_S = 2.0
STATE_CODES = {
    "starting": 0.0,
    "registered": 1.0,
    "attested": 1.0,
    "unreachable": 2.0,
    "rejected": 3.0,
    "tpm-unavailable": 4.0,
    "no-operator-key": 5.0,
    "no-voucher": 6.0,
}
MAX_VOUCHER_READ = 1 << 16  # far above any voucher file; a bigger one is refused unread


@dataclass(frozen=True, slots=True)
class Round:
    at: float
    state: str
    tx: str | None = None


class RegistryUpkeep:
    def __init__(
        self,
        registry: Callable[[], RegistryClient],
        lifecycle: ExitLifecycle,
        endpoint: str,
        *,
        interval: float,
        stake_wei: int | None = None,
        voucher: Path | None = None,
        release: int = SOFTWARE_RELEASE,
        region: str | None = None,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        """``registry`` makes the client (called again after a failure, so a node that was
        unreachable at start is reached once it answers). ``voucher``: the enrolment
        voucher file used to register (``chain.enrolment_voucher``)."""
        self._make_registry = registry
        self._registry: RegistryClient | None = None
        self.lifecycle = lifecycle
        self.node_id = lifecycle.node_id
        self.endpoint = endpoint
        self.interval = interval
        self.stake_wei = stake_wei
        self.voucher_path = voucher
        self.release = release
        self.region = region
        self._retry = retry_s
        self._clock = clock
        self.state = "starting"
        self.detail = ""
        self.last_success: float | None = None
        self.failures = 0
        self.rounds: list[Round] = []
        self._metrics = metrics
        if metrics is not None:
            metrics.set_gauge("registry_state", self._state_code)
            metrics.set_gauge("attestation_age_s", self._age)

    def _state_code(self) -> float | None:
        return STATE_CODES.get(self.state.split(":")[0])

    def _age(self) -> float | None:
        return None if self.last_success is None else self._clock() - self.last_success

    def _set(self, state: str, detail: str = "", tx: str | None = None) -> None:
        self.state, self.detail = state, detail
        self.rounds.append(Round(self._clock(), state, tx))
        del self.rounds[:-100]
        if self._metrics is not None:
            self._metrics.set_info(registry_state=state + (f" ({detail})" if detail else ""))

    def _ak_point(self) -> AkPublic:
        return ak_public(tpms.parse_public(self.lifecycle.ak_public).public_key())

    def _quote(self, qualifying: bytes) -> ContractQuote:
        """A registry quote over the boot PCRs with the challenge's qualifying data."""
        attest, signature = self.lifecycle.registry_quote(qualifying, QUOTED_PCRS)
        return ContractQuote.from_parts(attest, signature)

    def _voucher(self, reg: RegistryClient, ak: AkPublic) -> bytes:
        """The voucher's signature, once it is known to be for this node, AK, registry and
        operator. Raises VoucherError saying what is missing or wrong, KeyLoadError when
        there is no operator key to register with."""
        if reg.account is None:
            raise KeyLoadError("no operator key: registration is signed by the operator")
        operator = str(reg.account.address)
        ak_file = self.lifecycle.state_dir / AK_FILE
        ask = (
            f"run the enrolment ceremony for node {self.node_id.hex()} with an enroller: "
            f"`shadowmesh enrol request --ak "
            f"{ak_file} --operator {operator} --registry {reg.address} --chain-id "
            f"{reg.chain_id()} ...`, then `enrol answer`; the enroller's `enrol vouch` writes "
            "the voucher"
        )
        if self.voucher_path is None:
            raise VoucherError(f"no enrolment voucher configured (chain.enrolment_voucher): {ask}")
        try:
            with self.voucher_path.open("rb") as f:
                text = f.read(MAX_VOUCHER_READ)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise VoucherError(f"cannot read {self.voucher_path}: {reason}; {ask}") from None
        voucher = Voucher.parse(text)
        voucher.check_for(reg.address, reg.chain_id(), self.node_id, ak, operator=operator)
        return voucher.signature

    def _status(self, reg: RegistryClient) -> str:
        try:
            return reg.node(self.node_id).status
        except RegistryReverted as exc:
            if exc.reason == "unknown node":
                return "none"
            raise

    def step(self) -> str:
        """One round (blocking). Returns the new state; never raises."""
        try:
            if self._registry is None:
                self._registry = self._make_registry()
            reg = self._registry
            self.lifecycle.check_measurement()
            status = self._status(reg)
            if status == "none":
                ak = self._ak_point()
                voucher = self._voucher(reg, ak)  # before quoting: no TPM work in vain
                stake = self.stake_wei or reg.config().minimum_stake_wei
                challenge = reg.challenge(self.node_id)
                result = reg.register(
                    self.node_id,
                    self.endpoint,
                    ak,
                    self._quote(challenge.qualifying_data),
                    challenge.block_number,
                    stake_wei=stake,
                    voucher=voucher,
                    release=self.release,
                    region=self.region,
                )
                state = "registered"
            else:
                challenge = reg.challenge(self.node_id)
                quote = self._quote(challenge.qualifying_data)
                result = reg.attest(
                    self.node_id, quote, challenge.block_number, release=self.release
                )
                state = "attested"
                record = reg.node(self.node_id)
                if record.endpoint != self.endpoint:
                    reg.update_endpoint(self.node_id, self.endpoint)
                if record.region != self.region:
                    reg.update_region(self.node_id, self.region)
        except KeyLoadError as exc:
            self._set("no-operator-key", str(exc))
        except RegistryReverted as exc:
            self._set("rejected", exc.reason or "reverted")
        except VoucherError as exc:
            self._set("no-voucher", str(exc))
        except ChainError as exc:
            self._registry = None
            self._set("unreachable", type(exc.__cause__ or exc).__name__)
        except AttestationError as exc:
            self._set("tpm-unavailable", str(exc))
        except (RegistryError, OSError, ValueError) as exc:
            self._registry = None
            self._set("unreachable", f"{type(exc).__name__}: {exc}")
        else:
            self.last_success = self._clock()
            self.failures = 0
            self._set(state, tx=result.tx_hash)
            log.info("on-chain %s: %s", state, result.tx_hash)
            return self.state
        self.failures += 1
        log.warning("registry upkeep: %s %s", self.state, self.detail)
        return self.state

    def next_wait(self) -> float:
        if self.failures == 0:
            return self.interval
        if self.state == "no-operator-key":
            return self.interval
        return float(min(self.interval, self._retry * 2 ** min(self.failures - 1, 10)))

    async def run(self, stop: asyncio.Event, *, first_delay: float = 0.0) -> None:
        """Rounds until ``stop``: now (after ``first_delay``), then each interval."""
        wait = first_delay
        while not stop.is_set():
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                    return
            await asyncio.to_thread(self.step)
            wait = self.next_wait()
