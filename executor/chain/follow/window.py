"""The recent chain as a log stream saw it: what reorg detection and dedupe need, and no more.

``ChainWindow`` keeps, for the blocks within ``size`` blocks below the newest head:

* the canonical hash of every block it learnt of (heads, blocks of yielded logs);
* the events yielded per block (what a reorg retracts);
* the dedupe keys (block hash, tx hash, log index) of yielded logs.

Older blocks are taken as final and forgotten, so memory does not grow with the chain.
``reconcile`` compares the known hashes with the canonical ones, newest first, down to the fork
point, and retracts every event yielded above it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from executor.chain.follow.events import ChainEvent, LogRemoved

logger = logging.getLogger(__name__)

LogKey = tuple[str, str, int]
"""(block hash, tx hash, log index)"""


def event_key(event: ChainEvent) -> LogKey:
    pos = event.position
    return (pos.block_hash, pos.tx_hash, pos.log_index)


@dataclass(frozen=True)
class Reorg:
    fork: int
    """The newest block still canonical: blocks above it are to be read again."""
    removed: list[LogRemoved]
    deeper_than_window: bool = False


class ChainWindow:
    def __init__(self, size: int, head: int) -> None:
        self.size = size
        self.head = head
        self._hashes: dict[int, str] = {}
        self._yielded: dict[int, list[ChainEvent]] = {}
        self._seen: dict[LogKey, int] = {}

    def tracked(self) -> dict[str, int]:
        return {
            "hashes": len(self._hashes),
            "yielded_blocks": len(self._yielded),
            "seen": len(self._seen),
        }

    def known_hash(self, number: int) -> str | None:
        return self._hashes.get(number)

    def contradicts(self, number: int, block_hash: str | None) -> bool:
        """True when ``block_hash`` is not the hash known for block ``number``."""
        known = self._hashes.get(number)
        return known is not None and block_hash is not None and known != block_hash

    def note_head(self, number: int, block_hash: str) -> None:
        self._hashes[number] = block_hash
        if number > self.head:
            self.head = number
            self._prune()

    def seen(self, event: ChainEvent) -> bool:
        return event_key(event) in self._seen

    def add(self, event: ChainEvent) -> None:
        pos = event.position
        self._seen[event_key(event)] = pos.block_number
        self._yielded.setdefault(pos.block_number, []).append(event)
        if pos.block_hash:
            self._hashes.setdefault(pos.block_number, pos.block_hash)

    def retract(self, event: ChainEvent) -> LogRemoved | None:
        """The yielded event with ``event``'s key, removed (a node's ``removed: true`` log)."""
        key = event_key(event)
        events = self._yielded.get(event.position.block_number, [])
        for kept in events:
            if event_key(kept) == key:
                events.remove(kept)
                self._seen.pop(key, None)
                return LogRemoved(kept)
        return None

    async def reconcile(
        self, canonical_hash: Callable[[int], Awaitable[str | None]]
    ) -> Reorg | None:
        """Find the fork point against the canonical chain; None when nothing changed."""
        if not self._hashes:
            return None
        newest = max(self._hashes)
        fork: int | None = None
        for number in sorted(self._hashes, reverse=True):
            if await canonical_hash(number) == self._hashes[number]:
                fork = number
                break
        if fork == newest:
            return None
        deeper = fork is None
        if fork is None:
            fork = min(self._hashes) - 1
        removed: list[LogRemoved] = []
        for number in sorted((n for n in self._yielded if n > fork), reverse=True):
            for event in reversed(self._yielded.pop(number)):
                self._seen.pop(event_key(event), None)
                removed.append(LogRemoved(event))
        for number in [n for n in self._hashes if n > fork]:
            del self._hashes[number]
        self.head = fork
        return Reorg(fork, removed, deeper)

    def _prune(self) -> None:
        horizon = self.head - self.size
        for number in [n for n in self._hashes if n < horizon]:
            del self._hashes[number]
        for number in [n for n in self._yielded if n < horizon]:
            del self._yielded[number]
        if len(self._seen) > 64:
            self._seen = {k: b for k, b in self._seen.items() if b >= horizon}
