"""One job from its JobCreated event to a signed output on chain, and the slash of a late one.

``JobRunner.run`` fetches the code, executes it in the sandbox and submits exactly one signed
``JobOutcome``; failures that the protocol has no error code for are logged and produce no
submission (the timeout watch of some executor then settles the job). ``Slasher`` sends the slash of
a job that the timeout watch (``executor.node``) found incomplete when its window closed.

Both send through the ``TxManager``. An output's window is the contract's, in chain time. Every
slash, and every output whose job owner holds code, is estimated on its exact calldata (the
production contract calls the job owner's callback with all the gas left, so its cost is the
owner's to decide): the limit is a margin over the estimate, at least the calldata bound of
``submit_output_gas_bound`` and at most the operator's ``max_job_gas``; a job whose callback needs
more is not answered, and logged once at ERROR. An output whose owner holds no code (an account:
its callback runs nothing) goes without an estimate once the manager has learned what outputs to
the contract cost (``TxManager`` docstring); ``run`` starts reading the owner's code as the job
starts, alongside the code fetch and the execution, so that it is known by the output. A
contract's refusal of an output then shows in its receipt rather than at a pre-check: it is logged
the same way (with its tx). A slash already settled by another executor costs nothing and ends at
once; only "not due yet" is retried.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from executor.chain.code import CodeFetcher
from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow import JobCreated
from executor.chain.jobs_contract import (
    Refusal,
    classify_revert,
    failure_callback_calldata,
    result_callback_calldata,
    sign_output,
    slash_calldata,
    submit_output_calldata,
    submit_output_gas_bound,
)
from executor.chain.transactions import DEFAULT_GAS_CEILING, TxManager, TxOutcome, TxStatus
from executor.errors import ChainError, SandboxError
from executor.logs import job_label
from executor.metrics import NO_METRICS, Metrics
from executor.outcome import ErrorCode, JobOutcome

logger = logging.getLogger(__name__)

SLASH_RETRY_S = 20.0
"""A slash refused as "not due yet" is retried for about 20 s of chain time.

docs/protocol.md §3."""
SLASHED_KEPT = 256
SLASH_GAS_FLOOR = 300_000
"""The least gas a slash is sent with: production's stake transfers, and the floor under the job
owner's failure callback when it is estimated separately (see ``TxManager.submit``)."""
SLASH_RETRY_INTERVAL_S = 1.0
"""Between retries of a slash that is not due: the next block, or this long at most."""


ExecuteFn = Callable[..., Awaitable[JobOutcome]]
"""``Sandbox.execute``: (code, inputs, *, deadline_ms, secret_id, label) -> JobOutcome."""


@dataclass(frozen=True)
class JobContext:
    """What the runner needs to know about the chain side."""

    jobs_contract: str
    execution_buffer_time_s: int
    max_job_gas: int = DEFAULT_GAS_CEILING
    """The most gas one output (or slash) may be given: the operator's ``max_job_gas``."""


