"""The transaction manager's rules: fees and their bumps, nonce bookkeeping, and what an RPC
error means. They do no I/O, so each is unit-tested in milliseconds; the one exception is
``retry_transient``, which runs the caller's read and sleeps briefly between its tries.

Node errors that are not reverts carry only a message (JSON-RPC code -32000/-32003 with text that
differs between clients), so they are told apart by known phrases. A revert is recognised from its
structure instead: web3's ``ContractLogicError`` or the JSON-RPC error code 3 with revert data.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from hexbytes import HexBytes
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)

T = TypeVar("T")

BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8
"""A replacement pays at least +12.5% on both the tip and the fee cap. Nodes require +10% (geth's
default ``txpool.pricebump``); 12.5% is also the most the base fee can rise in one block, so one
bump per block keeps a replacement ahead of a base fee that rises at the maximum rate."""
BASE_FEE_HEADROOM = 2
"""A fresh fee cap is 2 x base fee + tip: it survives six consecutive full blocks (+12.5% each)."""
REVERT_CODE = 3
"""JSON-RPC error code of ``execution reverted`` (with the revert data in ``data``)."""


@dataclass(frozen=True)
class Fees:
    tip: int
    """maxPriorityFeePerGas (wei)."""
    cap: int
    """maxFeePerGas (wei)."""

    def __post_init__(self) -> None:
        if self.tip < 0 or self.cap < self.tip:
            raise ValueError(f"bad fees: tip {self.tip} and cap {self.cap}")

    @classmethod
    def fresh(cls, base_fee: int, tip: int) -> Fees:
        return cls(tip, BASE_FEE_HEADROOM * base_fee + tip)

    def bumped(self) -> Fees:
        """At least +12.5% on both (and at least +1 wei, so that a zero tip rises too)."""
        tip = self.tip * BUMP_NUMERATOR // BUMP_DENOMINATOR + 1
        cap = self.cap * BUMP_NUMERATOR // BUMP_DENOMINATOR + 1
        return Fees(tip, max(cap, tip))

    def replacement(self, current: Fees) -> Fees:
        """Fees for a tx replacing one that paid ``self``: bumped, and never below ``current``."""
        bumped = self.bumped()
        return Fees(max(bumped.tip, current.tip), max(bumped.cap, current.cap))


class RpcFailure(enum.Enum):
    """What a failed RPC call (mostly ``eth_sendRawTransaction``) means for the manager."""

    ALREADY_KNOWN = "already-known"
    """The node has this very transaction: as good as accepted."""
    NONCE_TOO_LOW = "nonce-too-low"
    """The nonce is used on chain: re-read the nonce, never resend blindly."""
    INSUFFICIENT_FUNDS = "insufficient-funds"
    UNDERPRICED = "underpriced"
    """A pooled tx on this nonce pays more, or the price is below the node's minimum."""
    FEE_BELOW_BASE_FEE = "fee-below-base-fee"
    """The fee cap is below the next block's base fee."""
    REVERT = "revert"
    TRANSIENT = "transient"
    """Transport trouble: the call may or may not have reached the node."""
    OTHER = "other"


_PHRASES: tuple[tuple[tuple[str, ...], RpcFailure], ...] = (
    (("already known", "already imported", "known transaction"), RpcFailure.ALREADY_KNOWN),
    (("nonce too low", "nonce is too low", "already been used"), RpcFailure.NONCE_TOO_LOW),
    (("insufficient funds",), RpcFailure.INSUFFICIENT_FUNDS),
    (
        ("less than block base fee", "fee cap less than", "max fee per gas less than"),
        RpcFailure.FEE_BELOW_BASE_FEE,
    ),
    (("underpriced",), RpcFailure.UNDERPRICED),
)
_TRANSIENT_TYPES = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    ProviderConnectionError,
    TimeExhausted,
)


def _rpc_error(e: BaseException) -> dict[str, Any]:
    response = getattr(e, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        error: dict[str, Any] = response["error"]
        return error
    return {}


def classify_rpc_error(e: BaseException) -> RpcFailure:
    if isinstance(e, ContractLogicError):
        return RpcFailure.REVERT
    if isinstance(e, _TRANSIENT_TYPES):
        return RpcFailure.TRANSIENT
    if not isinstance(e, Web3RPCError):
        return RpcFailure.OTHER
    error = _rpc_error(e)
    if error.get("code") == REVERT_CODE:
        return RpcFailure.REVERT
    text = str(error.get("message") or e.message or e).lower()
    for phrases, failure in _PHRASES:
        if any(p in text for p in phrases):
            return failure
    return RpcFailure.OTHER


def revert_data(e: BaseException | None) -> bytes | None:
    """The revert data (selector + arguments) of a revert error, if the node gave it."""
    if e is None:
        return None
    data = getattr(e, "data", None) if isinstance(e, ContractLogicError) else None
    if data is None:
        data = _rpc_error(e).get("data")
    if isinstance(data, dict):  # some nodes nest it: {"data": {"data": "0x..."}}
        data = data.get("data")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes(HexBytes(data))
        except ValueError:
            return None
    return None


class NonceBook:
    """The next nonce of one account: read from the chain once, then assigned locally.

    ``sync`` only moves it forward (a nonce this process handed out stays handed out), except
    ``give_back`` of the nonce just taken when its transaction was certainly not accepted.
    """

    def __init__(self) -> None:
        self._next: int | None = None

    @property
    def synced(self) -> bool:
        return self._next is not None

    @property
    def next(self) -> int | None:
        return self._next

    def sync(self, chain_count: int) -> None:
        """Adopt the chain's transaction count if it is ahead (first read, or a detected gap)."""
        self._next = chain_count if self._next is None else max(self._next, chain_count)

    def take(self) -> int:
        if self._next is None:
            raise RuntimeError("nonce not read from the chain yet")
        nonce = self._next
        self._next += 1
        return nonce

    def give_back(self, nonce: int) -> bool:
        """Return the last nonce taken (its transaction never reached a node)."""
        if self._next is not None and nonce == self._next - 1:
            self._next = nonce
            return True
        return False


READ_ATTEMPTS = 4


async def retry_transient(read: Callable[..., Awaitable[T]], *args: Any) -> T:
    """A read retried briefly (4 tries over ~0.6 s) while it fails for transport reasons."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return await read(*args)
        except Exception as e:
            last_try = attempt + 1 == READ_ATTEMPTS
            if last_try or classify_rpc_error(e) is not RpcFailure.TRANSIENT:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")
