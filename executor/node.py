"""The node's on-chain life: follow its registration state, dispatch job events, watch timeouts.

``ChainFollower.follow`` consumes one ordered stream (TeeManager node events + Jobs events, reorg
retractions and heads, see ``executor.chain.follow``) and reacts as docs/protocol.md §3 says:

* ``TeeNodeRegistered`` for this enclave and its owner: start handling jobs;
* ``TeeNodeDrained``: stop taking new jobs and forget the running set; ``TeeNodeRevived``: resume;
* ``TeeNodeDeregistered``: stop following (a new registration message starts again);
* ``JobCreated`` (env 1, while active): start the timeout watch; execute when selected;
* ``JobResponded``: complete the job once every selected executor answered;
* ``LogRemoved`` of a JobCreated (a reorg): forget that job: its timer and execution are
  cancelled; the job that takes its id in the new chain arrives as a JobCreated of its own;
* ``NewHead``: the chain's clock and the horizon below which job bookkeeping is dropped.

A job is known by (job id, block hash, tx hash): the same id can come back with new content.
Handlers never block: executions run as tasks, so a slow job never delays the stream.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

from executor.chain.follow import (
    ChainEvent,
    JobCreated,
    JobResponded,
    LogRemoved,
    NewHead,
    StreamItem,
    TeeNodeDeregistered,
    TeeNodeDrained,
    TeeNodeRegistered,
    TeeNodeRevived,
)
from executor.logs import job_label
from executor.tasks import TaskSet
from executor.timeouts import TimeoutWatch

logger = logging.getLogger(__name__)

EXECUTOR_ENV = 1
"""The execution environment id of this executor (docs/protocol.md §3)."""
JOB_HORIZON_BLOCKS = 1024
"""Jobs created this many blocks below the head are dropped from the follower's bookkeeping."""
MAX_TRACKED_JOBS = 4096
"""A size bound on top of the block horizon (the oldest job keys are dropped first)."""
HANDLER_FAILURE_BUDGET = 10

JobKey = tuple[int, str, str]
"""(job id, block hash, tx hash)"""


def job_key(job: JobCreated) -> JobKey:
    return (job.job_id, job.position.block_hash, job.position.tx_hash)


class NodeStatus(enum.Enum):
    IDLE = "idle"  # not following the chain (never registered, or deregistered)
    AWAITING_REGISTRATION = "awaiting-registration"
    ACTIVE = "active"
    DRAINED = "drained"


@dataclass
class _Tracked:
    job: JobCreated
    task: asyncio.Task[Any] | None = None
    started: float = 0.0
    """``time.monotonic()`` when its execution started."""


@dataclass
class FollowerHealth:
    handled: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    head: int | None = None

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures < HANDLER_FAILURE_BUDGET

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


