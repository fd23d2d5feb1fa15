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
from web3.exceptions import ContractLogicError, Web3Exception

from executor import redact
from executor.admin.secret_store import SecretStoreClient
from executor.chain.clock import ChainClock
from executor.chain.code import CodeCache, CodeFetcher
from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow import (
    JOB_EVENTS,
    JOB_LOOKBACK_BLOCKS,
    NODE_EVENTS,
    ChainEvent,
    LogStream,
    StreamHealth,
    TeeNodeDrained,
    TeeNodeRegistered,
    TeeNodeRevived,
    read_node_record,
)
from executor.chain.requirements import min_storage_capacity
from executor.chain.transactions import TxManager
from executor.config import Settings
from executor.errors import ChainError
from executor.health import NodeHealth
from executor.jobs import ExecuteFn, JobContext, JobRunner, Slasher
from executor.metrics import NO_METRICS, Metrics
from executor.node import ChainFollower, NodeStatus
from executor.supervisor import Supervisor
from executor.tasks import TaskSet
from executor.timeouts import TimeoutWatch

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
        supervisor: Supervisor | None = None,
    ) -> None:
        self.metrics = metrics
        self.supervisor = supervisor or Supervisor(metrics=metrics)
        """Runs the transaction loop and the follower, and watches the stream's health."""
        self.settings = settings
        self.key = key
        self.job_capacity = job_capacity
        self.secret_store = secret_store
        self.owner: str | None = None
        self.gas_account: LocalAccount | None = None
        self.node_health: NodeHealth | None = None
        """What ``GET /health`` reports (the daemon sets it; without one the node reports
        itself healthy)."""
        self._ws_api_key = ""
        self._w3 = w3
        self._clients = tuple(clients) or (w3,)
        self.clock = ChainClock()
        """Chain time for every window: fed by the event stream's heads and the manager's polls."""
        self.txm = TxManager(
            w3, self._clients, settings.common_chain_id, metrics=metrics, clock=self.clock
        )
        self.executions = TaskSet("jobs")
        self._timers = TaskSet("timeouts")
        self._follow_task: asyncio.Task[None] | None = None
        self._stream: LogStream | None = None
        self._start_lock = asyncio.Lock()
        self._slasher = Slasher(
            txm=self.txm,
            jobs_contract=settings.jobs_contract_addr,
            max_job_gas=settings.max_job_gas,
        )
        self.watch = TimeoutWatch(
            slash=self._slash,
            execution_buffer_time_s=settings.execution_buffer_time,
            num_selected_executors=settings.num_selected_executors,
            tasks=self._timers,
            clock=self.clock,
        )
        self.runner = JobRunner(
            key=key,
            # One client per endpoint: an endpoint whose answer fails verification is not
            # believed, the next one is asked.
            fetcher=CodeFetcher(self._clients, settings.code_contract_addr, CodeCache()),
            execute=execute,
            txm=self.txm,
            context=JobContext(
                settings.jobs_contract_addr, settings.execution_buffer_time, settings.max_job_gas
            ),
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

    def ws_rpc_url(self, *, masked: bool = False) -> str:
        """The first websocket URL with the API key (``masked``: with ``***`` in its place)."""
        key = redact.MASK if masked and self._ws_api_key else self._ws_api_key
        return self.settings.ws_url_with_key(key)

    def ws_rpc_urls(self) -> tuple[str, ...]:
        return self.settings.ws_urls_with_key(self._ws_api_key)

    async def min_storage_capacity(self) -> int | None:
        """The storage capacity the chain's contracts require (None: they require none); raises
        ChainError when the chain cannot be read."""

        async def eth_call(to: str, data: bytes) -> bytes | None:
            try:
                call: Any = {"to": to, "data": data}
                return bytes(await self._w3.eth.call(call, "latest"))
            except ContractLogicError:
                return None

        try:
            return await min_storage_capacity(eth_call, self.settings.tee_manager_contract_addr)
        except (Web3Exception, OSError, TimeoutError, ValueError) as e:
            raise ChainError(f"cannot read the contracts' storage requirement: {e}") from e

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
        """Start the event stream and the follower, unless they run already. Serialized: it
        reads the chain before it spawns, and requests that overlap must start one stream."""
        async with self._start_lock:
            if self._follow_task is None or self._follow_task.done():
                await self._start_following()

    async def _start_following(self) -> None:
        await self.txm.start(self.supervisor)
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
        self._stream = stream = LogStream(
            ws_urls=self.ws_rpc_urls,
            w3=self._w3,
            addresses=[s.tee_manager_contract_addr, s.jobs_contract_addr],
            topics=[["0x" + e.topic0().hex() for e in NODE_EVENTS + JOB_EVENTS]],
            from_block=from_block,
            name="chain",
            metrics=self.metrics,
        )
        # Not restarted: a follower that died lost its place; the health says so until the
        # owner asks for the registration message again (which starts a new one).
        self.supervisor.watch("event-stream", lambda: _stream_trouble(stream))
        self._follow_task = self.supervisor.run(
            "follower",
            lambda: self.follower.follow(stream.events()),
            restart=False,
            health=self._follower_trouble,
        )

    def _follower_trouble(self) -> str | None:
        health = self.follower.health
        if health.healthy:
            return None
        return f"{health.consecutive_failures} events in a row failed: {health.last_error}"

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
        # Never the slash of a job this node was selected for and did not get its output in:
        # that slash takes this operator's own stake (its output may still be landing: wait).
        answered = await self.follower.own_output(job_id)
        if answered is False:
            logger.warning(
                "job %d: incomplete, but this node's own output did not land: not sending the "
                "slash (it would slash this enclave); other nodes settle it",
                job_id,
            )
            return False
        owner = self.follower.job_owner(job_id)
        return (await self._slasher.slash(job_id, owner)).mined

    # --- jobs and health -------------------------------------------------------------------------

    @property
    def status(self) -> NodeStatus:
        return self.follower.status

    async def chain_now(self) -> float:
        try:
            block = await self._w3.eth.get_block("latest")
        except (Web3Exception, OSError, TimeoutError) as e:
            raise ChainError(f"cannot read the chain's time: {e}") from e
        self.clock.observe(int(block["timestamp"]))
        return self.clock.now()

    def health(self) -> dict[str, Any]:
        """A small summary for the admin API's ``GET /`` (operator tools check the status only)."""
        return {
            "status": self.status.value,
            "stream": self._stream.health.as_dict() if self._stream is not None else None,
            "follower": self.follower.health.as_dict(),
            "running_jobs": len(self.watch.running),
            "executions": len(self.executions),
            "parts": self.supervisor.parts(),
            "secret_store": self.secret_store is not None,
            "version": self.node_health.version if self.node_health else None,
        }

    def stream_health(self) -> StreamHealth | None:
        """The event stream's health, once the node follows the chain."""
        return self._stream.health if self._stream is not None else None

    def health_report(self) -> dict[str, Any]:
        """``GET /health``: ``healthy`` false (503) with ``reasons`` when the node cannot serve."""
        report = (
            self.node_health.report()
            if self.node_health is not None
            else {"healthy": True, "reasons": {}}
        )
        return {
            **report,
            "status": self.status.value,
            "jobs_in_flight": len(self.executions),
            "chain": self._stream.health.as_dict() if self._stream is not None else None,
        }

    def running_jobs(self) -> list[dict[str, Any]]:
        """``GET /jobs``: the jobs being executed now."""
        return self.follower.executing()

    # --- shutdown --------------------------------------------------------------------------------

    async def close(self, grace_s: float, force: asyncio.Event | None = None) -> None:
        """Stop taking jobs, let running ones finish within ``grace_s`` (or until ``force``
        is set), then cancel what is left."""
        self.follower.accepting = False
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        if len(self.executions):
            logger.info("waiting up to %.0fs for %d running job(s)", grace_s, len(self.executions))
            if not await self.executions.wait(grace_s, interrupt=force):
                logger.warning("cancelling %d job(s) still running", len(self.executions))
        # Before the jobs are cancelled: a shutdown leaves their pending outputs in the pool
        # (they may still land) instead of withdrawing them as a cancellation would.
        await self.txm.close()
        await self.executions.cancel_all()
        await self._timers.cancel_all()


def _stream_trouble(stream: LogStream) -> str | None:
    health = stream.health
    if health.healthy:
        return None
    return f"{health.consecutive_failures} connections in a row failed: {health.last_error}"
