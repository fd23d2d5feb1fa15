"""The timeout watch: every env-1 job that is not complete when the chain allows is slashed.

Any executor may settle a job nobody answered in time (docs/protocol.md §3). The watch keeps one
timer per running job, due on the chain clock (:mod:`executor.chain.clock`) at the job's block
timestamp plus its deadline, the execution buffer and one second; ``executor.node`` starts and
stops the timers as the chain's events arrive, and ``executor.service`` decides whether a due
job is really slashed (never this node's own answered job).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from executor.chain.clock import ChainClock
from executor.logs import job_label
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)

MAX_SLASHED_KEPT = 256
MAX_TIMERS = 8192
"""At most this many jobs are under the timeout watch at once."""
MAX_TIMEOUT_DELAY_S = 7 * 24 * 3600.0
"""A job due later than this (a deadline of weeks) is left to other nodes' watches."""


class TimeoutWatch:
    """The running set: slash every env-1 job that is not complete when the chain allows.

    ``slash(job_id)`` sends the slash (``executor.jobs``) and says whether it was mined.
    A job is due at ``block_timestamp*1000 + deadline_ms + buffer_s*1000 + 1000`` ms of chain
    time (docs/protocol.md §2-3), so a job backfilled after an outage is slashed as soon as the
    chain allows, not a full window after it was seen.
    """

    def __init__(
        self,
        *,
        slash: Callable[[int], Awaitable[bool]],
        execution_buffer_time_s: int,
        num_selected_executors: int,
        tasks: TaskSet,
        clock: ChainClock | None = None,
    ) -> None:
        self._slash = slash
        self._buffer_ms = execution_buffer_time_s * 1000
        self._num_selected = num_selected_executors
        self._tasks = tasks
        self.clock = clock or ChainClock()
        self._timers: dict[int, asyncio.Task[None]] = {}
        self._needed: dict[int, int] = {}
        self.slashed: deque[int] = deque(maxlen=MAX_SLASHED_KEPT)
        """The latest job ids this node slashed (bounded)."""

    @property
    def running(self) -> frozenset[int]:
        return frozenset(self._timers)

    def due_in_s(self, deadline_ms: int, block_timestamp: int | None) -> float:
        """Seconds until a job's slash is due (0 when it already is), in chain time; a job
        whose block timestamp is unknown started now."""
        window_ms = deadline_ms + self._buffer_ms + 1000
        if block_timestamp is None:
            return window_ms / 1000
        return max(0.0, (block_timestamp * 1000 + window_ms - self.clock.now_ms()) / 1000)

    def start(
        self,
        job_id: int,
        deadline_ms: int,
        block_timestamp: int | None = None,
        selected: int | None = None,
    ) -> None:
        if job_id in self._timers:
            return
        delay_s = self.due_in_s(deadline_ms, block_timestamp)
        if delay_s > MAX_TIMEOUT_DELAY_S or len(self._timers) >= MAX_TIMERS:
            # A deadline of years, or a flood of jobs: other nodes still watch them; this one
            # keeps its memory bounded.
            logger.warning(
                "job %d: timeout not watched (due in %.0fs, %d jobs watched)",
                job_id,
                delay_s,
                len(self._timers),
            )
            return
        self._needed[job_id] = min(selected or self._num_selected, self._num_selected)
        self._timers[job_id] = self._tasks.spawn(
            self._fire_after(job_id, delay_s), name=f"timeout-{job_id}"
        )

    def responded(self, job_id: int, output_count: int) -> None:
        if output_count >= self._needed.get(job_id, self._num_selected):
            self.forget(job_id)

    def forget(self, job_id: int) -> None:
        """Stop watching ``job_id`` (complete, or its JobCreated was reorged out)."""
        self._needed.pop(job_id, None)
        timer = self._timers.pop(job_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def clear(self) -> None:
        """Forget every running job (the node was drained or deregistered)."""
        for job_id in list(self._timers):
            self.forget(job_id)

    async def _fire_after(self, job_id: int, delay_s: float) -> None:
        with job_label(job_id):
            await asyncio.sleep(delay_s)
            self._timers.pop(job_id, None)
            self._needed.pop(job_id, None)
            await self.slash(job_id)

    async def slash(self, job_id: int) -> bool:
        """Send the slash now; True when this node's slash was mined."""
        slashed = await self._slash(job_id)
        if slashed:
            self.slashed.append(job_id)
        return slashed