class JobClock:
    """One clock per job, started when the job is seen: ``totalTime`` for every error code."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)


class JobRunner:
    def __init__(
        self,
        *,
        key: EnclaveKey,
        fetcher: CodeFetcher,
        execute: ExecuteFn,
        txm: TxManager,
        context: JobContext,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._key = key
        self._fetcher = fetcher
        self._execute = execute
        self._txm = txm
        self._ctx = context
        self._metrics = metrics

    def output_window_end(self, job: JobCreated) -> float:
        """Chain time (s) after which the contract refuses the job's output (docs/protocol.md §2):
        ``execStartTime + deadline/1000 + executionBufferTime``."""
        start = job.position.block_timestamp
        if start is None:  # the node omitted the log's block timestamp: it started now
            start = int(self._txm.chain_now())
        return start + job.deadline_ms / 1000 + self._ctx.execution_buffer_time_s

    async def run(self, job: JobCreated) -> TxOutcome | None:
        """Execute ``job`` and submit its outcome; None if no submission was made.

        The one place that labels and times a job: every line logged meanwhile (here, in the
        sandbox, in the transaction manager) carries the job id, and the job ends in one summary
        line (id, error code, time, tx hash) and one duration sample. Cancelling it (a reorg
        removed the job) withdraws an output still pending.
        """
        with job_label(job.job_id):
            clock = JobClock()
            label = f"job {job.job_id}"
            # Known by the output, whether the owner holds code decides whether it needs an
            # estimate; the read is the manager's (shared, ended by its close), not this job's.
            self._txm.note_owner(job.job_owner)
            valid_until = self.output_window_end(job)
            try:
                outcome = await self._outcome(job, clock)
            except (ChainError, SandboxError) as e:
                logger.error("%s: not executed: %s", label, e)
                reason = e.reason if isinstance(e, SandboxError) else "not_executed"
                self._metrics.job_not_submitted(reason)
                self._summary(label, None, None, clock)
                return None
            self._metrics.job_outcome(outcome.error_code)
            logger.debug("%s: outcome %d, %dB", label, outcome.error_code, len(outcome.output))
            sent = await self.submit(
                job.job_id, outcome, valid_until=valid_until, owner=job.job_owner
            )
            if not sent.mined:
                self._metrics.job_not_submitted(sent.status.value)
            self._summary(label, outcome, sent, clock)
            return sent

    def _summary(
        self, label: str, outcome: JobOutcome | None, sent: TxOutcome | None, clock: JobClock
    ) -> None:
        elapsed_s = clock.elapsed_ms() / 1000
        self._metrics.job_finished(elapsed_s)
        if outcome is None:
            logger.warning("%s: done in %.2fs: NOT executed, no output submitted", label, elapsed_s)
        elif sent is None or not sent.mined:
            logger.warning(
                "%s: done in %.2fs: error_code=%d (%s) total_time=%dms, output NOT accepted (%s)",
                label,
                elapsed_s,
                outcome.error_code,
                outcome.error_code.name,
                outcome.total_time_ms,
                sent.status.value if sent is not None else "not sent",
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

    async def _outcome(self, job: JobCreated, clock: JobClock) -> JobOutcome:
        fetched = await self._fetcher.fetch(job.codehash)
        if fetched.error is not None:
            return JobOutcome.failed(fetched.error, clock.elapsed_ms())
        outcome = await self._execute(
            fetched.code,
            job.code_inputs,
            deadline_ms=job.deadline_ms,
            secret_id=job.secret_id,
            label=str(job.job_id),
        )
        if outcome.error_code == ErrorCode.DEADLINE_EXCEEDED:
            return outcome  # totalTime = deadline (docs/protocol.md §3)
        return dataclasses.replace(outcome, total_time_ms=clock.elapsed_ms())

    async def submit(
        self, job_id: int, outcome: JobOutcome, *, valid_until: float, owner: str | None = None
    ) -> TxOutcome:
        """Sign ``outcome`` and send it; ``valid_until`` is the window's end in chain time;
        ``owner`` (the job owner, whose callback the contract calls) is named in the log line of
        a job too costly to answer."""
        label = f"job {job_id} submitOutput"
        sign_timestamp = int(self._txm.chain_now())
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
        sent = await self._txm.submit(
            self._ctx.jobs_contract,
            data,
            kind="output",
            job_id=job_id,
            valid_until=valid_until,
            gas_floor=submit_output_gas_bound(data),
            gas_ceiling=self._ctx.max_job_gas,
            callback=None
            if owner is None
            else (
                owner,
                result_callback_calldata(
                    job_id, outcome.output, int(outcome.error_code), outcome.total_time_ms
                ),
            ),
        )
        if sent.mined:
            logger.debug(
                "%s: accepted in tx %s (nonce %s, block %s)",
                label,
                sent.tx_hash,
                sent.nonce,
                sent.block_number,
            )
        elif sent.status is TxStatus.OVER_CEILING:
            logger.error(
                "%s: NOT answered: job owner %s's callback makes the output need %s gas, above "
                "this node's max_job_gas=%d (raise it to answer such jobs)",
                label,
                owner or "(unknown)",
                sent.gas_needed,
                self._ctx.max_job_gas,
            )
        elif sent.status is TxStatus.REVERTED:
            reason = classify_revert(sent.revert_data)
            log = logger.info if reason.refusal is Refusal.SETTLED else logger.error
            if sent.tx_hash is None:
                log("%s: refused by the contract at the estimate (nothing sent): %s", label, reason)
            else:  # sent without an estimate (learned limit): the receipt tells
                log(
                    "%s: refused by the contract on chain: tx %s reverted in block %s (gas used "
                    "%s of %s): %s",
                    label,
                    sent.tx_hash,
                    sent.block_number,
                    sent.gas_used,
                    sent.gas_limit,
                    reason,
                )
        else:
            logger.error("%s: output not delivered (%s): %s", label, sent.status.value, sent.detail)
        return sent


class Slasher:
    """Sends ``slashOnExecutionTimeout`` for a job found incomplete when its window closed."""

    def __init__(
        self, *, txm: TxManager, jobs_contract: str, max_job_gas: int = DEFAULT_GAS_CEILING
    ) -> None:
        self._txm = txm
        self._jobs_contract = jobs_contract
        self._max_job_gas = max_job_gas

    async def slash(self, job_id: int, owner: str | None = None) -> TxOutcome:
        """Slash ``job_id``; retried only while the contract says "not due yet". A job already
        settled (slashed by another node, or complete) ends at once, at INFO. ``owner``, the job
        owner, gets the contract's failure callback: its gas is estimated too."""
        label = f"job {job_id} slashOnExecutionTimeout"
        give_up = self._txm.chain_now() + SLASH_RETRY_S
        while True:
            sent = await self._txm.submit(
                self._jobs_contract,
                slash_calldata(job_id),
                kind="slash",
                job_id=job_id,
                valid_until=give_up,
                gas_floor=SLASH_GAS_FLOOR,
                gas_ceiling=self._max_job_gas,
                callback=None if owner is None else (owner, failure_callback_calldata(job_id)),
            )
            if sent.mined:
                logger.info("%s: slashed in tx %s (nonce %s)", label, sent.tx_hash, sent.nonce)
                return sent
            if sent.status is TxStatus.OVER_CEILING:
                logger.error(
                    "%s: not sent: it needs %s gas (the job owner's failure callback), above "
                    "max_job_gas=%d",
                    label,
                    sent.gas_needed,
                    self._max_job_gas,
                )
                return sent
            if sent.status is TxStatus.EXPIRED:
                logger.warning("%s: still not due after %.0fs; given up", label, SLASH_RETRY_S)
                return sent
            if sent.status is not TxStatus.REVERTED:
                logger.error("%s: not slashed (%s): %s", label, sent.status.value, sent.detail)
                return sent
            reason = classify_revert(sent.revert_data)
            if reason.refusal.retryable and self._txm.chain_now() < give_up:
                await self._txm.wait_for_block(SLASH_RETRY_INTERVAL_S)
                continue
            if reason.refusal is Refusal.SETTLED:
                logger.info("%s: nothing to do: %s", label, reason)
            else:
                logger.warning("%s: refused by the contract: %s", label, reason)
            return sent
