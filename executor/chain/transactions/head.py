"""The chain head as the transaction manager sees it: block number, chain time and fees.

One ``eth_getBlockByNumber("latest")`` per poll (read raw: :mod:`.reads`) gives all three; the tip
suggestion is refreshed once per new block. Sending a transaction then needs no fee lookup: the
fees are already known. Each head read feeds the daemon's one chain clock (:mod:`.clock`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from web3 import AsyncWeb3

from executor.chain.clock import ChainClock
from executor.chain.transactions import reads as raw
from executor.chain.transactions.policy import Fees

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Head:
    number: int
    timestamp: int
    """Unix seconds: the chain time the contracts compare against."""
    base_fee: int


class ChainHead:
    def __init__(self, w3: AsyncWeb3, clock: ChainClock | None = None) -> None:
        self._w3 = w3
        self.clock = clock or ChainClock()
        self.latest: Head | None = None
        self._tip = 0
        self._pending_base_fee = 0
        self._new_block = asyncio.Event()

    def chain_now(self) -> float:
        """Chain time now (unix seconds), from the chain clock."""
        return self.clock.now()

    def fees(self) -> Fees:
        """Fees for a new transaction now: 2 x base fee + tip."""
        base = max(self.latest.base_fee if self.latest else 0, self._pending_base_fee)
        return Fees.fresh(base, self._tip)

    async def read(self) -> bool:
        """Read the latest block; True if it is a new one."""
        number, timestamp, base_fee = await raw.block_header(self._w3, "latest")
        previous = self.latest
        self.latest = Head(number, timestamp, base_fee)
        self.clock.observe(timestamp)
        if previous is not None and previous.number == self.latest.number:
            return False
        self._pending_base_fee = 0
        try:
            tip = await raw.call(self._w3, "eth_maxPriorityFeePerGas", [])
            self._tip = raw.quantity(tip, "eth_maxPriorityFeePerGas")
        except Exception as e:
            logger.debug("eth_maxPriorityFeePerGas failed (%s); keeping tip %d", e, self._tip)
        self._new_block.set()
        self._new_block = asyncio.Event()
        return True

    async def read_pending_base_fee(self) -> None:
        """The next block's base fee, after a node said a fee cap is below it (it may have been
        raised for the next block only, before any block shows it)."""
        _, _, self._pending_base_fee = await raw.block_header(self._w3, "pending")

    async def wait_for_block(self, timeout_s: float) -> None:
        """Until a new block is read, or ``timeout_s`` passes."""
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see TxManager._run
                await self._new_block.wait()
        except TimeoutError:
            pass
