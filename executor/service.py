"""The executor service: the chain-facing parts wired together, and the admin API's backend.

It owns the operator's injected config (owner, gas key, ws API key), the transaction sender, the
job runner, the timeout watch and the chain follower, and starts following the chain when the
signed registration message is requested (docs/protocol.md §6).
"""

from __future__ import annotations

import asyncio
import logging

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from executor import redact
from executor.admin.secret_store import SecretStoreClient
from executor.chain.code import CodeFetcher
from executor.chain.events import JOB_EVENTS, NODE_EVENTS
from executor.chain.listener import LogStream
from executor.chain.signer import EnclaveKey
from executor.chain.txs import TxSender
from executor.config import Settings
from executor.errors import ChainError
from executor.jobs import ExecuteFn, JobContext, JobRunner, TimeoutWatch
from executor.metrics import NO_METRICS, Metrics
from executor.node import ChainFollower, NodeStatus
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)


class ExecutorService:
    def __init__(
        self,
        *,
        settings: Settings,
        key: EnclaveKey,
        w3: AsyncWeb3,
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
        self.sender = TxSender(w3, settings.common_chain_id)
        self.executions = TaskSet("jobs")
        self._timers = TaskSet("timeouts")
        self._following = TaskSet("follow")
        self._stream: LogStream | None = None
        self.watch = TimeoutWatch(
            sender=self.sender,
            jobs_contract=settings.jobs_contract_addr,
            execution_buffer_time_s=settings.execution_buffer_time,
            num_selected_executors=settings.num_selected_executors,
            tasks=self._timers,
            metrics=metrics,
        )
        self.runner = JobRunner(
            key=key,
            fetcher=CodeFetcher(w3, settings.code_contract_addr),
            execute=execute,
            sender=self.sender,
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

    def set_owner(self, owner: str) -> None:
        self.owner = owner

    def set_mutable_config(self, gas_account: LocalAccount, ws_api_key: str) -> None:
        redact.register_secret(bytes(gas_account.key).hex())
        redact.register_secret(ws_api_key)
        self.gas_account = gas_account
        self.sender.set_account(gas_account)
        key_changed = ws_api_key != self._ws_api_key
        self._ws_api_key = ws_api_key
        if key_changed and self._stream is not None:
            logger.info("ws API key rotated: reconnecting the event stream")
            self._stream.reconnect()

    async def start_following(self) -> None:
        if len(self._following):
            return
        try:
            from_block = await self._w3.eth.block_number
        except (Web3Exception, OSError, TimeoutError) as e:
            raise ChainError(f"cannot read the current block to start listening: {e}") from e
        self._stream = LogStream(
            ws_url=self.ws_rpc_url,
            w3=self._w3,
            addresses=[self.settings.tee_manager_contract_addr, self.settings.jobs_contract_addr],
            topics=[["0x" + e.topic0().hex() for e in NODE_EVENTS + JOB_EVENTS]],
            from_block=from_block,
            name="chain",
            metrics=self.metrics,
        )
        logger.info("listening for this node's registration from block %d", from_block)
        self._following.spawn(self.follower.follow(self._stream.events()), name="follower")

    # --- jobs ------------------------------------------------------------------------------------

    @property
    def status(self) -> NodeStatus:
        return self.follower.status

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
        await self.executions.cancel_all()
        await self._timers.cancel_all()
