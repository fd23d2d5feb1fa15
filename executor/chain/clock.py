"""The chain's clock: the one estimate of chain time that every part of the daemon reads.

The contracts judge every window (an output's, a slash's) against block timestamps, so the daemon
must too. Between blocks, which can be seconds apart (minutes on an idle devnet), chain time is
the newest block timestamp seen advanced by the monotonic clock since it was seen: a chain that
stalls keeps its time moving, so a window closes even when no block comes after it.

It is fed by every head the daemon learns of: the event stream's ``NewHead`` (and each job's
block), and the transaction manager's head poll. It never goes back: a head whose timestamp is
below the current estimate (a reorg to an earlier block, an RPC endpoint that lags behind
another) leaves it where it is.

The one fallback: until a first block was seen, chain time is the host's wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ChainClock:
    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._anchor_s: float | None = None
        self._anchored_at = 0.0

    @property
    def synced(self) -> bool:
        """Whether a block was seen (else :meth:`now` is the wall clock)."""
        return self._anchor_s is not None

    def observe(self, timestamp_s: int | float) -> None:
        """A block with this timestamp (unix seconds) was just seen."""
        if self._anchor_s is None or timestamp_s > self.now():
            self._anchor_s = float(timestamp_s)
            self._anchored_at = self._monotonic()

    def now(self) -> float:
        """Chain time now, in unix seconds."""
        if self._anchor_s is None:
            return self._wall()
        return self._anchor_s + (self._monotonic() - self._anchored_at)

    def now_ms(self) -> float:
        return self.now() * 1000.0
