"""Fetch a job's JavaScript from its UserCode transaction's calldata (docs/protocol.md §3 step 1).

The user's code is never stored in contract state: it is the ``inputData`` argument of the
``saveCodeInCallData(string,bytes)`` call in the transaction whose hash is the job's ``codehash``.
Problems the protocol names become error codes (1: no such transaction / wrong recipient,
2: not a valid call); an unreachable RPC raises ``ChainError`` (no submission).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3Exception

from executor.errors import ChainError
from executor.outcome import ErrorCode

logger = logging.getLogger(__name__)

SAVE_CODE_SELECTOR = function_signature_to_4byte_selector("saveCodeInCallData(string,bytes)")


@dataclass(frozen=True)
class FetchedCode:
    """Either the code bytes, or the protocol error code that replaces an execution."""

    code: bytes = b""
    error: ErrorCode | None = None


def decode_code_calldata(calldata: bytes) -> bytes | None:
    """The ``inputData`` bytes of a ``saveCodeInCallData`` call, trailing zero bytes removed.

    Returns None when the calldata is not a valid call of that function.
    """
    if calldata[:4] != SAVE_CODE_SELECTOR:
        return None
    try:
        # The string is decoded as raw bytes: its ABI encoding is identical and user code need
        # not be valid UTF-8 for us to hand it to workerd (which then reports the problem).
        input_data, _metadata = decode(["bytes", "bytes"], calldata[4:], strict=False)
    except (DecodingError, OverflowError, ValueError):
        return None
    return bytes(input_data).rstrip(b"\x00")


class CodeFetcher:
    """Reads code transactions over the HTTP RPC and checks they target the UserCode contract."""

    def __init__(self, w3: AsyncWeb3, code_contract: str) -> None:
        self._w3 = w3
        self._code_contract = code_contract.lower()

    async def fetch(self, codehash: str) -> FetchedCode:
        tx = await self._transaction(codehash)
        if tx is None:
            logger.info("code tx %s not found", codehash)
            return FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
        to = tx.get("to")
        if not to or str(to).lower() != self._code_contract:
            logger.info("code tx %s was sent to %s, not the UserCode contract", codehash, to)
            return FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
        code = decode_code_calldata(bytes(HexBytes(tx.get("input") or b"")))
        if code is None:
            logger.info("code tx %s calldata is not a saveCodeInCallData call", codehash)
            return FetchedCode(error=ErrorCode.INVALID_CALLDATA)
        return FetchedCode(code=code)

    async def _transaction(self, codehash: str) -> Any:
        try:
            return await self._w3.eth.get_transaction(codehash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        except (Web3Exception, aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ChainError(f"cannot fetch code tx {codehash}: {e}") from e
