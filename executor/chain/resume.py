"""What the chain says about this enclave: read when a restarted daemon is initialized again.

A daemon killed and restarted inside the same enclave keeps its key, so the chain still knows the
node: its latest TeeManager event (indexed by enclave address, topic1) tells whether it is
registered, drained or gone, and its ``JobResponded`` events (executor = topic2) tell which recent
jobs it already answered. The service starts the follower from that state instead of waiting for a
registration that will never come again (docs/restart.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3

from executor.chain.events import (
    NODE_EVENTS,
    ChainEvent,
    EventDecodeError,
    JobResponded,
    decode_log,
)

logger = logging.getLogger(__name__)

NODE_LOOKBACK_BLOCKS = 1_000_000
"""How far back the latest TeeManager event of this enclave is searched for."""
JOB_LOOKBACK_BLOCKS = 1_000
"""How far back jobs are re-read (and answered ones recognised) after a restart."""
SCAN_CHUNK_BLOCKS = 10_000


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
    node_topics = ["0x" + e.topic0().hex() for e in NODE_EVENTS]
    last = await _latest(
        w3,
        {"address": tee_manager, "topics": [node_topics, _topic(enclave)]},
        head=head,
        floor=max(0, head - node_lookback),
    )
    responded = await _logs(
        w3,
        {
            "address": jobs_contract,
            "topics": ["0x" + JobResponded.topic0().hex(), None, _topic(enclave)],
        },
        start=max(0, head - job_lookback),
        end=head,
    )
    answered = frozenset(e.job_id for e in responded if isinstance(e, JobResponded))
    return NodeRecord(last, answered)


async def _latest(
    w3: AsyncWeb3, query: dict[str, Any], *, head: int, floor: int
) -> ChainEvent | None:
    end = head
    while end >= floor:
        start = max(floor, end - SCAN_CHUNK_BLOCKS + 1)
        events = await _logs(w3, query, start=start, end=end)
        if events:
            return events[-1]
        end = start - 1
    return None


async def _logs(
    w3: AsyncWeb3, query: dict[str, Any], *, start: int, end: int
) -> Sequence[ChainEvent]:
    events: list[ChainEvent] = []
    while start <= end:
        stop = min(end, start + SCAN_CHUNK_BLOCKS - 1)
        logs = await w3.eth.get_logs({**query, "fromBlock": start, "toBlock": stop})  # type: ignore[typeddict-item]
        for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
            try:
                event = decode_log(dict(log))
            except EventDecodeError as e:
                logger.warning("skipping a malformed log while reading the node's record: %s", e)
                continue
            if event is not None:
                events.append(event)
        start = stop + 1
    return events
