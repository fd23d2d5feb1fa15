"""Send devnet transactions signed locally, and explain the ones that revert.

``TxSender`` keeps one nonce sequence per sender so that concurrent helpers do not collide, and
turns a revert (at gas estimation, or on chain) into ``TransactionReverted`` naming the custom
error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_typing import HexStr
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from eth_utils.abi import abi_to_signature, get_abi_input_names, get_abi_input_types
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from executor.errors import ChainError
from oyster_devnet.accounts import DevAccount

logger = logging.getLogger(__name__)

RECEIPT_TIMEOUT = 30.0
PRIORITY_FEE = 10**9
"""1 gwei: the devnet includes everything anyway."""


class DevnetTransactionError(ChainError):
    """A devnet transaction could not be sent or did not succeed."""


class TransactionReverted(DevnetTransactionError):
    """A devnet call reverted; ``error_name``/``error_args`` decode the custom error when known."""

    def __init__(
        self,
        call: str,
        *,
        error_name: str | None = None,
        error_args: dict[str, Any] | None = None,
        detail: str | None = None,
        tx_hash: HexStr | None = None,
    ) -> None:
        self.call = call
        self.error_name = error_name
        self.error_args = error_args or {}
        self.tx_hash = tx_hash
        if error_name is not None:
            args = ", ".join(f"{k}={v!r}" for k, v in self.error_args.items())
            reason = f"{error_name}({args})"
        else:
            reason = detail or "no reason given"
        where = f" in tx {tx_hash}" if tx_hash else ""
        super().__init__(f"{call} reverted{where}: {reason}")


@dataclass(frozen=True)
class _CustomError:
    name: str
    arg_names: list[str]
    arg_types: list[str]


class RevertDecoder:
    """Names the custom errors of the given ABIs (all contracts a call may revert in)."""

    def __init__(self, abis: Iterable[Iterable[dict[str, Any]]]) -> None:
        self._errors: dict[bytes, _CustomError] = {}
        for abi in abis:
            for entry in abi:
                if entry["type"] == "error":
                    signature = abi_to_signature(entry)  # type: ignore[arg-type]
                    self._errors[function_signature_to_4byte_selector(signature)] = _CustomError(
                        entry["name"],
                        get_abi_input_names(entry),  # type: ignore[arg-type]
                        get_abi_input_types(entry),  # type: ignore[arg-type]
                    )

    def decode(
        self, call: str, error: ContractLogicError, *, tx_hash: HexStr | None = None
    ) -> TransactionReverted:
        """Turns web3's revert exception into a ``TransactionReverted``."""
        data = error.data if isinstance(error.data, str) else None
        if not isinstance(error, ContractCustomError) or data is None:
            return TransactionReverted(call, detail=error.message or str(error), tx_hash=tx_hash)
        raw = HexBytes(data)
        known = self._errors.get(bytes(raw[:4]))
        if known is None:
            return TransactionReverted(call, detail=f"unknown custom error {data}", tx_hash=tx_hash)
        try:
            values: tuple[Any, ...] = abi_decode(known.arg_types, bytes(raw[4:]))
        except DecodingError:  # malformed arguments: still name the error
            values = ()
        return TransactionReverted(
            call,
            error_name=known.name,
            error_args={n: _plain(v) for n, v in zip(known.arg_names, values, strict=False)},
            tx_hash=tx_hash,
        )


class TxSender:
    """Signs transactions locally, one nonce sequence per sender, and waits for their receipts.

    The per-sender lock covers only nonce allocation and sending, so concurrent helpers pipeline.
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        reverts: RevertDecoder,
        *,
        receipt_timeout: float = RECEIPT_TIMEOUT,
    ) -> None:
        self.w3 = w3
        self.reverts = reverts
        self.receipt_timeout = receipt_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_nonce: dict[str, int] = {}
        self._chain_id: int | None = None

    def forget_nonces(self) -> None:
        """Re-read every sender's nonce from the chain (after a reorg dropped transactions)."""
        self._next_nonce.clear()

    async def send(
        self, sender: DevAccount, to: str | None, data: HexStr, *, call: str, value: int = 0
    ) -> TxReceipt:
        """Sends ``data`` to ``to`` (``None`` deploys) and returns the successful receipt.

        ``call`` names the transaction in errors (e.g. ``Jobs.submitOutput``).
        """
        tx: TxParams = {"from": sender.address, "data": data, "value": Wei(value)}
        if to is not None:
            tx["to"] = to_checksum_address(to)
        async with self._locks.setdefault(sender.address, asyncio.Lock()):
            try:
                gas = await self.w3.eth.estimate_gas(tx)
            except ContractLogicError as e:
                raise self.reverts.decode(call, e) from e
            except Web3RPCError as e:
                raise DevnetTransactionError(f"{call}: gas estimation failed: {e}") from e
            if self._chain_id is None:
                self._chain_id = await self.w3.eth.chain_id
            pending = await self.w3.eth.get_transaction_count(sender.address, "pending")
            nonce = max(pending, self._next_nonce.get(sender.address, 0))
            base_fee = (await self.w3.eth.get_block("latest")).get("baseFeePerGas", 0)
            tx.update(
                {
                    "chainId": self._chain_id,
                    "nonce": Nonce(nonce),
                    "gas": gas + gas // 5 + 10_000,
                    "maxPriorityFeePerGas": Wei(PRIORITY_FEE),
                    "maxFeePerGas": Wei(2 * base_fee + PRIORITY_FEE),
                }
            )
            signed = Account.sign_transaction(dict(tx), sender.private_key)
            try:
                tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Web3RPCError as e:
                raise DevnetTransactionError(f"{call}: sending failed: {e}") from e
            self._next_nonce[sender.address] = nonce + 1
        logger.debug("%s sent by %s: tx %s", call, sender.address, tx_hash.to_0x_hex())
        try:
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=0.05
            )
        except TimeExhausted as e:
            raise DevnetTransactionError(
                f"{call}: tx {tx_hash.to_0x_hex()} not mined within {self.receipt_timeout:g} s"
            ) from e
        if receipt["status"] != 1:
            raise await self._explain_failure(call, tx, receipt)
        return receipt

    async def _explain_failure(
        self, call: str, tx: TxParams, receipt: TxReceipt
    ) -> TransactionReverted:
        """Replays a mined-but-reverted transaction as a call to recover its revert reason."""
        tx_hash = HexStr(receipt["transactionHash"].to_0x_hex())
        replay: TxParams = {"from": tx["from"], "data": tx["data"], "value": tx["value"]}
        if "to" in tx:
            replay["to"] = tx["to"]
        try:
            await self.w3.eth.call(replay, block_identifier=receipt["blockNumber"])
        except ContractLogicError as e:
            return self.reverts.decode(call, e, tx_hash=tx_hash)
        return TransactionReverted(
            call, detail="reverted on chain; replaying it succeeded", tx_hash=tx_hash
        )


def _plain(value: Any) -> Any:
    """Error arguments as a reader wants them: checksummed addresses, 0x hex bytes."""
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value
