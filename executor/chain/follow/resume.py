"""What the chain says about this enclave: read when a restarted daemon is initialized again.

A daemon killed and restarted inside the same enclave keeps its key, so the chain still knows the
node: its latest TeeManager event (indexed by enclave address, topic1) tells whether it is
registered, drained or gone, and its ``JobResponded`` events (executor = topic2) tell which recent
jobs it already answered. The service starts the follower from that state instead of waiting for a
registration that will never come again (docs/restart.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from executor.chain.follow.events import (
    NODE_EVENTS,
    ChainEvent,
    EventDecodeError,
    JobResponded,
    decode_log,
)
from executor.errors import ChainError

logger = logging.getLogger(__name__)

NODE_LOOKBACK_BLOCKS = 1_000_000
"""How far back the latest TeeManager event of this enclave is searched for."""
JOB_LOOKBACK_BLOCKS = 1_000
"""How far back jobs are re-read (and answered ones recognised) after a restart."""
MAX_SCAN_REQUESTS = 256
"""A bound on the eth_getLogs calls of one read (ranges are halved when a node refuses them)."""


@dataclass(frozen=True)
class NodeRecord:
    last_event: ChainEvent | None
    """The enclave's latest TeeNodeRegistered/Drained/Revived/Deregistered, if any."""
    answered: frozenset[int]
    """Job ids this enclave answered in the last ``JOB_LOOKBACK_BLOCKS`` blocks."""


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


async def read_node_record(
    w3: AsyncWeb3,
    *,
    tee_manager: str,
    jobs_contract: str,
    enclave: str,
    head: int,
    node_lookback: int = NODE_LOOKBACK_BLOCKS,
    job_lookback: int = JOB_LOOKBACK_BLOCKS,
) -> NodeRecord:
    scan = _Scan(w3)
    node_topics = ["0x" + e.topic0().hex() for e in NODE_EVENTS]
    try:
        last = await scan.latest(
            {"address": tee_manager, "topics": [node_topics, _topic(enclave)]},
            max(0, head - node_lookback),
            head,
        )
    except _ScanBudgetExhausted as e:
        logger.warning("%s: taken as never registered (register, or check the RPC)", e)
        last = None
    responded = await scan.logs(
        {
            "address": jobs_contract,
            "topics": ["0x" + JobResponded.topic0().hex(), None, _topic(enclave)],
        },
        max(0, head - job_lookback),
        head,
    )
    answered = frozenset(e.job_id for e in responded if isinstance(e, JobResponded))
    return NodeRecord(last, answered)


class _ScanBudgetExhausted(ChainError):
    pass


class _Scan:
    """``eth_getLogs`` over a range, split in halves when the node refuses it (hosted RPCs cap
    the block range); the filters match a handful of logs, so most nodes answer at once."""

    def __init__(self, w3: AsyncWeb3) -> None:
        self._w3 = w3
        self._requests = 0

    async def latest(self, query: dict[str, Any], start: int, end: int) -> ChainEvent | None:
        """The newest matching event in [start, end]: newer halves are searched first."""
        try:
            events = await self._query(query, start, end)
        except Web3RPCError:
            if start >= end:
                raise
            mid = (start + end) // 2
            return await self.latest(query, mid + 1, end) or await self.latest(query, start, mid)
        return events[-1] if events else None

    async def logs(self, query: dict[str, Any], start: int, end: int) -> list[ChainEvent]:
        try:
            return await self._query(query, start, end)
        except Web3RPCError:
            if start >= end:
                raise
            mid = (start + end) // 2
            return await self.logs(query, start, mid) + await self.logs(query, mid + 1, end)

    async def _query(self, query: dict[str, Any], start: int, end: int) -> list[ChainEvent]:
        self._requests += 1
        if self._requests > MAX_SCAN_REQUESTS:
            raise _ScanBudgetExhausted(
                f"no TeeManager event of this enclave found within {MAX_SCAN_REQUESTS} "
                "eth_getLogs calls"
            )
        logs = await self._w3.eth.get_logs({**query, "fromBlock": start, "toBlock": end})  # type: ignore[typeddict-item]
        events: list[ChainEvent] = []
        for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
            try:
                event = decode_log(dict(log))
            except EventDecodeError as e:
                logger.warning("skipping a malformed log while reading the node's record: %s", e)
                continue
            if event is not None:
                events.append(event)
        return events
