"""Transactions sent and not yet mined, and what the manager's loop does with them each tick.

Per new block, one ``eth_getTransactionCount(latest)`` per account tells which nonces are mined;
only those transactions' receipts are read (raw: :mod:`.reads`). A pending one is replaced on its
nonce when stuck or underpriced, sent again when the node forgot it, and withdrawn (a 0-value
self-transfer on its nonce) when its window closed or its submitter gave up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from executor.chain.transactions import reads as raw
from executor.chain.transactions.head import ChainHead
from executor.chain.transactions.policy import Fees, RpcFailure, revert_data
from executor.logs import job_label

logger = logging.getLogger(__name__)

STUCK_BLOCKS = 3
"""A transaction not mined within this many new blocks is replaced with higher fees..."""
STUCK_MIN_S = 3.0
"""... once it has also waited this long. Blocks alone mislead where they come faster than the
manager reads the chain: on a node that mines a block per transaction (anvil's automine), a burst
of outputs is a burst of blocks, so outputs being mined would look stuck, and each replacement,
a block of its own, would make more look stuck (BENCHMARKS.md, "What each change measured")."""
RECHECK_S = 2.0
"""While no block comes, a pending transaction is looked up in the pool this often."""
STALL_GRACE_S = 3.0
"""Without a block past ``valid_until``, a tx is withdrawn this long after its estimated expiry."""
MISSING_RECEIPT_CHECKS = 3
"""A mined nonce none of whose attempts has a receipt after this many checks, ..."""
MISSING_RECEIPT_S = 3.0
"""... over at least this long, went to a tx this process did not send. A busy node can count a
nonce as mined a moment before it serves the receipt, and the loop may check several times in
that moment (each new transaction wakes it); a busy anvil does (``tests/soak.py`` shows it)."""


GasSource = Literal["estimate", "learned", "ceiling", "given"]
"""How a transaction's gas limit was chosen: a margin over ``eth_estimateGas``; learned from
earlier outputs to the same contract (the job owner holds no code); the ceiling (the node could
not estimate it); or given by the caller."""


class TxStatus(enum.Enum):
    MINED = "mined"
    REVERTED = "reverted"
    """Refused by the contract: at the pre-check (nothing sent, no ``tx_hash``) or on chain (its
    ``tx_hash``; the revert data read back by calling it again on its block's state). See
    ``revert_data``. Never sent again."""
    OUT_OF_GAS = "out-of-gas"
    """Reverted on chain for want of gas (its call succeeds with more): worth sending again."""
    OVER_CEILING = "over-ceiling"
    """Not sent: its estimate is above the operator's ceiling (``max_job_gas``)."""
    EXPIRED = "expired"
    """``valid_until`` passed first, or the submitter was cancelled: never sent, or withdrawn."""
    NO_FUNDS = "no-funds"
    NO_ACCOUNT = "no-account"
    FAILED = "failed"


@dataclass(frozen=True)
class TxOutcome:
    status: TxStatus
    nonce: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    revert_data: bytes | None = None
    detail: str = ""
    gas_limit: int | None = None
    """The limit of the attempt that was mined."""
    gas_used: int | None = None
    gas_needed: int | None = None
    """OUT_OF_GAS / OVER_CEILING: what the call was estimated to need."""
    gas_source: GasSource | None = None
    """How the limit of the attempt that was mined was chosen."""

    @property
    def mined(self) -> bool:
        return self.status is TxStatus.MINED


@dataclass
class Attempt:
    tx_hash: str
    fees: Fees
    noop: bool


@dataclass
class Tracked:
    """One submission: its nonce, and every signed attempt on that nonce."""

    label: str
    account: LocalAccount
    nonce: int
    to: str
    data: bytes
    gas: int
    valid_until: float | None
    attempts: list[Attempt] = field(default_factory=list)
    sent_block: int = -1
    """The head when the last attempt was first checked (-1: not yet)."""
    sent_at: float = 0.0
    waiter: asyncio.Future[TxOutcome] | None = None
    withdrawing: bool = False
    missing_receipts: int = 0
    missing_since: float = 0.0
    """time.monotonic() of the first check that found no receipt for its mined nonce."""
    job_id: int | None = None
    """The job it serves: lines the background loop logs about it carry this job id."""
    gas_source: GasSource = "given"

    @property
    def key(self) -> tuple[str, int]:
        return (self.account.address, self.nonce)

    @property
    def last(self) -> Attempt:
        return self.attempts[-1]

    def resolve(self, outcome: TxOutcome) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(outcome)


SendFn = Callable[[Tracked, Fees, bool], Awaitable[tuple[RpcFailure | None, BaseException | None]]]
"""Sign an attempt on the tracked nonce with these fees (a no-op if True) and broadcast it."""


class InFlight:
    def __init__(
        self,
        w3: AsyncWeb3,
        head: ChainHead,
        *,
        send: SendFn,
        on_no_funds: Callable[[LocalAccount], Awaitable[None]],
        wake: Callable[[], None],
    ) -> None:
        self._w3 = w3
        self._head = head
        self._send = send
        self._on_no_funds = on_no_funds
        self._wake = wake
        self._txs: dict[tuple[str, int], Tracked] = {}
        self._checked_block = -1

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tracked: Tracked) -> bool:
        return self._txs.get(tracked.key) is tracked

    @property
    def withdrawing(self) -> int:
        """Transactions already replaced by a no-op."""
        return sum(1 for t in self._txs.values() if t.attempts and t.last.noop)

    def next_nonce(self, address: str) -> int:
        """The nonce after every tracked one of ``address`` (0 if none)."""
        return max((n + 1 for a, n in self._txs if a == address), default=0)

    def add(self, tracked: Tracked) -> None:
        self._txs[tracked.key] = tracked
        self._checked_block = -1  # it may be mined in the block the loop read last (automine)
        self._wake()

    def withdraw(self, tracked: Tracked, why: str) -> None:
        """Replace a pending tx by a no-op on its nonce (the loop does it at once)."""
        if tracked not in self or tracked.withdrawing:
            return
        tracked.withdrawing = True
        logger.info("%s: nonce %d: withdrawing (%s)", tracked.label, tracked.nonce, why)
        tracked.resolve(TxOutcome(TxStatus.EXPIRED, tracked.nonce, detail=why))
        self._wake()

    def abandon(self) -> None:
        """Stop tracking everything (shutdown): waiters learn it."""
        if self._txs:
            logger.warning("closing with %d transaction(s) in flight", len(self._txs))
        for tracked in self._txs.values():
            tracked.resolve(TxOutcome(TxStatus.FAILED, tracked.nonce, detail="shutting down"))
        self._txs.clear()

    async def tick(self, new_block: bool) -> None:
        head = self._head.latest
        if not self._txs or head is None:
            return
        mined: dict[str, int] = {}
        if new_block or head.number != self._checked_block:
            for address in {a for a, _ in self._txs}:
                mined[address] = await raw.nonce(self._w3, address, "latest")
            self._checked_block = head.number
        failed: Exception | None = None
        for key in sorted(self._txs, key=lambda k: k[1]):  # re-sends go out in nonce order
            tracked = self._txs.get(key)
            if tracked is None:
                continue
            try:
                with job_label(tracked.job_id):
                    if key[0] in mined and tracked.nonce < mined[key[0]]:
                        await self._settle(tracked)
                    else:
                        await self._check_pending(tracked)
            except Exception as e:  # one tx's trouble must not stall the others
                failed = failed or e
        if failed is not None:
            raise failed

    async def _settle(self, tracked: Tracked) -> None:
        """Its nonce is mined: find which attempt landed and tell the submitter."""
        for attempt in reversed(tracked.attempts):
            receipt = await raw.receipt(self._w3, attempt.tx_hash)
            if receipt is None:
                continue
            self._txs.pop(tracked.key, None)
            block, succeeded, gas_used = receipt
            where = f"{tracked.label}: nonce {tracked.nonce}: tx {attempt.tx_hash}"
            if attempt.noop:
                logger.info("%s (no-op) mined in block %d: nonce consumed", where, block)
                return
            if tracked.withdrawing:
                logger.warning("%s mined in block %d before it could be withdrawn", where, block)
            if succeeded:
                outcome = TxOutcome(
                    TxStatus.MINED,
                    tracked.nonce,
                    attempt.tx_hash,
                    block,
                    gas_limit=tracked.gas,
                    gas_used=gas_used,
                    gas_source=tracked.gas_source,
                )
            else:
                needed, data = await self._replay(tracked, block)
                status = TxStatus.REVERTED if needed is None else TxStatus.OUT_OF_GAS
                outcome = TxOutcome(
                    status,
                    tracked.nonce,
                    attempt.tx_hash,
                    block,
                    data,
                    "reverted" if needed is None else f"out of gas (needs {needed})",
                    gas_limit=tracked.gas,
                    gas_used=gas_used,
                    gas_needed=needed,
                    gas_source=tracked.gas_source,
                )
            logger.info(
                "%s %s in block %d (gas used %s of %d, %s limit)",
                where,
                outcome.status.value,
                block,
                gas_used,
                tracked.gas,
                tracked.gas_source,
            )
            tracked.resolve(outcome)
            return
        tracked.missing_receipts += 1
        if tracked.missing_receipts == 1:
            tracked.missing_since = time.monotonic()
        if (
            tracked.missing_receipts >= MISSING_RECEIPT_CHECKS
            and time.monotonic() - tracked.missing_since >= MISSING_RECEIPT_S
        ):
            self._txs.pop(tracked.key, None)
            logger.error(
                "%s: nonce %d was used by a transaction not sent by this process; not delivered",
                tracked.label,
                tracked.nonce,
            )
            tracked.resolve(TxOutcome(TxStatus.FAILED, tracked.nonce, detail="nonce taken"))

    async def _replay(self, tracked: Tracked, block: int) -> tuple[int | None, bytes | None]:
        """Why a tx failed on chain: (gas it needs, None) when it ran out of gas, else (None, its
        revert data).

        An out-of-gas in an inner call (the job owner's callback gets all the gas left) makes
        its caller revert with empty data and return the 1/64 it kept: the receipt shows gas
        used *below* the limit, so the limit is no tell. The call is estimated again on the
        state before its block: if it needs about the limit or more there, it ran out of gas.
        Otherwise it is called on the state after its block: a revert there is the contract's
        answer; a success means it would land now (an earlier tx of its block was in the way),
        which is worth sending again too."""
        sender = tracked.account.address
        estimate_call = {"from": sender, "to": tracked.to, "data": "0x" + tracked.data.hex()}
        needed: int | None = None
        try:
            answer = await raw.call(self._w3, "eth_estimateGas", [estimate_call, hex(block - 1)])
            needed = raw.quantity(answer, "gas estimate")
        except Exception as e:
            data = revert_data(e)
            if data is not None:
                return None, data
        if needed is not None and needed >= tracked.gas * 63 // 64:
            return needed, None
        call: dict[str, Any] = {"from": sender, "to": tracked.to, "data": tracked.data}
        try:
            await self._w3.eth.call(call, block)  # type: ignore[arg-type]
        except Exception as e:
            return None, revert_data(e)
        if needed is None:
            return None, None  # cannot tell: taken as the contract's refusal
        return needed, None

    async def _check_pending(self, tracked: Tracked) -> None:
        head = self._head.latest
        assert head is not None
        last = tracked.last
        if tracked.valid_until is not None and not tracked.withdrawing:
            expired = head.timestamp > tracked.valid_until or (
                self._head.chain_now() > tracked.valid_until + STALL_GRACE_S
            )
            if expired:
                self.withdraw(tracked, f"window closed before tx {last.tx_hash} was mined")
        if tracked.withdrawing and not last.noop:
            await self._resend(tracked, noop=True, why="withdraw")
        elif head.base_fee > last.fees.cap:
            await self._resend(tracked, noop=last.noop, why="base fee above its fee cap")
        elif tracked.sent_block < 0:
            tracked.sent_block = head.number
        elif (
            head.number - tracked.sent_block >= STUCK_BLOCKS
            and time.monotonic() - tracked.sent_at >= STUCK_MIN_S
        ):
            await self._resend(tracked, noop=last.noop, why=f"not mined in {STUCK_BLOCKS} blocks")
        elif time.monotonic() - tracked.sent_at >= RECHECK_S:
            block = await raw.transaction_block(self._w3, last.tx_hash)
            if block is False:
                await self._resend(tracked, noop=last.noop, why="no longer known to the node")
                return
            if block is not None:
                await self._settle(tracked)
            else:
                tracked.sent_at = time.monotonic()

    async def _resend(self, tracked: Tracked, *, noop: bool, why: str) -> None:
        """Same nonce, fees >= +12.5% and at least what a new tx would pay now."""
        fees = tracked.last.fees.replacement(self._head.fees())
        logger.info("%s: nonce %d: replacing (%s)", tracked.label, tracked.nonce, why)
        failure, _ = await self._send(tracked, fees, noop)
        if failure is RpcFailure.INSUFFICIENT_FUNDS:
            await self._on_no_funds(tracked.account)
        elif failure is RpcFailure.FEE_BELOW_BASE_FEE:
            await self._head.read_pending_base_fee()
