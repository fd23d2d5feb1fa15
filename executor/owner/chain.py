"""The owner's transactions: ABIs from ``executor/abi``, one sender, reverts named.

``OwnerChain`` signs each transaction locally with the owner's key, estimates its gas (a revert at
estimation is reported with the contract's custom error and nothing is sent), sends it and waits for
its receipt. It is meant for a human at a terminal: one transaction at a time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from eth_utils.abi import abi_to_signature, get_abi_input_types
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractCustomError, ContractLogicError, TimeExhausted, Web3Exception
from web3.types import TxParams, TxReceipt, Wei

from executor import redact
from executor.errors import ChainError

logger = logging.getLogger(__name__)

ABI_DIR = Path(__file__).resolve().parents[1] / "abi"
RECEIPT_TIMEOUT_S = 120.0

Abi = list[dict[str, Any]]


class OwnerTxError(ChainError):
    """An owner transaction was refused (reverted, at estimation or on chain) or not sent."""


@cache
def load_abi(name: str) -> Abi:
    """``executor/abi/<name>.json``."""
    path = ABI_DIR / f"{name}.json"
    try:
        abi: Abi = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ChainError(f"ABI {path} is missing or malformed ({e}); run `make contracts`") from e
    return abi


@dataclass(frozen=True)
class _Error:
    name: str
    types: list[str]


class RevertNames:
    """Names the custom errors of the given ABIs from a revert's data."""

    def __init__(self, *abis: Abi) -> None:
        self._by_selector: dict[bytes, _Error] = {}
        for abi in abis:
            for entry in abi:
                if entry["type"] == "error":
                    signature = abi_to_signature(entry)  # type: ignore[arg-type]
                    self._by_selector[function_signature_to_4byte_selector(signature)] = _Error(
                        entry["name"],
                        get_abi_input_types(entry),  # type: ignore[arg-type]
                    )

    def explain(self, error: ContractLogicError) -> str:
        data = error.data if isinstance(error.data, str) else None
        if not isinstance(error, ContractCustomError) or data is None:
            return error.message or str(error)
        raw = bytes(HexBytes(data))
        known = self._by_selector.get(raw[:4])
        if known is None:
            return f"custom error {data[:10]} (not in the ABI)"
        try:
            values = abi_decode(known.types, raw[4:])
        except DecodingError:
            values = ()
        shown = ", ".join("0x" + v.hex() if isinstance(v, bytes) else str(v) for v in values)
        return f"{known.name}({shown})"


class OwnerChain:
    """An HTTP JSON-RPC endpoint and the owner's account."""

    def __init__(self, rpc_url: str, owner: LocalAccount) -> None:
        self.rpc_url = rpc_url
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url))
        self.owner = owner

    @property
    def owner_address(self) -> ChecksumAddress:
        return to_checksum_address(self.owner.address)

    async def close(self) -> None:
        await self.w3.provider.disconnect()

    def contract(self, address: str, abi_name: str) -> AsyncContract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=load_abi(abi_name))

    async def has_code(self, address: str) -> bool:
        code = await self._rpc_call(
            "eth_getCode", self.w3.eth.get_code(to_checksum_address(address))
        )
        return len(code) > 0

    async def call(self, contract: AsyncContract, function: str, *args: Any) -> Any:
        """A view call; ``OwnerTxError`` if it reverts or the RPC fails."""
        try:
            return await contract.functions[function](*args).call()
        except ContractLogicError as e:
            raise OwnerTxError(f"{function} reverted: {e.message or e}") from e
        except (Web3Exception, OSError) as e:
            raise OwnerTxError(f"{function}: {_rpc_failure(self.rpc_url, e)}") from e

    async def answers(self, contract: AsyncContract, function: str, *args: Any) -> bool:
        """Whether a view call succeeds: how a contract is told apart by its interface."""
        try:
            await contract.functions[function](*args).call()
        except (ContractLogicError, Web3Exception, ValueError, OSError):
            return False
        return True

    async def transact(
        self, contract: AsyncContract, function: str, *args: Any, reverts: RevertNames
    ) -> TxReceipt:
        """Sends ``function(*args)`` from the owner and returns its successful receipt."""
        data = contract.encode_abi(function, args=list(args))
        tx: TxParams = {
            "from": self.owner_address,
            "to": to_checksum_address(contract.address),
            "data": data,
            "value": Wei(0),
        }
        try:
            gas = await self.w3.eth.estimate_gas(tx)
        except ContractLogicError as e:
            raise OwnerTxError(f"{function} would revert: {reverts.explain(e)}") from e
        except (Web3Exception, OSError) as e:
            raise OwnerTxError(f"{function}: {_rpc_failure(self.rpc_url, e)}") from e
        try:
            chain_id = await self.w3.eth.chain_id
            nonce = await self.w3.eth.get_transaction_count(self.owner_address, "pending")
            base_fee = int((await self.w3.eth.get_block("latest")).get("baseFeePerGas", 0))
            tip = int(await self.w3.eth.max_priority_fee)
        except (Web3Exception, OSError) as e:
            raise OwnerTxError(f"{function}: {_rpc_failure(self.rpc_url, e)}") from e
        tx.update(
            {
                "chainId": chain_id,
                "nonce": nonce,
                "gas": gas + gas // 5,
                "maxPriorityFeePerGas": Wei(tip),
                "maxFeePerGas": Wei(2 * base_fee + tip),
            }
        )
        signed = self.owner.sign_transaction(dict(tx))  # type: ignore[arg-type]
        try:
            tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            print(f"{function}: sent tx {tx_hash.to_0x_hex()}, waiting for its receipt", flush=True)
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.2
            )
        except TimeExhausted as e:
            raise OwnerTxError(
                f"{function}: tx {tx_hash.to_0x_hex()} not mined within {RECEIPT_TIMEOUT_S:g} s "
                "(it may still be; check it before sending again)"
            ) from e
        except (Web3Exception, OSError) as e:
            raise OwnerTxError(f"{function}: {_rpc_failure(self.rpc_url, e)}") from e
        if receipt["status"] != 1:
            raise OwnerTxError(
                f"{function}: tx {tx_hash.to_0x_hex()} reverted on chain "
                f"(block {receipt['blockNumber']})"
            )
        return receipt

    async def _rpc_call(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (Web3Exception, OSError) as e:
            raise OwnerTxError(f"{what}: {_rpc_failure(self.rpc_url, e)}") from e


def _rpc_failure(rpc_url: str, error: BaseException) -> str:
    reason = redact.redact(str(error)) or type(error).__name__
    return f"the RPC {redact.redact(rpc_url)} failed: {reason}"


def owner_account(private_key: bytes) -> LocalAccount:
    account: LocalAccount = Account.from_key(private_key)
    return account
