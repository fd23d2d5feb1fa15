"""Fetch a job's JavaScript from its UserCode transaction, verified against ``codehash``
(docs/protocol.md §3 step 1).

The user's code is never stored in contract state: it is the ``inputData`` argument of the
``saveCodeInCallData(string,bytes)`` call in the transaction whose hash is the job's ``codehash``
(docs/protocol.md §3 step 1). The RPC nodes are outside the enclave and may lie, so the code is read
only from the transaction's signed bytes after checking that they hash to ``codehash``
(``executor.chain.code.envelope``); the JSON fields an RPC reports are never used directly.

Endpoints are asked in order; one that fails or whose answer does not verify is skipped for the
next. Problems the protocol names become error codes (1: no such transaction, wrong recipient, or
no endpoint served the true transaction; 2: not a valid call); when every endpoint is unreachable
``ChainError`` is raised (no submission).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from executor import redact
from executor.chain import rpc
from executor.chain.code.cache import CodeCache, VerifiedCode, normalize_codehash
from executor.chain.code.calldata import SAVE_CODE_SELECTOR, decode_code_calldata
from executor.chain.code.envelope import envelope_from_json
from executor.chain.rpc import RpcCallError
from executor.errors import ChainError, RawTxError, TxHashMismatch
from executor.outcome import ErrorCode

__all__ = ["SAVE_CODE_SELECTOR", "CodeFetcher", "FetchedCode", "decode_code_calldata"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedCode:
    """Either the code bytes, or the protocol error code that replaces an execution."""

    code: bytes = b""
    error: ErrorCode | None = None


class CodeFetcher:
    """Reads code transactions from the RPC endpoints, trusting only bytes that hash to codehash."""

    def __init__(
        self, clients: Sequence[AsyncWeb3], code_contract: str, cache: CodeCache | None = None
    ) -> None:
        if not clients:
            raise ValueError("CodeFetcher needs at least one RPC client")
        self._clients = list(clients)
        self._code_contract = code_contract.lower()
        self._cache = cache

    async def fetch(self, codehash: str) -> FetchedCode:
        try:
            key = normalize_codehash(codehash)
        except ValueError:
            logger.warning("code tx %r: not a hex hash", codehash[:80])
            return FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
        if len(key) != 66:
            logger.warning("code tx %s: not a 32-byte hash", key[:80])
            return FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
        if self._cache is not None and (cached := self._cache.get(key)) is not None:
            logger.debug("code tx %s: verified code from the cache", key)
            return _result(cached)

        not_found: list[str] = []
        unusable: list[str] = []
        failed: list[str] = []
        for client in self._clients:
            endpoint = endpoint_name(client)
            try:
                verified = await self._from_endpoint(client, key)
            except TxHashMismatch as e:
                logger.warning(
                    "code tx %s: POSSIBLE ATTACK: RPC %s served a transaction that is not the one "
                    "named by the job (%s); its answer is discarded",
                    key,
                    endpoint,
                    e,
                )
                unusable.append(endpoint)
                continue
            except RawTxError as e:
                logger.warning("code tx %s: RPC %s: unusable transaction: %s", key, endpoint, e)
                unusable.append(endpoint)
                continue
            except ChainError as e:
                logger.warning("code tx %s: RPC %s failed: %s", key, endpoint, e)
                failed.append(endpoint)
                continue
            if verified is None:
                logger.info("code tx %s: not found on RPC %s", key, endpoint)
                not_found.append(endpoint)
                continue
            if self._cache is not None:
                self._cache.put(verified)
            return _result(verified)

        if unusable or not_found:
            logger.warning(
                "code tx %s: no RPC served the verified transaction (not found: %s; discarded: "
                "%s; failed: %s)",
                key,
                ", ".join(not_found) or "-",
                ", ".join(unusable) or "-",
                ", ".join(failed) or "-",
            )
            return FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
        raise ChainError(f"cannot fetch code tx {key}: every RPC failed ({', '.join(failed)})")

    async def _from_endpoint(self, client: AsyncWeb3, key: str) -> VerifiedCode | None:
        """The verified code from one endpoint; None when it does not know the transaction."""
        raw = await signed_tx_bytes(client, key)
        if raw is None:
            return None
        return VerifiedCode.from_signed_bytes(key, raw, self._code_contract)


async def signed_tx_bytes(client: AsyncWeb3, key: str) -> bytes | None:
    """What one endpoint serves as the signed bytes of transaction ``key`` (0x hash), UNVERIFIED:
    the caller must check them against the hash (``rawtx.verify_raw_tx``). None: not found."""
    raw = await _raw_transaction(client, key)
    if raw is None:
        # No raw method, or a null answer: rebuild the signed envelope from the JSON view,
        # which is then held to exactly the same hash check.
        tx = await _call(client, "eth_getTransactionByHash", key)
        if tx is None:
            return None
        if not isinstance(tx, dict):
            raise RawTxError("eth_getTransactionByHash did not answer an object")
        raw = envelope_from_json(tx)
    return raw


async def _raw_transaction(client: AsyncWeb3, key: str) -> bytes | None:
    try:
        result = await _call(client, "eth_getRawTransactionByHash", key)
    except RpcCallError as e:
        if e.method_missing:
            return None
        raise
    if result is None or result in ("0x", ""):
        return None
    if not isinstance(result, str) or not result.startswith("0x"):
        raise RawTxError("eth_getRawTransactionByHash did not answer hex data")
    try:
        return bytes.fromhex(result[2:])
    except ValueError as e:
        raise RawTxError("eth_getRawTransactionByHash answered malformed hex") from e


async def _call(client: AsyncWeb3, method: str, key: str) -> Any:
    """``rpc.call``, with a transport failure raised as ``ChainError`` (the endpoint is skipped)."""
    try:
        return await rpc.call(client, method, [key])
    except RpcCallError:
        raise
    except (Web3Exception, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        raise ChainError(f"{method}: {type(e).__name__}: {str(e)[:200]}") from e


def endpoint_name(client: AsyncWeb3) -> str:
    """The endpoint's URL for a log line, with anything that may be an API key masked."""
    uri = getattr(client.provider, "endpoint_uri", None)
    return redact.url(str(uri)) if uri else type(client.provider).__name__


def _result(verified: VerifiedCode) -> FetchedCode:
    if verified.error is not None:
        logger.info(
            "code tx %s: verified, but %s", verified.codehash, verified.error.meaning.lower()
        )
        return FetchedCode(error=verified.error)
    return FetchedCode(code=verified.code)
