"""The transaction manager: the one owner of the executor's gas account.

``TxManager.submit`` signs and broadcasts a call at once and returns when its fate is known. The
critical path of an output is: nonce from local bookkeeping -> fees already known (``ChainHead``)
-> sign -> ``eth_sendRawTransaction`` to every endpoint: one round trip. Nothing waits for an
earlier transaction's receipt. Gas is estimated (``eth_estimateGas``) only when the caller asks
for a pre-check: slashes, which several executors race for and which would otherwise revert on
chain; an output's gas is a bound computed from its calldata size.

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
from typing import Any, Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from executor.chain.transactions import reads as raw
from executor.chain.transactions.broadcast import Broadcaster
from executor.chain.transactions.head import ChainHead, Head
from executor.chain.transactions.inflight import Attempt, InFlight, Tracked, TxOutcome, TxStatus
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

logger = logging.getLogger(__name__)

__all__ = ["Head", "TxKind", "TxManager", "TxOutcome", "TxStatus", "account_from_key"]

TxKind = Literal["output", "slash"]

NOOP_GAS = 21_000
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 5, 4
"""Pre-checked transactions get 125% of the estimate."""
FUNDS_REPORT_INTERVAL_S = 60.0
SEND_ATTEMPTS = 3
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
    ) -> None:
        """``w3`` for reads; signed transactions go to every client of ``broadcast``.
        The head is polled every ``poll_s`` while transactions are in flight, else every
        ``idle_poll_s``."""
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
        self.head = ChainHead(w3)
        self._inflight = InFlight(
            w3, self.head, send=self._send, on_no_funds=self._report_no_funds, wake=self._wake.set
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
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

    async def start(self) -> None:
        self._closing = False
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="tx-manager")

    async def close(self) -> None:
        """Stop the loop; submitters still waiting get FAILED ("shutting down"), and their
        transactions stay in the pool (they may still land)."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
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
    ) -> TxOutcome:
        """Send a call and wait until it is mined, refused or useless (``valid_until``, chain
        time, passed).

        ``gas_limit=None`` pre-checks the call with ``eth_estimateGas`` (a refusal then sends
        nothing); a given bound skips that round trip. Cancelling the caller while the tx is
        pending withdraws it (same nonce, a no-op): then CancelledError propagates as usual.
        Every outcome is counted in the ``transactions_total`` metric.
        """
        try:
            outcome = await self._submit(to, data, kind, job_id, valid_until, gas_limit)
        except asyncio.CancelledError:
            self._metrics.transaction(kind, "withdrawn")
            raise
        self._metrics.transaction(kind, outcome.status.value)
        return outcome

    async def _submit(
        self,
        to: str,
        data: bytes,
        kind: TxKind,
        job_id: int,
        valid_until: float | None,
        gas_limit: int | None,
    ) -> TxOutcome:
        label = f"job {job_id} {kind}"
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
        if gas_limit is None:
            estimate = await self._precheck(account, to, data, label, valid_until)
            if isinstance(estimate, TxOutcome):
                return estimate
            gas_limit = estimate
        tracked = Tracked(label, account, -1, to, data, gas_limit, valid_until, job_id=job_id)
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

    async def _precheck(
        self, account: LocalAccount, to: str, data: bytes, label: str, valid_until: float | None
    ) -> int | TxOutcome:
        """The gas for the call, or its refusal (nothing is sent then)."""
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