class ChainFollower:
    def __init__(
        self,
        *,
        enclave_address: str,
        owner: Callable[[], str | None],
        tee_manager: str,
        jobs_contract: str,
        run_job: Callable[[JobCreated], Coroutine[Any, Any, Any]],
        watch: TimeoutWatch,
        tasks: TaskSet,
    ) -> None:
        self._enclave = enclave_address
        self._owner = owner
        self._tee_manager = tee_manager
        self._jobs_contract = jobs_contract
        self._run_job = run_job
        self._watch = watch
        self._tasks = tasks
        self._jobs: OrderedDict[JobKey, _Tracked] = OrderedDict()
        """Jobs seen, by key, oldest first."""
        self._current: dict[int, JobKey] = {}
        """The key under which each job id is currently known."""
        self._answered: set[int] = set()
        """Job ids this enclave answered before a restart (never executed again)."""
        self._head = 0
        self.health = FollowerHealth()
        self.status = NodeStatus.IDLE
        self.accepting = True
        """False once the daemon is shutting down: no new executions start."""

    def resume(self, status: NodeStatus, answered: Collection[int] = ()) -> None:
        """Start from a state read from the chain (a restarted daemon, see docs/restart.md)."""
        self.status = status
        self._answered = set(answered)

    def tracked(self) -> dict[str, int]:
        """Sizes of the per-job bookkeeping (they stay bounded)."""
        return {
            "jobs": len(self._jobs),
            "current": len(self._current),
            "answered": len(self._answered),
            "timers": len(self._watch.running),
        }

    def executing(self) -> list[dict[str, Any]]:
        """The jobs this node is executing now (admin ``GET /jobs``), oldest first."""
        now = time.monotonic()
        return [
            {
                "job_id": t.job.job_id,
                "tx_hash": t.job.position.tx_hash,
                "block_number": t.job.position.block_number,
                "deadline_ms": t.job.deadline_ms,
                "secret_id": t.job.secret_id,
                "running_s": round(now - t.started, 3),
            }
            for t in self._jobs.values()
            if t.task is not None and not t.task.done()
        ]

    async def follow(self, events: AsyncGenerator[StreamItem, None]) -> None:
        """Consume ``events`` until the node is deregistered (or the task is cancelled)."""
        if self.status is NodeStatus.IDLE:
            self.status = NodeStatus.AWAITING_REGISTRATION
        logger.info("following the chain for enclave %s (%s)", self._enclave, self.status.value)
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    self._handle_counted(event)
                    if self.status is NodeStatus.IDLE:
                        return
        finally:
            self.status = NodeStatus.IDLE

    def _handle_counted(self, event: StreamItem) -> None:
        health = self.health
        try:
            self.handle(event)
        except Exception as e:  # a bug must not stop the node from following the chain
            health.failures += 1
            health.consecutive_failures += 1
            health.last_error = f"{type(e).__name__}: {e}"[:200]
            log = logger.exception if health.healthy else logger.critical
            log(
                "failed to handle %s (%d consecutive failure(s))",
                event,
                health.consecutive_failures,
                exc_info=True,
            )
            return
        health.handled += 1
        health.consecutive_failures = 0

    def handle(self, event: StreamItem) -> None:
        """React to one stream item; never blocks and never raises for bad input."""
        if isinstance(event, NewHead):
            self._on_head(event)
        elif isinstance(event, LogRemoved):
            self._on_removed(event.event)
        elif isinstance(event, (JobCreated, JobResponded)):
            if event.position.address == self._jobs_contract:
                with job_label(event.job_id):  # log lines (and the job's task) carry the id
                    self._handle_job_event(event)
        elif event.position.address == self._tee_manager:
            self._handle_node_event(event)

    def _on_head(self, head: NewHead) -> None:
        self._watch.clock.observe(head.timestamp)
        self.health.head = head.number
        if head.number > self._head:
            self._head = head.number
            self._prune()

    def _prune(self) -> None:
        horizon = self._head - JOB_HORIZON_BLOCKS
        while self._jobs:
            key, tracked = next(iter(self._jobs.items()))
            if tracked.job.position.block_number >= horizon and len(self._jobs) <= MAX_TRACKED_JOBS:
                break
            self._drop(key)

    def _drop(self, key: JobKey) -> _Tracked | None:
        entry = self._jobs.pop(key, None)
        if self._current.get(key[0]) == key:
            del self._current[key[0]]
        return entry

    def _on_removed(self, event: ChainEvent) -> None:
        if isinstance(event, JobCreated):
            key = job_key(event)
            entry = self._drop(key)
            if entry is None:
                return
            task = entry.task
            self._watch.forget(event.job_id)
            cancelled = task is not None and not task.done()
            if cancelled:
                assert task is not None
                task.cancel()
            logger.warning(
                "job %d: JobCreated reorged out (block %s, tx %s): forgotten%s",
                event.job_id,
                event.position.block_hash,
                event.position.tx_hash,
                "; execution cancelled" if cancelled else "",
            )
        elif isinstance(event, JobResponded):
            logger.warning(
                "job %d: JobResponded of %s reorged out (tx %s): watching its timeout again",
                event.job_id,
                event.executor,
                event.position.tx_hash,
            )
            # Until the response is mined again the job may be incomplete: if it still is when
            # due, it is slashed (a needless slash is refused by the contract).
            current = self._current.get(event.job_id)
            if current is not None and self.status is NodeStatus.ACTIVE:
                self._watch_timeout(self._jobs[current].job)
        elif isinstance(event, TeeNodeRegistered) and event.enclave_address == self._enclave:
            logger.warning("our TeeNodeRegistered was reorged out: awaiting registration again")
            self.status = NodeStatus.AWAITING_REGISTRATION
            self._watch.clear()
        else:
            logger.warning("%s reorged out; ignored", type(event).__name__)

    def _handle_node_event(self, event: ChainEvent) -> None:
        if getattr(event, "enclave_address", None) != self._enclave:
            return
        if isinstance(event, TeeNodeRegistered):
            owner = self._owner()
            if owner is None or event.owner != owner:
                logger.warning(
                    "ignoring TeeNodeRegistered of this enclave by owner %s (configured owner: %s)",
                    event.owner,
                    owner,
                )
                return
            logger.info(
                "registered on chain (tx %s, job capacity %d): handling jobs",
                event.position.tx_hash,
                event.job_capacity,
            )
            self.status = NodeStatus.ACTIVE
        elif isinstance(event, TeeNodeDrained):
            logger.info("drained (tx %s): no new jobs; running set cleared", event.position.tx_hash)
            self.status = NodeStatus.DRAINED
            self._watch.clear()
        elif isinstance(event, TeeNodeRevived):
            logger.info("revived (tx %s): taking jobs again", event.position.tx_hash)
            if self.status is NodeStatus.DRAINED:
                self.status = NodeStatus.ACTIVE
        elif isinstance(event, TeeNodeDeregistered):
            logger.info("deregistered (tx %s): stopped listening for jobs", event.position.tx_hash)
            self._watch.clear()
            self.status = NodeStatus.IDLE

    def _handle_job_event(self, event: ChainEvent) -> None:
        if isinstance(event, JobResponded):
            self._watch.responded(event.job_id, event.output_count)
            return
        assert isinstance(event, JobCreated)
        if event.env != EXECUTOR_ENV or self.status is not NodeStatus.ACTIVE:
            return
        if event.position.block_timestamp is not None:
            self._watch.clock.observe(event.position.block_timestamp)
        key = job_key(event)
        if key in self._jobs:
            logger.warning(
                "job %d: JobCreated seen again (tx %s); ignored",
                event.job_id,
                event.position.tx_hash,
            )
            return
        previous = self._current.get(event.job_id)
        if previous is not None:
            # The listener retracts reorged logs first; this is a safety net for a node that
            # reports a job id twice without a retraction: the newer content wins.
            logger.warning(
                "job %d: a new JobCreated replaces the one in tx %s", event.job_id, previous[2]
            )
            old = self._drop(previous)
            if old is not None and old.task is not None:
                old.task.cancel()
            self._watch.forget(event.job_id)
        tracked = _Tracked(event)
        self._jobs[key] = tracked
        self._current[event.job_id] = key
        self._prune()
        self._watch_timeout(event)
        if self._enclave not in event.selected_executors:
            logger.debug("job %d: not selected; watching its timeout", event.job_id)
            return
        if event.job_id in self._answered:
            logger.info("job %d: already answered by this enclave (before a restart)", event.job_id)
            return
        if not self.accepting:
            logger.warning("job %d: shutting down, not executed", event.job_id)
            return
        if self._window_closed(event):
            logger.warning(
                "job %d: its output window closed before it was seen; not executed", event.job_id
            )
            return
        logger.info("job %d: selected (tx %s); executing", event.job_id, event.position.tx_hash)
        tracked.started = time.monotonic()
        tracked.task = self._tasks.spawn(self._run_job(event), name=f"job-{event.job_id}")

    def job_owner(self, job_id: int) -> str | None:
        """The owner of ``job_id`` as its JobCreated said (None if unknown)."""
        key = self._current.get(job_id)
        tracked = self._jobs.get(key) if key is not None else None
        return None if tracked is None else tracked.job.job_owner

    async def own_output(self, job_id: int) -> bool | None:
        """Whether this node's output of ``job_id`` landed: None when it was not selected (or
        the job is unknown), else waits for the job's execution to end and says whether its
        output was mined (a job answered before a restart counts as answered)."""
        if job_id in self._answered:
            return True
        key = self._current.get(job_id)
        tracked = self._jobs.get(key) if key is not None else None
        if tracked is None or self._enclave not in tracked.job.selected_executors:
            return None
        task = tracked.task
        if task is None:
            return False  # selected but not executed (drained, shutting down, window closed)
        try:
            sent = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                return False
            raise
        except Exception:
            return False
        return bool(getattr(sent, "mined", False))

    def _watch_timeout(self, job: JobCreated) -> None:
        self._watch.start(
            job.job_id,
            job.deadline_ms,
            job.position.block_timestamp,
            selected=len(job.selected_executors),
        )

    def _window_closed(self, job: JobCreated) -> bool:
        # due_in_s is 1 s past the window's close: closed when less than that remains.
        return self._watch.due_in_s(job.deadline_ms, job.position.block_timestamp) < 1.0
