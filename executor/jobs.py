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

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from executor.chain.code import CodeFetcher
from executor.chain.events import JobCreated
from executor.chain.signer import EnclaveKey
from executor.chain.txs import NoGasKeyError, SentTx, TxRejected, TxSender
from executor.errors import ChainError, SandboxError
from executor.logs import job_label
from executor.metrics import NO_METRICS, Metrics
from executor.outcome import JobOutcome
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)

SUBMIT_OUTPUT_SELECTOR = function_signature_to_4byte_selector(
    "submitOutput(bytes,uint256,bytes,uint256,uint8,uint256)"
)
SLASH_SELECTOR = function_signature_to_4byte_selector("slashOnExecutionTimeout(uint256)")
SLASH_RETRY_S = 20.0
"""Timeout transactions are retried for about 20 s (docs/protocol.md §3)."""
MIN_SUBMIT_WINDOW_S = 5.0


def submit_output_calldata(
    signature: bytes, job_id: int, outcome: JobOutcome, sign_timestamp: int
) -> bytes:
    return SUBMIT_OUTPUT_SELECTOR + encode(
        ["bytes", "uint256", "bytes", "uint256", "uint8", "uint256"],
        [
            signature,
            job_id,
            outcome.output,
            outcome.total_time_ms,
            int(outcome.error_code),
            sign_timestamp,
        ],
    )


def slash_calldata(job_id: int) -> bytes:
    return SLASH_SELECTOR + encode(["uint256"], [job_id])


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
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._key = key
        self._fetcher = fetcher
        self._execute = execute
        self._sender = sender
        self._ctx = context
        self._metrics = metrics

    async def run(self, job: JobCreated) -> SentTx | None:
        """Execute ``job`` and submit its outcome; returns the submission, None if none was made.

        The one place that labels and times a job: every line logged meanwhile (here, in the
        sandbox, in the transaction sender) carries the job id, and the job ends in one summary
        line (id, error code, time, tx hash) and one duration sample.
        """
        with job_label(job.job_id):
            seen = time.monotonic()
            label = f"job {job.job_id}"
            try:
                outcome = await self._outcome(job, label)
            except (ChainError, SandboxError) as e:
                logger.error("%s: not executed: %s", label, e)
                self._metrics.job_not_submitted("not_executed")
                self._summary(label, None, None, seen)
                return None
            self._metrics.job_outcome(outcome.error_code)
            logger.debug("%s: outcome %d, %dB", label, outcome.error_code, len(outcome.output))
            window_s = job.deadline_ms / 1000 + self._ctx.execution_buffer_time_s
            remaining = max(MIN_SUBMIT_WINDOW_S, window_s - (time.monotonic() - seen))
            sent = await self.submit(job.job_id, outcome, timeout_s=remaining)
            self._summary(label, outcome, sent, seen)
            return sent

    def _summary(
        self, label: str, outcome: JobOutcome | None, sent: SentTx | None, seen: float
    ) -> None:
        elapsed_s = time.monotonic() - seen
        self._metrics.job_finished(elapsed_s)
        if outcome is None:
            logger.warning("%s: done in %.2fs: NOT executed, no output submitted", label, elapsed_s)
        elif sent is None:
            logger.warning(
                "%s: done in %.2fs: error_code=%d (%s) total_time=%dms, output NOT submitted",
                label,
                elapsed_s,
                outcome.error_code,
                outcome.error_code.name,
                outcome.total_time_ms,
            )
        else:
            logger.info(
                "%s: done in %.2fs: error_code=%d (%s) total_time=%dms output=%dB tx %s",
                label,
                elapsed_s,
                outcome.error_code,
                outcome.error_code.name,
                outcome.total_time_ms,
                len(outcome.output),
                sent.tx_hash,
            )

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
        signature = self._key.sign_output(
            job_id,
            outcome.output,
            outcome.total_time_ms,
            int(outcome.error_code),
            sign_timestamp,
        )
        data = submit_output_calldata(signature, job_id, outcome, sign_timestamp)
        try:
            sent = await self._sender.send(
                self._ctx.jobs_contract, data, label=label, timeout_s=timeout_s
            )
        except TxRejected as e:
            logger.error("%s: %s", label, e)
            self._metrics.transaction("output", "rejected")
            self._metrics.job_not_submitted("rejected")
            return None
        except ChainError as e:
            logger.error("%s: output not delivered: %s", label, e)
            no_key = isinstance(e, NoGasKeyError)
            self._metrics.transaction("output", "no_gas_key" if no_key else "failed")
            self._metrics.job_not_submitted("no_gas_key" if no_key else "not_delivered")
            return None
        logger.debug("%s: accepted in tx %s (block %d)", label, sent.tx_hash, sent.block_number)
        self._metrics.transaction("output", "mined")
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
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
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
        with job_label(job_id):
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
                    self._metrics.transaction("slash", "rejected")
                    return None
                await asyncio.sleep(1.0)
                continue
            except ChainError as e:
                logger.error("%s: failed: %s", label, e)
                self._metrics.transaction("slash", "failed")
                return None
            logger.info("%s: slashed in tx %s", label, sent.tx_hash)
            self._metrics.transaction("slash", "mined")
            self.slashed.append(job_id)
            return sent
