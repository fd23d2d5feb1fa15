"""One job from its JobCreated event to a signed output on chain, and the timeout watch.

``JobRunner.run`` fetches the code, executes it in the sandbox and submits exactly one signed
``JobOutcome``; failures that the protocol has no error code for are logged and produce no
submission (the timeout watch of some executor then settles the job). ``TimeoutWatch`` keeps the
running set: every env-1 job starts a timer, a JobResponded with the full output count completes it,
and a job still incomplete when its timer fires is slashed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from executor.chain.code import CodeFetcher
from executor.chain.events import JobCreated
from executor.chain.jobs_contract import sign_output, slash_calldata, submit_output_calldata
from executor.chain.signer import EnclaveKey
from executor.chain.txs import SentTx, TxRejected, TxSender
from executor.errors import ChainError, SandboxError
from executor.outcome import JobOutcome
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)

SLASH_RETRY_S = 20.0
"""Timeout transactions are retried for about 20 s (PROTOCOL §3)."""
MIN_SUBMIT_WINDOW_S = 5.0


ExecuteFn = Callable[..., Awaitable[JobOutcome]]
"""``Sandbox.execute``: (code, inputs, *, deadline_ms, secret_id, label) -> JobOutcome."""


@dataclass(frozen=True)
class JobContext:
    """What the runner needs to know about the chain side."""

    jobs_contract: str
    execution_buffer_time_s: int


class JobRunner:
    def __init__(
        self,
        *,
        key: EnclaveKey,
        fetcher: CodeFetcher,
        execute: ExecuteFn,
        sender: TxSender,
        context: JobContext,
    ) -> None:
        self._key = key
        self._fetcher = fetcher
        self._execute = execute
        self._sender = sender
        self._ctx = context

    async def run(self, job: JobCreated) -> SentTx | None:
        """Execute ``job`` and submit its outcome; returns the submission, None if none was made."""
        seen = time.monotonic()
        label = f"job {job.job_id}"
        try:
            outcome = await self._outcome(job, label)
        except (ChainError, SandboxError) as e:
            logger.error("%s: not executed, no output submitted: %s", label, e)
            return None
        logger.info(
            "%s: outcome error_code=%d (%s) output=%dB total_time=%dms",
            label,
            outcome.error_code,
            outcome.error_code.name,
            len(outcome.output),
            outcome.total_time_ms,
        )
        window_s = job.deadline_ms / 1000 + self._ctx.execution_buffer_time_s
        remaining = max(MIN_SUBMIT_WINDOW_S, window_s - (time.monotonic() - seen))
        return await self.submit(job.job_id, outcome, timeout_s=remaining)

    async def _outcome(self, job: JobCreated, label: str) -> JobOutcome:
        started = time.monotonic()
        fetched = await self._fetcher.fetch(job.codehash)
        if fetched.error is not None:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            return JobOutcome.failed(fetched.error, elapsed_ms)
        return await self._execute(
            fetched.code,
            job.code_inputs,
            deadline_ms=job.deadline_ms,
            secret_id=job.secret_id,
            label=str(job.job_id),
        )

    async def submit(self, job_id: int, outcome: JobOutcome, *, timeout_s: float) -> SentTx | None:
        label = f"job {job_id} submitOutput"
        sign_timestamp = int(time.time())
        signature = sign_output(
            self._key,
            job_id,
            outcome.output,
            outcome.total_time_ms,
            int(outcome.error_code),
            sign_timestamp,
        )
        data = submit_output_calldata(
            signature,
            job_id,
            outcome.output,
            outcome.total_time_ms,
            int(outcome.error_code),
            sign_timestamp,
        )
        try:
            sent = await self._sender.send(
                self._ctx.jobs_contract, data, label=label, timeout_s=timeout_s
            )
        except TxRejected as e:
            logger.error("%s: %s", label, e)
            return None
        except ChainError as e:
            logger.error("%s: output not delivered: %s", label, e)
            return None
        logger.info("%s: accepted in tx %s (block %d)", label, sent.tx_hash, sent.block_number)
        return sent


class TimeoutWatch:
    """The running set: slash every env-1 job that is not complete in time."""

    def __init__(
        self,
        *,
        sender: TxSender,
        jobs_contract: str,
        execution_buffer_time_s: int,
        num_selected_executors: int,
        tasks: TaskSet,
    ) -> None:
        self._sender = sender
        self._jobs_contract = jobs_contract
        self._buffer_ms = execution_buffer_time_s * 1000
        self._num_selected = num_selected_executors
        self._tasks = tasks
        self._timers: dict[int, asyncio.Task[None]] = {}
        self.slashed: list[int] = []

    @property
    def running(self) -> frozenset[int]:
        return frozenset(self._timers)

    def start(self, job_id: int, deadline_ms: int) -> None:
        if job_id in self._timers:
            return
        delay_s = (deadline_ms + self._buffer_ms + 1000) / 1000
        self._timers[job_id] = self._tasks.spawn(
            self._fire_after(job_id, delay_s), name=f"timeout-{job_id}"
        )

    def responded(self, job_id: int, output_count: int) -> None:
        if output_count >= self._num_selected:
            self._forget(job_id)

    def clear(self) -> None:
        """Forget every running job (the node was drained)."""
        for job_id in list(self._timers):
            self._forget(job_id)

    def _forget(self, job_id: int) -> None:
        timer = self._timers.pop(job_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _fire_after(self, job_id: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._timers.pop(job_id, None)
        await self.slash(job_id)

    async def slash(self, job_id: int) -> SentTx | None:
        label = f"job {job_id} slashOnExecutionTimeout"
        give_up = time.monotonic() + SLASH_RETRY_S
        while True:
            try:
                sent = await self._sender.send(
                    self._jobs_contract,
                    slash_calldata(job_id),
                    label=label,
                    timeout_s=max(1.0, give_up - time.monotonic()),
                )
            except TxRejected as e:
                # Chain time may lag ours ("deadline not over"); or someone already slashed it.
                if time.monotonic() + 1.0 >= give_up:
                    logger.info("%s: not slashed: %s", label, e.reason)
                    return None
                await asyncio.sleep(1.0)
                continue
            except ChainError as e:
                logger.error("%s: failed: %s", label, e)
                return None
            logger.info("%s: slashed in tx %s", label, sent.tx_hash)
            self.slashed.append(job_id)
            return sent
