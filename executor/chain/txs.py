"""The transaction manager: the one owner of the executor's gas account.

``TxManager.submit`` signs and broadcasts a call at once and returns when its fate is known; the
critical path is: (a pre-check only when the caller asks for one) -> nonce from local bookkeeping
-> fees already known -> sign -> ``eth_sendRawTransaction`` to every endpoint. Nothing waits for
an earlier transaction's receipt.

One background loop (``start``/``close``) follows the chain head (a poll of the latest block: its
number, timestamp and base fee) and, per new block, reads the account's mined nonce to find which
in-flight transactions landed; it then:

* resolves the submitter's wait with the receipt (a revert's data is replayed and returned);
* replaces on the same nonce, with fees bumped >= 12.5%, a transaction not mined within
  ``STUCK_BLOCKS`` blocks or whose fee cap the base fee has overtaken;
* sends again, re-priced, a transaction the node no longer knows (anvil deletes underpriced ones;
  a geth node keeps them: both cases end in the same replacement);
* withdraws a transaction whose ``valid_until`` (chain time) has passed, or whose submitter was
  cancelled, by replacing it with a 0-value self-transfer: its nonce is consumed, later
  transactions never wait behind a gap, and a reorged job's output never lands.

Transient RPC errors never produce a second transaction for one submission: the transaction stays
tracked until its nonce is mined. "insufficient funds" is one ERROR naming the account and its
balance, at most once per ``FUNDS_REPORT_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound

from executor.chain.broadcast import Broadcaster
from executor.chain.txpolicy import Fees, NonceBook, RpcFailure, classify_rpc_error, revert_data

logger = logging.getLogger(__name__)
T = TypeVar("T")

TxKind = Literal["output", "slash", "no-op"]

NOOP_GAS = 21_000
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 5, 4
"""Pre-checked transactions get 125% of the estimate."""
STUCK_BLOCKS = 3
"""A transaction not mined within this many new blocks is replaced with higher fees."""
RECHECK_S = 2.0
"""A pending transaction is checked for presence in the pool this often while no block comes."""
STALL_GRACE_S = 3.0
"""Without a block past ``valid_until``, a tx is withdrawn this long after its estimated expiry."""
FUNDS_REPORT_INTERVAL_S = 60.0
SEND_ATTEMPTS = 3
READ_ATTEMPTS = 4
PRECHECK_RETRY_S = 10.0


def account_from_key(hex_key: str) -> LocalAccount:
    """A gas account from a 32-byte hex private key (with or without 0x); ValueError if bad."""
    key = hex_key[2:] if hex_key.startswith(("0x", "0X")) else hex_key
    if len(key) != 64:
        raise ValueError("must be 32 bytes of hex (64 hex digits)")
    try:
        return Account.from_key(bytes.fromhex(key))
    except ValueError as e:
        raise ValueError("is not a valid secp256k1 private key in hex") from e


class TxStatus(enum.Enum):
    MINED = "mined"
    REVERTED = "reverted"
    """Refused by the contract: at the pre-check (nothing sent) or on chain. See ``revert_data``."""
    EXPIRED = "expired"
    """``valid_until`` passed first: never sent, or withdrawn (its nonce consumed by a no-op)."""
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

    @property
    def mined(self) -> bool:
        return self.status is TxStatus.MINED


@dataclass(frozen=True)
class Head:
    number: int
    timestamp: int
    base_fee: int
    seen_at: float
    """time.monotonic() when this head was read."""


@dataclass
class _Attempt:
    tx_hash: str
    fees: Fees
    noop: bool


@dataclass
class _Tracked:
    label: str
    account: LocalAccount
    nonce: int
    to: str
    data: bytes
    gas: int
    valid_until: float | None
    attempts: list[_Attempt] = field(default_factory=list)
    sent_block: int = 0
    sent_at: float = 0.0
    waiter: asyncio.Future[TxOutcome] | None = None
    withdrawing: bool = False
    missing_receipts: int = 0

    @property
    def last(self) -> _Attempt:
        return self.attempts[-1]

    def resolve(self, outcome: TxOutcome) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(outcome)


class TxManager:
    def __init__(
        self,
        w3: AsyncWeb3,
        broadcast: Sequence[AsyncWeb3],
        chain_id: int,
        *,
        poll_s: float = 0.25,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._w3 = w3
        self._sender = Broadcaster(broadcast or [w3])
        self._chain_id = chain_id
        self._poll_s = poll_s
        self._idle_poll_s = idle_poll_s
        self._account: LocalAccount | None = None
        self._nonces: dict[str, NonceBook] = {}
        self._inflight: dict[tuple[str, int], _Tracked] = {}
        self._send_lock = asyncio.Lock()
        self._head: Head | None = None
        self._tip = 0
        self._pending_base_fee = 0
        self._checked_block = -1
        self._wake = asyncio.Event()
        self._new_block = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._funds_reported: dict[str, float] = {}
        self.loop_errors = 0
        """Consecutive failed ticks of the background loop (0 when healthy)."""

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

    @property
    def head(self) -> Head | None:
        return self._head

    def chain_now(self) -> float:
        """Estimated chain time: the latest block's timestamp plus the time since it was read."""
        if self._head is None:
            return time.time()
        return self._head.timestamp + (time.monotonic() - self._head.seen_at)

    def current_fees(self) -> Fees:
        base = max(self._head.base_fee if self._head else 0, self._pending_base_fee)
        return Fees.fresh(base, self._tip)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def withdrawing(self) -> int:
        """In-flight transactions already replaced by a no-op."""
        return sum(1 for t in self._inflight.values() if t.attempts and t.last.noop)

    async def wait_for_block(self, timeout_s: float) -> None:
        """Until the loop sees a new block, or ``timeout_s`` passes."""
        event = self._new_block
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="tx-manager")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await self._sender.close()
        if self._inflight:
            logger.warning("closing with %d transaction(s) in flight", len(self._inflight))
        for tracked in self._inflight.values():
            tracked.resolve(TxOutcome(TxStatus.FAILED, tracked.nonce, detail="shutting down"))
        self._inflight.clear()

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
    ) -> TxOutcome:
        """Send a call and wait until it is mined, refused or useless (``valid_until`` passed).

        ``gas_limit=None`` pre-checks the call with ``eth_estimateGas`` (a refusal then sends
        nothing); a given bound skips that round trip. Cancelling the caller while the tx is
        pending withdraws it (same nonce, a no-op).
        """
        label = f"job {job_id} {kind}"
        account = self._account
        if account is None:
            logger.error("%s: not sent: no executor gas key configured yet", label)
            return TxOutcome(TxStatus.NO_ACCOUNT, detail="no gas key")
        if self._head is None:
            try:
                await self._retry_read(self._read_head)
            except Exception as e:
                logger.error("%s: not sent: cannot read the chain head: %s", label, e)
                return TxOutcome(TxStatus.FAILED, detail=f"no chain head: {e}")
        if valid_until is not None and self.chain_now() > valid_until:
            logger.info("%s: not sent: its window closed at chain time %.0f", label, valid_until)
            return TxOutcome(TxStatus.EXPIRED, detail="window closed before sending")
        if gas_limit is None:
            estimate = await self._precheck(account, to, data, label, valid_until)
            if isinstance(estimate, TxOutcome):
                return estimate
            gas_limit = estimate
        tracked = _Tracked(label, account, -1, to, data, gas_limit, valid_until)
        send = asyncio.ensure_future(self._send_first(tracked))
        try:
            refused = await asyncio.shield(send)
        except asyncio.CancelledError:
            send.add_done_callback(lambda _: self._withdraw(tracked, "cancelled"))
            raise
        if refused is not None:
            return refused
        waiter = asyncio.get_running_loop().create_future()
        tracked.waiter = waiter
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            self._withdraw(tracked, "cancelled")
            raise

    async def _precheck(
        self, account: LocalAccount, to: str, data: bytes, label: str, valid_until: float | None
    ) -> int | TxOutcome:
        call: dict[str, Any] = {"from": account.address, "to": to, "data": data}
        give_up = time.monotonic() + PRECHECK_RETRY_S
        while True:
            try:
                # Against the pending block: its timestamp is the chain time the tx will see.
                gas = await self._w3.eth.estimate_gas(call, "pending")  # type: ignore[arg-type]
                return gas * GAS_MARGIN_NUM // GAS_MARGIN_DEN
            except Exception as e:
                failure = classify_rpc_error(e)
                if failure is RpcFailure.REVERT:
                    return TxOutcome(TxStatus.REVERTED, revert_data=revert_data(e), detail=str(e))
                expired = valid_until is not None and self.chain_now() > valid_until
                if failure is not RpcFailure.TRANSIENT or time.monotonic() > give_up or expired:
                    logger.warning("%s: pre-check failed, not sent: %s", label, e)
                    return TxOutcome(TxStatus.FAILED, detail=f"pre-check failed: {e}")
                logger.info("%s: pre-check failed (%s); retrying", label, e)
                await asyncio.sleep(0.5)

    async def _send_first(self, tracked: _Tracked) -> TxOutcome | None:
        """Assign a nonce and broadcast; None once the tx is tracked (the loop owns it then)."""
        account = tracked.account
        async with self._send_lock:
            book = self._nonces.setdefault(account.address, NonceBook())
            for _ in range(SEND_ATTEMPTS):
                if not book.synced:
                    try:
                        book.sync(await self._retry_read(self._pending_count, account.address))
                    except Exception as e:
                        logger.error("%s: not sent: cannot read the nonce: %s", tracked.label, e)
                        return TxOutcome(TxStatus.FAILED, detail=f"nonce unknown: {e}")
                tracked.nonce = book.take()
                fees = self.current_fees()
                failure, error = await self._send(tracked, fees, noop=False)
                if failure in (RpcFailure.NONCE_TOO_LOW, RpcFailure.UNDERPRICED):
                    # Our own tx may hold the nonce already (an earlier answer got lost and the
                    # send was retried): then it is tracked, never sent again on a new nonce.
                    if await self._known(tracked.last.tx_hash):
                        failure = None
                if failure in (None, RpcFailure.ALREADY_KNOWN, RpcFailure.TRANSIENT):
                    if failure is RpcFailure.TRANSIENT:
                        logger.warning(
                            "%s: nonce %d: broadcast failed (%s); tracking it, the loop re-sends",
                            tracked.label,
                            tracked.nonce,
                            error,
                        )
                    self._inflight[(account.address, tracked.nonce)] = tracked
                    self._wake.set()
                    return None
                tracked.attempts.clear()
                book.give_back(tracked.nonce)
                if failure is RpcFailure.NONCE_TOO_LOW or failure is RpcFailure.UNDERPRICED:
                    # Someone else used this nonce (another process with this key): re-read.
                    logger.warning(
                        "%s: nonce %d refused (%s): re-reading the account's nonce",
                        tracked.label,
                        tracked.nonce,
                        error,
                    )
                    count = await self._retry_read(self._pending_count, account.address)
                    book.sync(max(count, tracked.nonce + 1))
                    continue
                if failure is RpcFailure.FEE_BELOW_BASE_FEE:
                    await self._read_pending_base_fee()
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
            await self._retry_read(self._w3.eth.get_transaction, tx_hash)
        except Exception:
            return False
        return True

    async def _pending_count(self, address: str) -> int:
        return int(await self._w3.eth.get_transaction_count(address, "pending"))  # type: ignore[arg-type]

    async def _retry_read(self, read: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A read on the submit path, retried briefly on transient RPC errors."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return await read(*args)
            except Exception as e:
                last_try = attempt + 1 == READ_ATTEMPTS
                if last_try or classify_rpc_error(e) is not RpcFailure.TRANSIENT:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _send(
        self, tracked: _Tracked, fees: Fees, *, noop: bool
    ) -> tuple[RpcFailure | None, BaseException | None]:
        """Sign one attempt (tracked whatever the answer) and broadcast it."""
        tx = {
            "to": tracked.account.address if noop else tracked.to,
            "value": 0,
            "data": b"" if noop else tracked.data,
            "gas": NOOP_GAS if noop else tracked.gas,
            "maxPriorityFeePerGas": fees.tip,
            "maxFeePerGas": fees.cap,
            "nonce": tracked.nonce,
            "chainId": self._chain_id,
            "type": 2,
        }
        # Signing takes ~1 ms and is mostly pure Python (RLP) holding the GIL: a worker thread
        # would not free the event loop, so it is done inline.
        signed = Account.sign_transaction(tx, tracked.account.key)
        tx_hash = signed.hash.to_0x_hex()
        tracked.attempts.append(_Attempt(tx_hash, fees, noop))
        tracked.sent_block = self._head.number if self._head else 0
        tracked.sent_at = time.monotonic()
        error = await self._sender.send(bytes(signed.raw_transaction))
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

    def _withdraw(self, tracked: _Tracked, why: str) -> None:
        """Replace a pending tx by a no-op on its nonce (done by the loop, at once)."""
        key = (tracked.account.address, tracked.nonce)
        if key not in self._inflight or tracked.withdrawing:
            return
        tracked.withdrawing = True
        logger.info("%s: nonce %d: withdrawing (%s)", tracked.label, tracked.nonce, why)
        tracked.resolve(TxOutcome(TxStatus.EXPIRED, tracked.nonce, detail=why))
        self._wake.set()

    async def _report_no_funds(self, account: LocalAccount) -> None:
        now = time.monotonic()
        last = self._funds_reported.get(account.address)
        if last is not None and now - last < FUNDS_REPORT_INTERVAL_S:
            return
        self._funds_reported[account.address] = now
        try:
            balance: str = f"{await self._w3.eth.get_balance(account.address)} wei"
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
        while True:
            try:
                await self._tick()
                if self.loop_errors:
                    logger.info("transaction loop recovered after %d error(s)", self.loop_errors)
                self.loop_errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # RPC trouble: nothing is forgotten, the next tick retries
                self.loop_errors += 1
                if self.loop_errors == 1 or self.loop_errors % 20 == 0:
                    logger.warning(
                        "transaction loop: %s (%d consecutive errors); %d tx in flight",
                        e,
                        self.loop_errors,
                        len(self._inflight),
                    )
            self._wake.clear()
            pause = self._poll_s if self._inflight else self._idle_poll_s
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass

    async def _read_head(self) -> bool:
        """Read the latest block; True if it is a new one."""
        block = await self._w3.eth.get_block("latest")
        previous = self._head
        self._head = Head(
            int(block["number"]),
            int(block["timestamp"]),
            int(block.get("baseFeePerGas") or 0),
            time.monotonic(),
        )
        if previous is not None and previous.number == self._head.number:
            return False
        self._pending_base_fee = 0
        try:
            self._tip = int(await self._w3.eth.max_priority_fee)
        except Exception as e:
            logger.debug("eth_maxPriorityFeePerGas failed (%s); keeping tip %d", e, self._tip)
        self._new_block.set()
        self._new_block = asyncio.Event()
        return True

    async def _read_pending_base_fee(self) -> None:
        block = await self._w3.eth.get_block("pending")
        self._pending_base_fee = int(block.get("baseFeePerGas") or 0)

    async def _tick(self) -> None:
        new_block = await self._read_head()
        if not self._inflight:
            return
        mined: dict[str, int] = {}
        head_number = self._head.number if self._head else 0
        if new_block or head_number != self._checked_block:
            for address in {a for a, _ in self._inflight}:
                mined[address] = int(
                    await self._w3.eth.get_transaction_count(address, "latest")  # type: ignore[arg-type]
                )
            self._checked_block = head_number
        for key in sorted(self._inflight, key=lambda k: k[1]):
            tracked = self._inflight.get(key)
            if tracked is None:
                continue
            mined_count = mined.get(key[0])
            if mined_count is not None and tracked.nonce < mined_count:
                await self._settle(tracked)
            else:
                await self._check_pending(tracked)

    async def _settle(self, tracked: _Tracked) -> None:
        """Its nonce is mined: find which attempt landed and tell the submitter."""
        for attempt in reversed(tracked.attempts):
            try:
                receipt = await self._w3.eth.get_transaction_receipt(attempt.tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                continue
            self._forget(tracked)
            block = int(receipt["blockNumber"])
            if attempt.noop:
                logger.info(
                    "%s: nonce %d consumed by no-op tx %s (block %d)",
                    tracked.label,
                    tracked.nonce,
                    attempt.tx_hash,
                    block,
                )
                return
            if tracked.withdrawing:
                logger.warning(
                    "%s: nonce %d: tx %s was mined (block %d) before it could be withdrawn",
                    tracked.label,
                    tracked.nonce,
                    attempt.tx_hash,
                    block,
                )
            if receipt["status"] == 1:
                outcome = TxOutcome(TxStatus.MINED, tracked.nonce, attempt.tx_hash, block)
            else:
                data = await self._replay(tracked, block)
                outcome = TxOutcome(
                    TxStatus.REVERTED, tracked.nonce, attempt.tx_hash, block, data, "reverted"
                )
            logger.info(
                "%s: nonce %d: tx %s %s in block %d",
                tracked.label,
                tracked.nonce,
                attempt.tx_hash,
                outcome.status.value,
                block,
            )
            tracked.resolve(outcome)
            return
        tracked.missing_receipts += 1
        if tracked.missing_receipts >= 3:  # the nonce went to a tx this process did not send
            self._forget(tracked)
            logger.error(
                "%s: nonce %d was used by a transaction not sent by this process; not delivered",
                tracked.label,
                tracked.nonce,
            )
            tracked.resolve(TxOutcome(TxStatus.FAILED, tracked.nonce, detail="nonce taken"))

    async def _replay(self, tracked: _Tracked, block: int) -> bytes | None:
        call: dict[str, Any] = {"from": tracked.account.address, "to": tracked.to}
        call["data"] = tracked.data
        try:
            await self._w3.eth.call(call, block)  # type: ignore[arg-type]
        except Exception as e:
            return revert_data(e)
        return None

    def _forget(self, tracked: _Tracked) -> None:
        self._inflight.pop((tracked.account.address, tracked.nonce), None)

    async def _check_pending(self, tracked: _Tracked) -> None:
        head = self._head
        assert head is not None
        last = tracked.last
        expired = tracked.valid_until is not None and (
            head.timestamp > tracked.valid_until
            or self.chain_now() > tracked.valid_until + STALL_GRACE_S
        )
        if expired and not tracked.withdrawing:
            logger.info(
                "%s: nonce %d: window closed before tx %s was mined",
                tracked.label,
                tracked.nonce,
                last.tx_hash,
            )
            self._withdraw(tracked, "window closed")
        if tracked.withdrawing and not last.noop:
            await self._resend(tracked, noop=True, why="withdraw")
        elif head.base_fee > last.fees.cap:
            await self._resend(tracked, noop=last.noop, why="base fee above its fee cap")
        elif head.number - tracked.sent_block >= STUCK_BLOCKS:
            await self._resend(tracked, noop=last.noop, why=f"not mined in {STUCK_BLOCKS} blocks")
        elif time.monotonic() - tracked.sent_at >= RECHECK_S:
            try:
                tx = await self._w3.eth.get_transaction(last.tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                await self._resend(tracked, noop=last.noop, why="no longer known to the node")
                return
            if tx.get("blockNumber") is not None:
                await self._settle(tracked)
            else:
                tracked.sent_at = time.monotonic()

    async def _resend(self, tracked: _Tracked, *, noop: bool, why: str) -> None:
        fees = tracked.last.fees.replacement(self.current_fees())
        logger.info("%s: nonce %d: replacing (%s)", tracked.label, tracked.nonce, why)
        failure, _ = await self._send(tracked, fees, noop=noop)
        if failure is RpcFailure.INSUFFICIENT_FUNDS:
            await self._report_no_funds(tracked.account)
        elif failure is RpcFailure.FEE_BELOW_BASE_FEE:
            await self._read_pending_base_fee()
