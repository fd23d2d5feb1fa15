"""The transaction manager: the one owner of the executor's gas account.

``TxManager.submit`` signs and broadcasts a call at once and returns when its fate is known. The
critical path of an output is: its gas limit (learned, or ``eth_estimateGas`` of its exact
calldata) -> nonce from local bookkeeping -> fees already known (``ChainHead``) -> sign ->
``eth_sendRawTransaction`` to every endpoint: one round trip for most outputs, two for the rest.
Nothing waits for an earlier transaction's receipt.

Gas. The production Jobs contract calls the job owner's callback with all the gas that remains, so
no bound computed from the calldata fits every job: every slash, and every output whose owner
holds code (or whose code is not known), is estimated, and gets ``GAS_MARGIN`` of the estimate, at
least the caller's floor and at most its ceiling (the operator's ``max_job_gas``). A call whose
estimate is above the ceiling is not sent (``OVER_CEILING``); one whose estimate reverts is not
sent either (``REVERTED``: a slash already settled costs nothing).

When the owner holds no code (an externally owned account, the common case) the callback runs
nothing, and an output's gas depends only on the contract and the output's size. So each output
estimated for such an owner teaches the manager, per Jobs contract, ``base = estimate -
OUTPUT_GAS_PER_BYTE * len(calldata)`` (the largest seen) and the largest estimate; a later output
whose owner is *known* to hold no code (``note_owner``, checked when its job starts; remembered for
``CODE_KNOWN_S``) is then sent without an estimate, with ``LEARNED_MARGIN`` times ``max(base +
OUTPUT_GAS_PER_BYTE * len(calldata), largest estimate)`` (a smaller output costs no more), within
[floor, ceiling]. The limit is only a cap (unused gas is not paid), so it can be generous. Such an
output that the contract refuses shows it in its receipt instead of at a pre-check (``REVERTED``,
with the revert data read back by ``InFlight``, never sent again).

A transaction that reverted on chain because it ran out of gas (in an inner call, its receipt
shows gas used below the limit) is recognised by ``InFlight`` and sent again, on a new nonce, with
more gas while its window is open, up to ``OUT_OF_GAS_RETRIES`` times; re-sends are always
estimated (and a learned limit that was too low is thereby raised: the estimate is learned from,
once the owner is read again and still holds no code).

One background loop (``start``/``close``) reads the head each poll and hands the in-flight
transactions to ``InFlight`` (receipts, replacements, re-sends, withdrawals). Transient RPC errors
never produce a second transaction for one submission: the transaction stays tracked until its
nonce is mined. "insufficient funds" is one ERROR naming the account and its balance, at most once
per ``FUNDS_REPORT_INTERVAL_S``; it and "nonce too low" are never retried blindly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from executor.chain.clock import ChainClock
from executor.chain.transactions import reads as raw
from executor.chain.transactions.broadcast import Broadcaster
from executor.chain.transactions.head import ChainHead, Head
from executor.chain.transactions.inflight import (
    Attempt,
    GasSource,
    InFlight,
    Tracked,
    TxOutcome,
    TxStatus,
)
from executor.chain.transactions.policy import (
    Fees,
    NonceBook,
    RpcFailure,
    classify_rpc_error,
    retry_transient,
    revert_data,
)
from executor.chain.transactions.signing import sign_dynamic_fee_tx
from executor.metrics import NO_METRICS, Metrics
from executor.supervisor import Supervisor

logger = logging.getLogger(__name__)

__all__ = [
    "GasSource",
    "Head",
    "LearnedGas",
    "TxKind",
    "TxManager",
    "TxOutcome",
    "TxStatus",
    "account_from_key",
]

TxKind = Literal["output", "slash"]
Callback = tuple[str, bytes]
"""(job owner, calldata): the call the contract makes to the owner with all the gas left."""

NOOP_GAS = 21_000
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 5, 4
"""Estimated transactions get 125% of the estimate (the state may change before they are mined:
another executor's output first, a callback whose cost depends on storage)."""
DEFAULT_GAS_CEILING = 30_000_000
"""The default ``max_job_gas``: one block's gas on most chains; a callback storing a 20 KiB output
measured ~14.4M on the production contracts."""
CODE_KNOWN_S = 300.0
"""How long whether a job owner holds code is remembered (an account may get code later: a
contract deployed at a precomputed address, an EIP-7702 delegation)."""
CODE_KNOWN_MAX = 4096
OUTPUT_GAS_PER_BYTE = 64
"""Gas a learned output limit allows per byte of calldata: generous (a calldata byte costs 16, and
the contract copies, hashes and logs the output). Measured on the production contracts: ~270-330k
for a small output, ~846k for a 20 KiB one (~28 per byte)."""
LEARNED_MARGIN = 3
"""An output sent with a learned limit gets this many times what was learned (the state varies:
production's first output pays rewards, a node re-entering the selection tree costs ~335k more,
which twice a small output's ~330k would barely cover). Unused gas is not paid: the margin costs
an account-owned output nothing but the balance it must hold for the limit."""
OUT_OF_GAS_RETRIES = 3
"""A transaction that ran out of gas is sent again at most this many times."""
FUNDS_REPORT_INTERVAL_S = 60.0
SEND_ATTEMPTS = 3
PRECHECK_RETRY_S = 10.0
LOOP_ERROR_BUDGET = 20
"""Consecutive failed ticks of the loop after which the supervisor reports it down."""


@dataclass
class LearnedGas:
    """What outputs to one Jobs contract cost when their job owner holds no code."""

    base: int
    """The largest ``estimate - OUTPUT_GAS_PER_BYTE * len(calldata)`` seen (may be negative)."""
    peak: int
    """The largest estimate seen."""
    samples: int = 1

    def learn(self, estimate: int, size: int) -> None:
        self.base = max(self.base, estimate - OUTPUT_GAS_PER_BYTE * size)
        self.peak = max(self.peak, estimate)
        self.samples += 1

    def needs(self, size: int) -> int:
        """What an output with ``size`` bytes of calldata is expected to need, at most: never
        below the largest estimate, since a shorter output costs no more (the per-byte term of
        a long sample alone would under-count a short one)."""
        return max(self.peak, self.base + OUTPUT_GAS_PER_BYTE * size)


@dataclass(frozen=True)
class _Call:
    """One submission: what is sent, for which job, until when, within which ceiling."""

    to: str
    data: bytes
    kind: TxKind
    job_id: int
    valid_until: float | None
    gas_ceiling: int
    callback: Callback | None

    @property
    def label(self) -> str:
        return f"job {self.job_id} {self.kind}"


class _Estimate(NamedTuple):
    gas: int
    measured: bool
    """The node's own estimate (False: the ceiling, sent because the node could not tell)."""


def _intrinsic_gas(data: bytes) -> int:
    """What a transaction with this calldata pays before running anything: 21000 + 16 per
    non-zero byte and 4 per zero byte, or the calldata floor of EIP-7623 (10 per token, a zero
    byte one token, another byte four) when that is more, as the node's estimate charges it."""
    zeros = data.count(0)
    standard = 21_000 + 16 * (len(data) - zeros) + 4 * zeros
    floor = 21_000 + 10 * (zeros + 4 * (len(data) - zeros))
    return max(standard, floor)


def _out_of_gas_error(error: BaseException) -> bool:
    """An ``eth_estimateGas`` refusal that says the call needs more gas than it was allowed."""
    text = str(error).lower()
    return "out of gas" in text or "gas required exceeds" in text or "exceeds allowance" in text


def account_from_key(hex_key: str) -> LocalAccount:
    """A gas account from a 32-byte hex private key (with or without 0x); ValueError if bad."""
    key = hex_key[2:] if hex_key.startswith(("0x", "0X")) else hex_key
    if len(key) != 64:
        raise ValueError("must be 32 bytes of hex (64 hex digits)")
    try:
        return Account.from_key(bytes.fromhex(key))
    except ValueError as e:
        raise ValueError("is not a valid secp256k1 private key in hex") from e


class TxManager:
    def __init__(
        self,
        w3: AsyncWeb3,
        broadcast: Sequence[AsyncWeb3],
        chain_id: int,
        *,
        poll_s: float = 0.25,
        idle_poll_s: float = 1.0,
        metrics: Metrics = NO_METRICS,
        clock: ChainClock | None = None,
    ) -> None:
        """``w3`` for reads; signed transactions go to every client of ``broadcast``.
        The head is polled every ``poll_s`` while transactions are in flight, else every
        ``idle_poll_s``; each read feeds ``clock``, the daemon's chain clock, against which
        every window is judged."""
        self._w3 = w3
        self._metrics = metrics
        self._broadcaster = Broadcaster(broadcast or [w3])
        self._chain_id = chain_id
        self._poll_s = poll_s
        self._idle_poll_s = idle_poll_s
        self._account: LocalAccount | None = None
        self._nonces: dict[str, NonceBook] = {}
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.head = ChainHead(w3, clock)
        self._inflight = InFlight(
            w3, self.head, send=self._send, on_no_funds=self._report_no_funds, wake=self._wake.set
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._funds_reported: dict[str, float] = {}
        self._code_known: dict[str, tuple[bool, float]] = {}
        self._code_lookups: dict[str, asyncio.Task[bool | None]] = {}
        self._learned: dict[tuple[str, TxKind], LearnedGas] = {}
        self.loop_errors = 0
        """Consecutive failed ticks of the background loop (0 when healthy)."""
        self._loop_error = ""

    # --- account and chain state -----------------------------------------------------------------

    @property
    def address(self) -> str | None:
        return self._account.address if self._account else None

    def set_account(self, account: LocalAccount) -> None:
        """Use a new gas key from now on; its nonce is read from the chain before its first tx.
        Transactions in flight finish with the key they started with."""
        if self._account is None or account.address != self._account.address:
            self._nonces.pop(account.address, None)
        self._account = account

    def chain_now(self) -> float:
        return self.head.chain_now()

    def current_fees(self) -> Fees:
        return self.head.fees()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def withdrawing(self) -> int:
        return self._inflight.withdrawing

    async def wait_for_block(self, timeout_s: float) -> None:
        await self.head.wait_for_block(timeout_s)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the background loop: as the part ``tx-manager`` of ``supervisor`` (restarted if
        it dies, reported down while its ticks keep failing), else as a plain task."""
        self._closing = False
        if self._loop_task is None:
            if supervisor is not None:
                self._loop_task = supervisor.run("tx-manager", self._run, health=self.loop_trouble)
            else:
                self._loop_task = asyncio.create_task(self._run(), name="tx-manager")

    def loop_trouble(self) -> str | None:
        """Why the loop is not doing its work (``LOOP_ERROR_BUDGET`` ticks in a row failed)."""
        if self.loop_errors < LOOP_ERROR_BUDGET:
            return None
        return f"{self.loop_errors} consecutive failed ticks: {self._loop_error}"

    async def close(self) -> None:
        """Stop the loop; submitters still waiting get FAILED ("shutting down"), and their
        transactions stay in the pool (they may still land)."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        lookups = list(self._code_lookups.values())
        for lookup in lookups:
            lookup.cancel()
        await asyncio.gather(*lookups, return_exceptions=True)
        await self._broadcaster.close()
        self._inflight.abandon()

    # --- submitting ------------------------------------------------------------------------------

    async def submit(
        self,
        to: str,
        data: bytes,
        *,
        kind: TxKind,
        job_id: int,
        valid_until: float | None,
        gas_limit: int | None = None,
        gas_floor: int = 0,
        gas_ceiling: int = DEFAULT_GAS_CEILING,
        callback: Callback | None = None,
    ) -> TxOutcome:
        """Send a call and wait until it is mined, refused or useless (``valid_until``, chain
        time, passed).

        ``gas_limit=None`` estimates the call (``eth_estimateGas`` on the pending block): a
        refusal then sends nothing, an estimate above ``gas_ceiling`` gives ``OVER_CEILING``
        (``gas_needed`` says how much), else the limit is ``GAS_MARGIN`` of the estimate, within
        [``gas_floor``, ``gas_ceiling``]. ``callback`` (the job owner and the calldata the
        contract will call it with) is estimated at the same time, from the contract's address:
        the transaction's own estimate is the least gas with which it does not revert, and a
        callback that fails does not make it revert, so alone it can starve the callback.

        An output (``kind="output"``) whose callback owner is known to hold no code, to a
        contract for which such outputs were estimated before, is sent without an estimate, with
        the learned limit (module docstring); a refusal of the contract then comes back from its
        receipt (``REVERTED``, ``tx_hash`` set). A given ``gas_limit`` skips the estimate (and
        the out-of-gas re-sends). Cancelling the caller while the tx is pending withdraws it
        (same nonce, a no-op): then CancelledError propagates as usual. Every outcome is counted
        in the ``transactions_total`` metric (an out-of-gas revert as result ``out-of-gas``, each
        time), and how each output's limit was chosen in ``output_gas_limits_total``.
        """
        try:
            call = _Call(to, data, kind, job_id, valid_until, gas_ceiling, callback)
            outcome = await self._submit_fitting(call, gas_limit, gas_floor)
        except asyncio.CancelledError:
            self._metrics.transaction(kind, "withdrawn")
            raise
        self._metrics.transaction(kind, outcome.status.value)
        return outcome

    async def _submit_fitting(
        self, call: _Call, gas_limit: int | None, gas_floor: int
    ) -> TxOutcome:
        """``_submit``, sent again with more gas after each out-of-gas revert (window open).
        Only the first attempt may go with a learned limit: every re-send is estimated."""
        fixed = gas_limit is not None
        gas_ceiling, callback = call.gas_ceiling, call.callback
        outcome = await self._submit(call, gas_limit, gas_floor, learned_ok=True)
        tries = 0
        while outcome.status is TxStatus.OUT_OF_GAS:
            self._metrics.transaction(call.kind, outcome.status.value)
            label = call.label
            last_limit = outcome.gas_limit or 0
            if fixed or tries >= OUT_OF_GAS_RETRIES or last_limit >= gas_ceiling:
                logger.error(
                    "%s: tx %s ran out of gas (limit %d, needs %s; ceiling max_job_gas=%d): "
                    "not sent again",
                    label,
                    outcome.tx_hash,
                    last_limit,
                    outcome.gas_needed or "?",
                    gas_ceiling,
                )
                return outcome
            if call.valid_until is not None and self.chain_now() > call.valid_until:
                return outcome
            tries += 1
            # At least half as much again as the limit that failed, whatever the new estimate.
            floor = max(gas_floor, last_limit * 3 // 2, (outcome.gas_needed or 0))
            learned = outcome.gas_source == "learned"
            if learned and callback is not None:
                # The owner may have got code since it was read (a contract deployed at its
                # address, an EIP-7702 delegation): the re-send reads it again, and its
                # estimate is learned from only if the owner still holds none.
                self._code_known.pop(callback[0], None)
            logger.warning(
                "%s: tx %s ran out of gas (%slimit %d, needs %s): sending again with an estimate "
                "and at least %d",
                label,
                outcome.tx_hash,
                "learned " if learned else "",
                last_limit,
                outcome.gas_needed or "?",
                min(floor, gas_ceiling),
            )
            outcome = await self._submit(call, None, min(floor, gas_ceiling))
        return outcome

    async def _submit(
        self, call: _Call, gas_limit: int | None, gas_floor: int, *, learned_ok: bool = False
    ) -> TxOutcome:
        to, data, kind, valid_until = call.to, call.data, call.kind, call.valid_until
        gas_ceiling, callback, label = call.gas_ceiling, call.callback, call.label
        account = self._account
        if self._closing:
            logger.warning("%s: not sent: shutting down", label)
            return TxOutcome(TxStatus.FAILED, detail="shutting down")
        if account is None:
            logger.error("%s: not sent: no executor gas key configured yet", label)
            return TxOutcome(TxStatus.NO_ACCOUNT, detail="no gas key")
        if self.head.latest is None:
            try:
                await retry_transient(self.head.read)
            except Exception as e:
                logger.error("%s: not sent: cannot read the chain head: %s", label, e)
                return TxOutcome(TxStatus.FAILED, detail=f"no chain head: {e}")
        if valid_until is not None and self.chain_now() > valid_until:
            logger.info("%s: not sent: its window closed at chain time %.0f", label, valid_until)
            return TxOutcome(TxStatus.EXPIRED, detail="window closed before sending")
        source: GasSource = "given"
        if gas_limit is None and learned_ok:
            gas_limit = self._learned_limit(call, gas_floor)
            source = "learned"
        if gas_limit is None:
            # Both estimates at once: one round trip on the critical path.
            estimate, callback_gas = await asyncio.gather(
                self._precheck(account, to, data, label, valid_until, gas_ceiling),
                self._callback_gas(to, callback),
            )
            if isinstance(estimate, TxOutcome):
                return estimate
            # The tx's estimate may have starved the callback; the floor (the call's own work
            # without it) plus what the callback needs does not. The larger of the two.
            needed = max(estimate.gas, gas_floor + callback_gas) if callback_gas else estimate.gas
            if needed > gas_ceiling:
                return TxOutcome(
                    TxStatus.OVER_CEILING,
                    gas_needed=needed,
                    detail=f"needs {needed} gas, above max_job_gas={gas_ceiling}",
                )
            source = "estimate" if estimate.measured else "ceiling"
            if estimate.measured and kind == "output" and callback is not None:
                if self._code_fresh(callback[0]) is False:
                    self._learn(to, kind, estimate.gas, len(data))
            with_margin = needed * GAS_MARGIN_NUM // GAS_MARGIN_DEN
            gas_limit = min(gas_ceiling, max(gas_floor, with_margin))
        if kind == "output":
            self._metrics.output_gas_limit(source)
        tracked = Tracked(
            label,
            account,
            -1,
            to,
            data,
            gas_limit,
            valid_until,
            job_id=call.job_id,
            gas_source=source,
        )
        send = asyncio.ensure_future(self._send_first(tracked))
        try:
            refused = await asyncio.shield(send)
        except asyncio.CancelledError:
            send.add_done_callback(lambda _: self._withdraw(tracked))
            raise
        if refused is not None:
            return refused
        waiter = asyncio.get_running_loop().create_future()
        tracked.waiter = waiter
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            self._withdraw(tracked)
            raise

    def _withdraw(self, tracked: Tracked) -> None:
        """The submitter was cancelled (e.g. a reorg removed its job): withdraw the tx, unless
        the manager is closing (a shutdown leaves pending transactions to land)."""
        if not self._closing:
            self._inflight.withdraw(tracked, "cancelled")

    def _learned_limit(self, call: _Call, gas_floor: int) -> int | None:
        """The limit an output gets without an estimate, or None (it is estimated): its owner is
        known to hold no code (no round trip here) and outputs to ``to`` for such owners were
        estimated before. None too when the limit would pass the ceiling: the estimate then
        decides whether the output is worth sending."""
        callback = call.callback
        if call.kind != "output" or callback is None or self._code_fresh(callback[0]) is not False:
            return None
        learned = self._learned.get((call.to.lower(), call.kind))
        if learned is None:
            return None
        limit = LEARNED_MARGIN * learned.needs(len(call.data))
        if limit > call.gas_ceiling:
            return None
        return min(call.gas_ceiling, max(gas_floor, limit))

    def _learn(self, to: str, kind: TxKind, estimate: int, size: int) -> None:
        key = (to.lower(), kind)
        learned = self._learned.get(key)
        if learned is None:
            learned = LearnedGas(estimate - OUTPUT_GAS_PER_BYTE * size, estimate)
            self._learned[key] = learned
            logger.info(
                "%ss to %s for job owners without code: learned %d gas + %d per calldata byte "
                "(from an estimate of %d for %d bytes); such %ss are now sent without an estimate",
                kind,
                to,
                learned.base,
                OUTPUT_GAS_PER_BYTE,
                estimate,
                size,
                kind,
            )
            return
        before = learned.needs(size)
        learned.learn(estimate, size)
        if learned.needs(size) > before:
            logger.debug("%ss to %s: learned base now %d", kind, to, learned.base)

    def learned_gas(self, to: str, kind: TxKind = "output") -> LearnedGas | None:
        """What outputs to ``to`` were learned to cost for owners without code (None: nothing)."""
        return self._learned.get((to.lower(), kind))

    async def _precheck(
        self,
        account: LocalAccount,
        to: str,
        data: bytes,
        label: str,
        valid_until: float | None,
        gas_ceiling: int,
    ) -> _Estimate | TxOutcome:
        """The estimated gas of the call (no margin), or its refusal (nothing is sent then).

        The node searches up to its own cap (the block's gas limit), not ``gas_ceiling``: with a
        lower cap an inner call's out-of-gas reads as a revert without data. An estimate the
        node cannot make (out of gas at its cap) counts as above the ceiling. A node that keeps
        failing to answer leaves the call the ceiling (it is sent rather than lost: only the gas
        used is paid)."""
        call: dict[str, Any] = {"from": account.address, "to": to, "data": data}
        give_up = time.monotonic() + PRECHECK_RETRY_S
        while True:
            started = time.perf_counter()
            try:
                # Against the pending block: its timestamp is the chain time the tx will see.
                gas = await self._w3.eth.estimate_gas(call, "pending")  # type: ignore[arg-type]
                self._metrics.gas_estimate(time.perf_counter() - started)
                return _Estimate(gas, True)
            except Exception as e:
                failure = classify_rpc_error(e)
                if _out_of_gas_error(e):
                    return _Estimate(max(gas_ceiling + 1, await self._gas_cap()), False)
                if failure is RpcFailure.REVERT:
                    return TxOutcome(TxStatus.REVERTED, revert_data=revert_data(e), detail=str(e))
                expired = valid_until is not None and self.chain_now() > valid_until
                if failure is not RpcFailure.TRANSIENT or expired:
                    logger.warning("%s: pre-check failed, not sent: %s", label, e)
                    return TxOutcome(TxStatus.FAILED, detail=f"pre-check failed: {e}")
                if time.monotonic() > give_up:
                    logger.warning("%s: gas not estimated (%s): sent with the ceiling", label, e)
                    return _Estimate(gas_ceiling, False)
                logger.info("%s: pre-check failed (%s); retrying", label, e)
                await asyncio.sleep(0.5)

    async def _callback_gas(self, caller: str, callback: Callback | None) -> int:
        """Gas the job owner's callback needs beyond what it is given when it fails, as the
        caller (the Jobs contract) will call it: its estimate less the intrinsic cost of a
        transaction (the inner call pays none), times 64/63 (the caller keeps 1/64). 0 when the
        owner has no code to run, when the callback reverts anyway, or the node cannot tell."""
        if callback is None:
            return 0
        owner, data = callback
        if not await self._has_code(owner):
            return 0  # an account: the call runs nothing
        call: dict[str, Any] = {"from": caller, "to": owner, "data": data}
        try:
            gas = await self._w3.eth.estimate_gas(call, "pending")  # type: ignore[arg-type]
        except Exception:
            return 0
        return max(0, gas - _intrinsic_gas(data)) * 64 // 63

    def note_owner(self, owner: str) -> None:
        """Start reading whether the job owner ``owner`` holds code, unless that is known (or
        being read): called as its job starts, so that the answer is there when its output is
        (an output of an owner known to hold no code can go without an estimate). The read is
        this manager's task, shared by whoever asks meanwhile; ``close`` ends it."""
        if not self._closing and self._code_fresh(owner) is None:
            self._code_lookup(owner)

    def _code_fresh(self, address: str) -> bool | None:
        """Whether ``address`` holds code, if read within ``CODE_KNOWN_S`` (else None)."""
        known = self._code_known.get(address)
        if known is not None and time.monotonic() - known[1] < CODE_KNOWN_S:
            return known[0]
        return None

    def _code_lookup(self, address: str) -> asyncio.Task[bool | None]:
        lookup = self._code_lookups.get(address)
        if lookup is None:
            lookup = asyncio.create_task(self._read_code(address), name=f"code of {address}")
            self._code_lookups[address] = lookup

            def forget(task: asyncio.Task[bool | None]) -> None:
                if self._code_lookups.get(address) is task:
                    del self._code_lookups[address]

            lookup.add_done_callback(forget)
        return lookup

    async def _read_code(self, address: str) -> bool | None:
        """``eth_getCode``, remembered; None when the node cannot tell (nothing remembered)."""
        started = time.monotonic()
        try:
            code = await raw.call(self._w3, "eth_getCode", [address, "latest"])
        except Exception as e:
            logger.debug("code of %s not read: %s", address, e)
            return None
        has_code = isinstance(code, str) and len(code) > 2
        if address not in self._code_known and len(self._code_known) >= CODE_KNOWN_MAX:
            self._code_known.pop(next(iter(self._code_known)))
        self._code_known[address] = (has_code, started)
        return has_code

    async def _has_code(self, address: str) -> bool:
        """Whether ``address`` holds code, remembered for ``CODE_KNOWN_S`` (most job owners send
        many jobs: their callback estimate is then skipped when they are accounts). True when the
        node cannot tell (the callback is estimated then). Joins a read already under way."""
        known = self._code_fresh(address)
        if known is not None:
            return known
        lookup = self._code_lookup(address)
        await asyncio.wait((lookup,))  # a cancelled caller leaves the read to the others
        if lookup.cancelled():
            return True
        answer = lookup.result()
        return True if answer is None else answer

    async def _gas_cap(self) -> int:
        """The latest block's gas limit (0 if unknown): what the node's estimate searched up to."""
        try:
            block = await self._w3.eth.get_block("latest")
            return int(block["gasLimit"])
        except Exception:
            return 0

    async def _send_first(self, tracked: Tracked) -> TxOutcome | None:
        """Assign a nonce and broadcast; None once the tx is tracked (the loop owns it then)."""
        account = tracked.account
        async with self._send_lock:
            book = self._nonces.setdefault(account.address, NonceBook())
            for _ in range(SEND_ATTEMPTS):
                if not book.synced:
                    try:
                        count = await retry_transient(self._pending_count, account.address)
                        # never below a tracked tx of this account (its key was rotated back)
                        book.sync(max(count, self._inflight.next_nonce(account.address)))
                    except Exception as e:
                        logger.error("%s: not sent: cannot read the nonce: %s", tracked.label, e)
                        return TxOutcome(TxStatus.FAILED, detail=f"nonce unknown: {e}")
                tracked.nonce = book.take()
                failure, error = await self._send(tracked, self.head.fees(), False)
                if failure in (RpcFailure.NONCE_TOO_LOW, RpcFailure.UNDERPRICED):
                    # Our own tx may hold the nonce already (an answer got lost and the send was
                    # retried): then it is tracked, and never sent again on a new nonce.
                    if await self._known(tracked.last.tx_hash):
                        failure = None
                if failure in (None, RpcFailure.ALREADY_KNOWN, RpcFailure.TRANSIENT):
                    if failure is RpcFailure.TRANSIENT:
                        logger.warning(
                            "%s: nonce %d: broadcast failed (%s); tracked, the loop re-sends",
                            tracked.label,
                            tracked.nonce,
                            error,
                        )
                    self._inflight.add(tracked)
                    return None
                tracked.attempts.clear()
                book.give_back(tracked.nonce)
                if failure in (RpcFailure.NONCE_TOO_LOW, RpcFailure.UNDERPRICED):
                    # Another sender used this nonce (the key is shared?): re-read the nonce.
                    logger.warning(
                        "%s: nonce %d refused (%s): re-reading the account's nonce",
                        tracked.label,
                        tracked.nonce,
                        error,
                    )
                    count = await retry_transient(self._pending_count, account.address)
                    book.sync(max(count, tracked.nonce + 1))
                    continue
                if failure is RpcFailure.FEE_BELOW_BASE_FEE:
                    await self.head.read_pending_base_fee()
                    continue
                if failure is RpcFailure.INSUFFICIENT_FUNDS:
                    await self._report_no_funds(account)
                    logger.warning("%s: not sent: gas account out of funds", tracked.label)
                    return TxOutcome(TxStatus.NO_FUNDS, detail=str(error))
                if failure is RpcFailure.REVERT:
                    return TxOutcome(
                        TxStatus.REVERTED, revert_data=revert_data(error), detail=str(error)
                    )
                logger.error("%s: refused by the node: %s", tracked.label, error)
                return TxOutcome(TxStatus.FAILED, detail=str(error))
        logger.error("%s: not sent after %d attempts", tracked.label, SEND_ATTEMPTS)
        return TxOutcome(TxStatus.FAILED, detail="nonce/fee refusals")

    async def _known(self, tx_hash: str) -> bool:
        """Whether the node knows this tx (pooled or mined); False if it cannot tell."""
        try:
            await retry_transient(self._w3.eth.get_transaction, tx_hash)
        except Exception:
            return False
        return True

    async def _pending_count(self, address: str) -> int:
        return await raw.nonce(self._w3, address, "pending")

    async def _send(
        self, tracked: Tracked, fees: Fees, noop: bool
    ) -> tuple[RpcFailure | None, BaseException | None]:
        """Sign one attempt on the tracked nonce (recorded whatever the answer); broadcast it."""
        # Signing takes ~0.2 ms (.signing): done inline, a worker thread would cost more than it
        # saves.
        signed = sign_dynamic_fee_tx(
            bytes(tracked.account.key),
            chain_id=self._chain_id,
            nonce=tracked.nonce,
            tip=fees.tip,
            max_fee=fees.cap,
            gas=NOOP_GAS if noop else tracked.gas,
            to=tracked.account.address if noop else tracked.to,
            value=0,
            data=b"" if noop else tracked.data,
        )
        tx_hash = signed.hash
        tracked.attempts.append(Attempt(tx_hash, fees, noop))
        tracked.sent_block = -1  # the loop's next head read starts the count of blocks
        tracked.sent_at = time.monotonic()
        error = await self._broadcaster.send(signed.raw)
        failure = None if error is None else classify_rpc_error(error)
        logger.info(
            "%s: nonce %d: %s tx %s (tip %d, cap %d wei)%s",
            tracked.label,
            tracked.nonce,
            "no-op" if noop else "sent",
            tx_hash,
            fees.tip,
            fees.cap,
            "" if failure is None else f": {failure.value}: {error}",
        )
        return failure, error

    async def _report_no_funds(self, account: LocalAccount) -> None:
        now = time.monotonic()
        last = self._funds_reported.get(account.address)
        if last is not None and now - last < FUNDS_REPORT_INTERVAL_S:
            return
        self._funds_reported[account.address] = now
        try:
            balance = f"{await self._w3.eth.get_balance(account.address)} wei"
        except Exception as e:
            balance = f"unknown ({e})"
        logger.error(
            "gas account %s has insufficient funds (balance %s): no transaction can be sent "
            "until it is funded (repeated at most every %.0fs)",
            account.address,
            balance,
            FUNDS_REPORT_INTERVAL_S,
        )

    # --- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()  # a wake-up during this tick makes the next one start at once
            try:
                new_block = await self.head.read()
                await self._inflight.tick(new_block)
                if self.loop_errors:
                    logger.info("transaction loop recovered after %d error(s)", self.loop_errors)
                self.loop_errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RPC trouble: nothing is forgotten, the next tick retries
                self.loop_errors += 1
                self._loop_error = f"{type(e).__name__}: {e}"[:200]
                if self.loop_errors == 1 or self.loop_errors % 20 == 0:
                    logger.warning(
                        "transaction loop: %s (%d consecutive errors); %d tx in flight",
                        e,
                        self.loop_errors,
                        len(self._inflight),
                    )
            pause = self._poll_s if len(self._inflight) else self._idle_poll_s
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the wake-up fires, and close() would then wait forever.
            try:
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            except TimeoutError:
                pass
