"""Broadcasting a signed transaction to every HTTP endpoint at once.

``send`` returns as soon as one endpoint accepts (or already holds) the transaction; the other
sends finish in the background, so a slow or dead endpoint never delays the critical path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from web3 import AsyncWeb3

from executor.chain.transactions import reads as raw
from executor.chain.transactions.policy import RpcFailure, classify_rpc_error

logger = logging.getLogger(__name__)


class Broadcaster:
    def __init__(self, clients: Sequence[AsyncWeb3]) -> None:
        if not clients:
            raise ValueError("at least one endpoint is needed to broadcast")
        self._clients = list(clients)
        self._background: set[asyncio.Future[Any]] = set()

    async def send(self, raw: bytes) -> BaseException | None:
        """None once an endpoint accepted ``raw``; else the first endpoint's error (or an
        endpoint's "already known", which means accepted)."""
        raw_hex = "0x" + raw.hex()
        sends: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(_send_raw(c, raw_hex)) for c in self._clients
        ]
        errors: dict[int, BaseException] = {}
        pending: set[asyncio.Future[Any]] = set(sends)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        self._leave(pending)
                        return None
                    errors[sends.index(task)] = error
        except asyncio.CancelledError:
            self._leave(pending)
            raise
        for error in errors.values():
            if classify_rpc_error(error) is RpcFailure.ALREADY_KNOWN:
                return error
        return errors[min(errors)]

    def _leave(self, pending: set[asyncio.Future[Any]]) -> None:
        """Let the other endpoints' sends finish on their own (their answers do not matter)."""
        for task in pending:
            self._background.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("broadcast to another endpoint failed: %s", task.exception())

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _send_raw(client: AsyncWeb3, raw_hex: str) -> Any:
    """``eth_sendRawTransaction`` straight to the provider (:mod:`.reads`): web3's request pipeline
    adds about half a millisecond to every output's critical path."""
    return await raw.call(client, "eth_sendRawTransaction", [raw_hex])
