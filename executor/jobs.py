"""One job from its JobCreated event to a signed output on chain, and the slash of a late one.

``JobRunner.run`` fetches the code, executes it in the sandbox and submits exactly one signed
``JobOutcome``; failures that the protocol has no error code for are logged and produce no
submission (the timeout watch of some executor then settles the job). ``Slasher`` sends the slash of
a job that the timeout watch (``executor.node``) found incomplete when its window closed.
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
from executor.chain.txs import SentTx, TxRejected, TxSender
from executor.errors import ChainError, SandboxError
from executor.outcome import JobOutcome

logger = logging.getLogger(__name__)

SUBMIT_OUTPUT_SELECTOR = function_signature_to_4byte_selector(
    "submitOutput(bytes,uint256,bytes,uint256,uint8,uint256)"
)
SLASH_SELECTOR = function_signature_to_4byte_selector("slashOnExecutionTimeout(uint256)")
SLASH_RETRY_S = 20.0
"""Timeout transactions are retried for about 20 s (PROTOCOL §3)."""
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
            return None
        except ChainError as e:
            logger.error("%s: output not delivered: %s", label, e)
            return None
        logger.info("%s: accepted in tx %s (block %d)", label, sent.tx_hash, sent.block_number)
        return sent


class Slasher:
    """Sends ``slashOnExecutionTimeout`` for a job the timeout watch (``executor.node``) found
    incomplete when its window closed."""

    def __init__(self, *, sender: TxSender, jobs_contract: str) -> None:
        self._sender = sender
        self._jobs_contract = jobs_contract

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
            return sent
