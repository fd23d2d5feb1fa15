"""The executor service: the chain-facing parts wired together, and the admin API's backend.

It owns the operator's injected config (owner, gas key, ws API key), the transaction manager, the
job runner, the timeout watch and the chain follower, and starts following the chain when the
signed registration message is requested (docs/protocol.md §6). A daemon restarted inside the same
enclave reads its own record on chain at that moment and resumes (docs/restart.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from executor import redact
from executor.admin.secret_store import SecretStoreClient
from executor.chain.code import CodeCache, CodeFetcher
from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow import (
    JOB_EVENTS,
    JOB_LOOKBACK_BLOCKS,
    NODE_EVENTS,
    ChainEvent,
    LogStream,
    TeeNodeDrained,
    TeeNodeRegistered,
    TeeNodeRevived,
    read_node_record,
)
from executor.chain.transactions import TxManager
from executor.config import Settings
from executor.errors import ChainError
from executor.jobs import ExecuteFn, JobContext, JobRunner, Slasher
from executor.metrics import NO_METRICS, Metrics
from executor.node import ChainFollower, NodeStatus, TimeoutWatch
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)


class ExecutorService:
    def __init__(
        self,
        *,
        settings: Settings,
        key: EnclaveKey,
        w3: AsyncWeb3,
        clients: Sequence[AsyncWeb3] = (),
        execute: ExecuteFn,
        job_capacity: int,
        secret_store: SecretStoreClient | None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.key = key
        self.job_capacity = job_capacity
        self.secret_store = secret_store
        self.owner: str | None = None
        self.gas_account: LocalAccount | None = None
        self._ws_api_key = ""
        self._w3 = w3
        self._clients = tuple(clients) or (w3,)
        self.txm = TxManager(w3, self._clients, settings.common_chain_id, metrics=metrics)
        self.executions = TaskSet("jobs")
        self._timers = TaskSet("timeouts")
        self._following = TaskSet("follow")
        self._stream: LogStream | None = None
        self._slasher = Slasher(txm=self.txm, jobs_contract=settings.jobs_contract_addr)
        self.watch = TimeoutWatch(
            slash=self._slash,
            execution_buffer_time_s=settings.execution_buffer_time,
            num_selected_executors=settings.num_selected_executors,
            tasks=self._timers,
        )
        self.runner = JobRunner(
            key=key,
            # One client per endpoint: an endpoint whose answer fails verification is not
            # believed, the next one is asked.
            fetcher=CodeFetcher(self._clients, settings.code_contract_addr, CodeCache()),
            execute=execute,
            txm=self.txm,
            context=JobContext(settings.jobs_contract_addr, settings.execution_buffer_time),
            metrics=metrics,
        )
        self.follower = ChainFollower(
            enclave_address=key.address,
            owner=lambda: self.owner,
            tee_manager=settings.tee_manager_contract_addr,
            jobs_contract=settings.jobs_contract_addr,
            run_job=self.runner.run,
            watch=self.watch,
            tasks=self.executions,
        )

    # --- the admin API's backend -------------------------------------------------------------

    def ws_rpc_url(self) -> str:
        return self.settings.ws_url_with_key(self._ws_api_key)

    def ws_rpc_urls(self) -> tuple[str, ...]:
        return self.settings.ws_urls_with_key(self._ws_api_key)

    def set_owner(self, owner: str) -> None:
        self.owner = owner

    def set_mutable_config(self, gas_account: LocalAccount, ws_api_key: str) -> None:
        redact.register_secret(bytes(gas_account.key).hex())
        redact.register_secret(ws_api_key)
        self.gas_account = gas_account
        self.txm.set_account(gas_account)
        key_changed = ws_api_key != self._ws_api_key
        self._ws_api_key = ws_api_key
        if key_changed and self._stream is not None:
            logger.info("ws API key rotated: reconnecting the event stream")
            self._stream.reconnect()

    async def start_following(self) -> None:
        if len(self._following):
            return
        await self.txm.start()
        s = self.settings
        try:
            head = int(await self._w3.eth.block_number)
            record = await read_node_record(
                self._w3,
                tee_manager=s.tee_manager_contract_addr,
                jobs_contract=s.jobs_contract_addr,
                enclave=self.key.address,
                head=head,
            )
        except (Web3Exception, OSError, TimeoutError) as e:
            raise ChainError(f"cannot read the chain to start listening: {e}") from e
        status = self._resumed_status(record.last_event)
        from_block = head
        if status is not NodeStatus.AWAITING_REGISTRATION and record.last_event is not None:
            # Restarted while registered: re-read the jobs created while the daemon was down.
            from_block = max(
                record.last_event.position.block_number + 1, head - JOB_LOOKBACK_BLOCKS
            )
            logger.info(
                "resuming as %s from block %d (latest node event %s in block %d; "
                "%d recent job(s) already answered by this enclave)",
                status.value,
                from_block,
                type(record.last_event).__name__,
                record.last_event.position.block_number,
                len(record.answered),
            )
            self.follower.resume(status, record.answered)
        else:
            logger.info("listening for this node's registration from block %d", from_block)
        self._stream = LogStream(
            ws_urls=self.ws_rpc_urls,
            w3=self._w3,
            addresses=[s.tee_manager_contract_addr, s.jobs_contract_addr],
            topics=[["0x" + e.topic0().hex() for e in NODE_EVENTS + JOB_EVENTS]],
            from_block=from_block,
            name="chain",
            metrics=self.metrics,
        )
        self._following.spawn(self.follower.follow(self._stream.events()), name="follower")

    def _resumed_status(self, last: ChainEvent | None) -> NodeStatus:
        if isinstance(last, TeeNodeRegistered):
            if last.owner == self.owner:
                return NodeStatus.ACTIVE
            logger.warning(
                "this enclave is registered on chain by owner %s, not the configured owner %s",
                last.owner,
                self.owner,
            )
        elif isinstance(last, TeeNodeRevived):
            return NodeStatus.ACTIVE
        elif isinstance(last, TeeNodeDrained):
            return NodeStatus.DRAINED
        return NodeStatus.AWAITING_REGISTRATION

    async def _slash(self, job_id: int) -> bool:
        return (await self._slasher.slash(job_id)).mined

    # --- jobs and health -------------------------------------------------------------------------

    @property
    def status(self) -> NodeStatus:
        return self.follower.status

    def health(self) -> dict[str, Any]:
        """A small summary for the admin API's ``GET /`` (operator tools check the status only)."""
        return {
            "status": self.status.value,
            "stream": self._stream.health.as_dict() if self._stream is not None else None,
            "follower": self.follower.health.as_dict(),
            "running_jobs": len(self.watch.running),
            "executions": len(self.executions),
        }

    # --- shutdown --------------------------------------------------------------------------------

    async def close(self, grace_s: float, force: asyncio.Event | None = None) -> None:
        """Stop taking jobs, let running ones finish within ``grace_s`` (or until ``force``
        is set), then cancel what is left."""
        self.follower.accepting = False
        await self._following.cancel_all()
        if len(self.executions):
            logger.info("waiting up to %.0fs for %d running job(s)", grace_s, len(self.executions))
            if not await self.executions.wait(grace_s, interrupt=force):
                logger.warning("cancelling %d job(s) still running", len(self.executions))
        # Before the jobs are cancelled: a shutdown leaves their pending outputs in the pool
        # (they may still land) instead of withdrawing them as a cancellation would.
        await self.txm.close()
        await self.executions.cancel_all()
        await self._timers.cancel_all()
