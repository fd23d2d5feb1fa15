"""The node's on-chain life: follow its registration state and dispatch job events.

``ChainFollower.follow`` consumes one ordered event stream (TeeManager node events + Jobs events)
and reacts as docs/protocol.md §3 says:

* ``TeeNodeRegistered`` for this enclave and its owner: start handling jobs;
* ``TeeNodeDrained``: stop taking new jobs and forget the running set; ``TeeNodeRevived``: resume;
* ``TeeNodeDeregistered``: stop following (a new registration message starts again);
* ``JobCreated`` (env 1, while active): start the timeout watch; execute when selected;
* ``JobResponded``: complete the job once every selected executor answered.

Handlers never block: executions run as tasks, so a slow job never delays the stream.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from executor.chain.events import (
    ChainEvent,
    JobCreated,
    JobResponded,
    TeeNodeDeregistered,
    TeeNodeDrained,
    TeeNodeRegistered,
    TeeNodeRevived,
)
from executor.jobs import TimeoutWatch
from executor.logs import job_label
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)

EXECUTOR_ENV = 1
"""The execution environment id of this executor (docs/protocol.md §3)."""


class NodeStatus(enum.Enum):
    IDLE = "idle"  # not following the chain (never registered, or deregistered)
    AWAITING_REGISTRATION = "awaiting-registration"
    ACTIVE = "active"
    DRAINED = "drained"


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
        self._seen_jobs: set[int] = set()
        self.status = NodeStatus.IDLE
        self.accepting = True
        """False once the daemon is shutting down: no new executions start."""

    async def follow(self, events: AsyncGenerator[ChainEvent, None]) -> None:
        """Consume ``events`` until the node is deregistered (or the task is cancelled)."""
        self.status = NodeStatus.AWAITING_REGISTRATION
        logger.info("waiting for TeeNodeRegistered of enclave %s", self._enclave)
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    try:
                        self.handle(event)
                    except Exception:  # a bug must not stop the node from following the chain
                        logger.exception("failed to handle %s", event)
                    if self.status is NodeStatus.IDLE:
                        return
        finally:
            self.status = NodeStatus.IDLE

    def handle(self, event: ChainEvent) -> None:
        """React to one event; never blocks and never raises for bad input."""
        if isinstance(event, (JobCreated, JobResponded)):
            if event.position.address == self._jobs_contract:
                with job_label(event.job_id):  # log lines (and the job's task) carry the id
                    self._handle_job_event(event)
        elif event.position.address == self._tee_manager:
            self._handle_node_event(event)

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
        if event.job_id in self._seen_jobs:
            logger.warning(
                "job %d: JobCreated seen again (tx %s); ignored",
                event.job_id,
                event.position.tx_hash,
            )
            return
        self._seen_jobs.add(event.job_id)
        self._watch.start(event.job_id, event.deadline_ms)
        if self._enclave not in event.selected_executors:
            logger.debug("job %d: not selected; watching its timeout", event.job_id)
            return
        if not self.accepting:
            logger.warning("job %d: shutting down, not executed", event.job_id)
            return
        logger.info("job %d: selected (tx %s); executing", event.job_id, event.position.tx_hash)
        self._tasks.spawn(self._run_job(event), name=f"job-{event.job_id}")
