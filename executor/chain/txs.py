"""Sending transactions with the executor's gas key: nonce, fees, gas, resend and deadlines.

One ``TxSender`` per daemon owns the gas account's nonce, so concurrent job submissions never race
for one. The gas key can be rotated at any time through the admin API; a transaction already in
flight finishes with the key it started with.

A call that the contract would reject (found by ``eth_estimateGas``) is not sent: it raises
``TxRejected`` with the revert reason, and the caller decides (an output whose window closed is
dropped; a slash that is "not yet due" is retried).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError

from executor.errors import ChainError

logger = logging.getLogger(__name__)

GAS_MARGIN = 1.25
RECEIPT_POLL_S = 0.25
_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError)


class NoGasKeyError(ChainError):
    def __init__(self) -> None:
        super().__init__("no executor gas key configured yet (POST /mutable-config first)")


class TxRejected(ChainError):
    """The contract rejects the call (estimateGas reverted or the mined tx failed)."""

    def __init__(self, label: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{label}: rejected by the contract: {reason}")


@dataclass(frozen=True)
class SentTx:
    tx_hash: str
    block_number: int
    gas_used: int


def account_from_key(hex_key: str) -> LocalAccount:
    """A gas account from a 32-byte hex private key (with or without 0x); ValueError if bad."""
    key = hex_key[2:] if hex_key.startswith(("0x", "0X")) else hex_key
    if len(key) != 64:
        raise ValueError("must be 32 bytes of hex (64 hex digits)")
    try:
        return Account.from_key(bytes.fromhex(key))
    except ValueError as e:
        raise ValueError("is not a valid secp256k1 private key in hex") from e


class TxSender:
    def __init__(self, w3: AsyncWeb3, chain_id: int, account: LocalAccount | None = None) -> None:
        self._w3 = w3
        self._chain_id = chain_id
        self._account = account
        self._nonce: int | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str | None:
        return self._account.address if self._account else None

    def set_account(self, account: LocalAccount) -> None:
        """Switch to a new gas key; the next transaction re-reads its nonce from the chain."""
        if self._account is None or account.address != self._account.address:
            self._nonce = None
        self._account = account

    async def send(self, to: str, data: bytes, *, label: str, timeout_s: float) -> SentTx:
        """Send a call and wait for its receipt; retries transient failures until ``timeout_s``.

        Raises TxRejected when the contract rejects the call, ChainError when time runs out.
        """
        give_up = time.monotonic() + timeout_s
        delay = 0.25
        while True:
            try:
                return await self._send_once(to, data, label=label, give_up=give_up)
            except TxRejected:
                raise
            except (ChainError, Web3Exception, *_TRANSIENT) as e:
                if isinstance(e, NoGasKeyError):
                    raise
                self._nonce = None  # re-sync: the failure may have consumed or skipped a nonce
                if time.monotonic() + delay >= give_up:
                    raise ChainError(f"{label}: gave up after {timeout_s:.0f}s: {e}") from e
                logger.warning("%s: send failed (%s); retrying in %.2fs", label, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _send_once(self, to: str, data: bytes, *, label: str, give_up: float) -> SentTx:
        account = self._account
        if account is None:
            raise NoGasKeyError()
        call: dict[str, Any] = {"from": account.address, "to": to, "data": data}
        try:
            # Against the pending block: its timestamp is "now", which the contracts' time
            # windows are checked against when the transaction is mined.
            gas = await self._w3.eth.estimate_gas(call, "pending")  # type: ignore[arg-type]
        except ContractLogicError as e:
            raise TxRejected(label, _revert_reason(e)) from e
        except Web3RPCError as e:
            if "revert" in str(e).lower():
                raise TxRejected(label, str(e)) from e
            raise
        tip, max_fee = await self._fees()
        async with self._lock:
            if self._nonce is None:
                self._nonce = await self._w3.eth.get_transaction_count(account.address, "pending")
            tx = {
                **call,
                "gas": int(gas * GAS_MARGIN),
                "maxPriorityFeePerGas": tip,
                "maxFeePerGas": max_fee,
                "nonce": self._nonce,
                "chainId": self._chain_id,
                "type": 2,
            }
            signed = account.sign_transaction(tx)
            tx_hash = await self._w3.eth.send_raw_transaction(signed.raw_transaction)
            self._nonce += 1
        hash_hex = tx_hash.to_0x_hex()
        logger.debug("%s: sent tx %s", label, hash_hex)
        receipt = await self._wait_receipt(hash_hex, give_up)
        if receipt["status"] != 1:
            raise TxRejected(label, f"tx {hash_hex} reverted on chain")
        return SentTx(hash_hex, int(receipt["blockNumber"]), int(receipt["gasUsed"]))

    async def _fees(self) -> tuple[int, int]:
        block = await self._w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas") or 0)
        tip = int(await self._w3.eth.max_priority_fee)
        return tip, 2 * base + tip

    async def _wait_receipt(self, tx_hash: str, give_up: float) -> Any:
        remaining = max(1.0, give_up - time.monotonic())
        try:
            return await self._w3.eth.wait_for_transaction_receipt(
                tx_hash,  # type: ignore[arg-type]
                timeout=remaining,
                poll_latency=RECEIPT_POLL_S,
            )
        except TimeExhausted as e:
            raise ChainError(f"tx {tx_hash} not mined within {remaining:.0f}s") from e


def _revert_reason(e: ContractLogicError) -> str:
    if e.message and e.message != "execution reverted":
        return e.message
    return f"execution reverted (data {e.data!r})"
