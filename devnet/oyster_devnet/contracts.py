"""Deploy the devnet contracts (``contracts/devnet``) and drive them from tests and local tools.

``deploy_devnet`` deploys TeeManager, Jobs and UserCode and returns a ``Devnet``: typed async
helpers that sign each transaction locally with a dev account, send it, wait for the receipt and
decode what it emitted. A revert raises ``TransactionReverted`` naming the contract's custom error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_typing import ChecksumAddress, HexStr
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractCustomError
from web3.types import LogReceipt, RPCEndpoint, TxReceipt

from executor.errors import ExecutorError
from oyster_devnet.accounts import DevAccount
from oyster_devnet.tools import REPO_ROOT
from oyster_devnet.transactions import (
    DevnetTransactionError,
    RevertDecoder,
    TransactionReverted,
    TxSender,
)

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = REPO_ROOT / "contracts" / "devnet" / "build"
CONTRACT_NAMES = ("Jobs", "TeeManager", "UserCode")

Abi = list[dict[str, Any]]


@cache
def load_artifact(name: str) -> tuple[Abi, HexStr]:
    """The ABI and creation bytecode of ``contracts/devnet/build/<name>.json``."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        artifact = json.loads(path.read_text())
        return artifact["abi"], HexStr(artifact["bytecode"])
    except (OSError, ValueError, KeyError) as e:
        raise ExecutorError(
            f"devnet artifact {path} is missing or malformed ({e}); run `make contracts`"
        ) from e


@dataclass(frozen=True)
class JobInfo:
    job_owner: ChecksumAddress
    env: int
    exec_start_time: int
    """Block timestamp (s) of the job's creation."""
    deadline_ms: int
    output_count: int
    selected_executors: tuple[ChecksumAddress, ...]


@dataclass(frozen=True)
class TeeNodeInfo:
    owner: ChecksumAddress
    job_capacity: int
    storage_capacity: int
    env: int
    draining: bool


@dataclass(frozen=True)
class JobResponse:
    """One decoded ``JobResponded`` event."""

    job_id: int
    executor: ChecksumAddress
    output: bytes
    total_time: int
    error_code: int
    output_count: int
    tx_hash: HexStr
    block_number: int


@dataclass(frozen=True)
class SlashEvent:
    """One decoded ``SlashedOnExecutionTimeout`` event."""

    job_id: int
    enclave_address: ChecksumAddress
    tx_hash: HexStr
    block_number: int


@dataclass(frozen=True)
class ConsumerResult:
    """What an ``OysterConsumer`` stored for one job."""

    received: bool
    failed: bool
    error_code: int
    total_time_ms: int
    output: bytes


class Devnet:
    """The deployed devnet contracts, with helpers to drive them.

    Every transaction helper takes the ``DevAccount`` that signs and pays for it.
    """

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        *,
        jobs_address: str,
        tee_manager_address: str,
        user_code_address: str,
        execution_buffer_time: int,
        num_selected_executors: int,
        sign_max_age: int,
        sender: TxSender | None = None,
    ) -> None:
        self.w3 = w3
        self.jobs: AsyncContract = _contract(w3, "Jobs", jobs_address)
        self.tee_manager: AsyncContract = _contract(w3, "TeeManager", tee_manager_address)
        self.user_code: AsyncContract = _contract(w3, "UserCode", user_code_address)
        self.execution_buffer_time = execution_buffer_time
        """Seconds (``EXECUTION_BUFFER_TIME``)."""
        self.num_selected_executors = num_selected_executors
        self.sign_max_age = sign_max_age
        """Seconds; both contracts reject older signatures."""
        self.sender = sender or TxSender(w3, devnet_reverts())
        self._names = {c.address: n for c, n in self._contracts()}

    @classmethod
    async def attach(
        cls,
        w3: AsyncWeb3[Any],
        *,
        jobs_address: str,
        tee_manager_address: str,
        user_code_address: str,
    ) -> Devnet:
        """A ``Devnet`` for contracts deployed earlier; reads their settings from the chain."""
        jobs = _contract(w3, "Jobs", jobs_address)
        return cls(
            w3,
            jobs_address=jobs_address,
            tee_manager_address=tee_manager_address,
            user_code_address=user_code_address,
            execution_buffer_time=await jobs.functions.EXECUTION_BUFFER_TIME().call(),
            num_selected_executors=await jobs.functions.NO_OF_NODES_TO_SELECT().call(),
            sign_max_age=await jobs.functions.SIGN_MAX_AGE().call(),
        )

    def _contracts(self) -> list[tuple[AsyncContract, str]]:
        return [(self.jobs, "Jobs"), (self.tee_manager, "TeeManager"), (self.user_code, "UserCode")]

    @property
    def jobs_address(self) -> ChecksumAddress:
        return to_checksum_address(self.jobs.address)

    @property
    def tee_manager_address(self) -> ChecksumAddress:
        return to_checksum_address(self.tee_manager.address)

    @property
    def user_code_address(self) -> ChecksumAddress:
        return to_checksum_address(self.user_code.address)

    # --- UserCode -------------------------------------------------------------------------------

    async def save_code(self, sender: DevAccount, code: str, metadata: bytes = b"") -> HexStr:
        """Stores ``code`` in calldata; returns the 0x transaction hash (a job's ``codehash``)."""
        receipt = await self._transact(sender, self.user_code, "saveCodeInCallData", code, metadata)
        return HexStr(receipt["transactionHash"].to_0x_hex())

    # --- TeeManager -----------------------------------------------------------------------------

    async def register_node(
        self,
        owner: DevAccount,
        enclave_pubkey: bytes,
        job_capacity: int,
        storage_capacity: int,
        env: int,
        sign_timestamp: int,
        signature: bytes,
    ) -> ChecksumAddress:
        """Registers the enclave with ``owner`` as its owner; returns the enclave address."""
        receipt = await self._transact(
            owner,
            self.tee_manager,
            "registerTeeNode",
            enclave_pubkey,
            job_capacity,
            storage_capacity,
            env,
            sign_timestamp,
            signature,
        )
        (log,) = self._logs(receipt, self.tee_manager, "TeeNodeRegistered")
        return to_checksum_address(log["args"]["enclaveAddress"])

    async def drain_node(self, owner: DevAccount, enclave_address: str) -> TxReceipt:
        return await self._transact(owner, self.tee_manager, "drainTeeNode", enclave_address)

    async def revive_node(self, owner: DevAccount, enclave_address: str) -> TxReceipt:
        return await self._transact(owner, self.tee_manager, "reviveTeeNode", enclave_address)

    async def deregister_node(self, owner: DevAccount, enclave_address: str) -> TxReceipt:
        return await self._transact(owner, self.tee_manager, "deregisterTeeNode", enclave_address)

    async def tee_node(self, enclave_address: str) -> TeeNodeInfo | None:
        """The node's registration, or ``None`` if it is not registered."""
        (
            owner,
            job_capacity,
            storage_capacity,
            env,
            draining,
        ) = await self.tee_manager.functions.getTeeNode(_address(enclave_address)).call()
        if int(owner, 16) == 0:
            return None
        return TeeNodeInfo(
            to_checksum_address(owner), job_capacity, storage_capacity, env, draining
        )

    async def active_nodes(self, env: int = 1) -> list[ChecksumAddress]:
        nodes = await self.tee_manager.functions.nodesOfEnv(env).call()
        return [to_checksum_address(node) for node in nodes]

    # --- Jobs -----------------------------------------------------------------------------------

    async def create_job(
        self,
        sender: DevAccount,
        *,
        env: int = 1,
        secret_id: int = 0,
        codehash: str | bytes,
        code_inputs: bytes,
        deadline_ms: int,
        executors: Sequence[str] | None = None,
    ) -> int:
        """Creates a job and returns its id.

        ``executors=None`` lets the contract select active nodes of ``env``; a list names the
        selected executors explicitly (they need not be registered).
        """
        args: list[Any] = [env, secret_id, HexBytes(codehash), code_inputs, deadline_ms]
        if executors is None:
            receipt = await self._transact(sender, self.jobs, "createJob", *args)
        else:
            executors = [_address(e) for e in executors]
            receipt = await self._transact(
                sender, self.jobs, "createJobWithExecutors", *args, executors
            )
        (log,) = self._logs(receipt, self.jobs, "JobCreated")
        return int(log["args"]["jobId"])

    async def submit_output(
        self,
        sender: DevAccount,
        *,
        signature: bytes,
        job_id: int,
        output: bytes,
        total_time: int,
        error_code: int,
        sign_timestamp: int,
    ) -> JobResponse:
        """Submits an enclave-signed output (``sender`` only pays gas); returns the event."""
        receipt = await self._transact(
            sender,
            self.jobs,
            "submitOutput",
            signature,
            job_id,
            output,
            total_time,
            error_code,
            sign_timestamp,
        )
        (log,) = self._logs(receipt, self.jobs, "JobResponded")
        return _job_response(log)

    async def slash_on_timeout(self, sender: DevAccount, job_id: int) -> list[SlashEvent]:
        receipt = await self._transact(sender, self.jobs, "slashOnExecutionTimeout", job_id)
        return [
            _slash_event(log) for log in self._logs(receipt, self.jobs, "SlashedOnExecutionTimeout")
        ]

    async def job(self, job_id: int) -> JobInfo | None:
        """The job's state, or ``None`` for an unknown or slashed job."""
        try:
            owner, env, start, deadline, count, selected = await self.jobs.functions.getJob(
                job_id
            ).call()
        except ContractCustomError as e:
            if devnet_reverts().decode("Jobs.getJob", e).error_name == "JobsJobNotFound":
                return None
            raise
        return JobInfo(
            to_checksum_address(owner),
            env,
            start,
            deadline,
            count,
            tuple(to_checksum_address(s) for s in selected),
        )

    async def job_responses(self, job_id: int) -> list[JobResponse]:
        """Every ``JobResponded`` for ``job_id``, in chain order."""
        logs = await self._get_logs(self.jobs, "JobResponded", job_id)
        return [_job_response(log) for log in logs]

    async def slash_events(self, job_id: int) -> list[SlashEvent]:
        """Every ``SlashedOnExecutionTimeout`` for ``job_id``, in chain order."""
        logs = await self._get_logs(self.jobs, "SlashedOnExecutionTimeout", job_id)
        return [_slash_event(log) for log in logs]

    # --- Chain ----------------------------------------------------------------------------------

    async def send_eth(self, sender: DevAccount, to: str, value_wei: int) -> TxReceipt:
        return await self.sender.send(sender, to, HexStr("0x"), call="transfer", value=value_wei)

    async def chain_time(self) -> int:
        """The latest block's timestamp (s): the clock the contracts compare against."""
        return int((await self.w3.eth.get_block("latest"))["timestamp"])

    async def increase_time(self, seconds: int) -> None:
        """Moves the chain clock forward (``evm_increaseTime``) and mines a block."""
        await self._rpc("evm_increaseTime", [seconds])
        await self.mine()

    async def mine(self) -> None:
        """Mines one block now (with whatever the pool holds)."""
        await self._rpc("evm_mine", [])

    async def set_automine(self, enabled: bool) -> None:
        """Off: transactions wait in the pool until ``mine()`` (or the block time) includes them."""
        await self._rpc("evm_setAutomine", [enabled])

    async def set_next_block_timestamp(self, timestamp: int) -> None:
        """The next mined block gets exactly ``timestamp`` (s); later blocks continue from it."""
        await self._rpc("evm_setNextBlockTimestamp", [timestamp])

    # --- the sample consumer (contracts/devnet/OysterConsumer.sol) --------------------------------

    async def deploy_consumer(self, deployer: DevAccount) -> AsyncContract:
        """A new ``OysterConsumer`` that creates jobs on this devnet's Jobs contract."""
        address = await _deploy(self.w3, self.sender, deployer, "OysterConsumer", self.jobs.address)
        return self.consumer(address)

    def consumer(self, address: str) -> AsyncContract:
        consumer = _contract(self.w3, "OysterConsumer", address)
        self._names[consumer.address] = "OysterConsumer"
        return consumer

    async def consumer_request(
        self,
        sender: DevAccount,
        consumer: AsyncContract,
        *,
        codehash: str | bytes,
        code_inputs: bytes,
        deadline_ms: int,
    ) -> int:
        """Has ``consumer`` create a job it owns (env 1); returns the job id."""
        receipt = await self._transact(
            sender, consumer, "request", HexBytes(codehash), code_inputs, deadline_ms
        )
        (log,) = self._logs(receipt, self.jobs, "JobCreated")
        return int(log["args"]["jobId"])

    async def set_consumer_behaviour(
        self, sender: DevAccount, consumer: AsyncContract, *, burn_gas: int = 0, fail: bool = False
    ) -> None:
        """Make the consumer's callbacks burn ``burn_gas`` and/or revert."""
        await self._transact(sender, consumer, "setBehaviour", burn_gas, fail)

    async def consumer_result(self, consumer: AsyncContract, job_id: int) -> ConsumerResult:
        received, failed, error_code, total_time, output = await consumer.functions.resultOf(
            job_id
        ).call()
        return ConsumerResult(
            bool(received), bool(failed), int(error_code), int(total_time), bytes(output)
        )

    async def callback_events(self, job_id: int) -> list[tuple[str, bool]]:
        """("result" | "failure", success) of every callback the Jobs contract made for the job."""
        found = []
        for name, event in (
            ("result", "JobResultCallbackCalled"),
            ("failure", "JobFailureCallbackCalled"),
        ):
            for log in await self._get_logs(self.jobs, event, job_id):
                found.append((name, bool(log["args"]["success"])))
        return found

    # --- internals ------------------------------------------------------------------------------

    async def _transact(
        self, sender: DevAccount, contract: AsyncContract, function: str, *args: Any
    ) -> TxReceipt:
        data = contract.encode_abi(function, args=list(args))
        name = self._names.get(contract.address, contract.address)
        return await self.sender.send(sender, contract.address, data, call=f"{name}.{function}")

    def _logs(self, receipt: TxReceipt, contract: AsyncContract, event: str) -> list[Any]:
        """The receipt's logs of ``event`` emitted by ``contract``, decoded."""
        contract_event = contract.events[event]
        topic = HexBytes(contract_event.topic)
        return [
            contract_event.process_log(log)
            for log in receipt["logs"]
            if log["address"] == contract.address and log["topics"] and log["topics"][0] == topic
        ]

    async def _get_logs(self, contract: AsyncContract, event: str, job_id: int) -> list[Any]:
        contract_event = contract.events[event]
        logs: list[LogReceipt] = await self.w3.eth.get_logs(
            {
                "address": contract.address,
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [contract_event.topic, HexStr("0x" + job_id.to_bytes(32, "big").hex())],
            }
        )
        return [contract_event.process_log(log) for log in logs]

    async def _rpc(self, method: str, params: list[Any]) -> Any:
        response = await self.w3.provider.make_request(RPCEndpoint(method), params)
        if response.get("error"):
            raise DevnetTransactionError(f"{method} failed: {response['error']}")
        return response.get("result")


async def deploy_devnet(
    w3: AsyncWeb3[Any],
    deployer: DevAccount,
    *,
    execution_buffer_time: int,
    num_selected_executors: int,
    sign_max_age: int = 600,
) -> Devnet:
    """Deploys TeeManager, Jobs and UserCode from ``deployer`` and returns the ``Devnet``.

    ``execution_buffer_time`` and ``sign_max_age`` are seconds; both contracts use ``sign_max_age``.
    """
    sender = TxSender(w3, devnet_reverts())
    tee_manager = await _deploy(w3, sender, deployer, "TeeManager", sign_max_age)
    jobs = await _deploy(
        w3,
        sender,
        deployer,
        "Jobs",
        tee_manager,
        execution_buffer_time,
        num_selected_executors,
        sign_max_age,
    )
    user_code = await _deploy(w3, sender, deployer, "UserCode")
    logger.info(
        "devnet deployed: Jobs %s, TeeManager %s, UserCode %s", jobs, tee_manager, user_code
    )
    return Devnet(
        w3,
        jobs_address=jobs,
        tee_manager_address=tee_manager,
        user_code_address=user_code,
        execution_buffer_time=execution_buffer_time,
        num_selected_executors=num_selected_executors,
        sign_max_age=sign_max_age,
        sender=sender,
    )


async def _deploy(
    w3: AsyncWeb3[Any], sender: TxSender, deployer: DevAccount, name: str, *args: Any
) -> ChecksumAddress:
    abi, bytecode = load_artifact(name)
    data = w3.eth.contract(abi=abi, bytecode=bytecode).constructor(*args).data_in_transaction
    receipt = await sender.send(deployer, None, data, call=f"new {name}")
    address = receipt["contractAddress"]
    if address is None:
        raise DevnetTransactionError(f"deploying {name}: the receipt has no contract address")
    return to_checksum_address(address)


@cache
def devnet_reverts() -> RevertDecoder:
    """Decodes the custom errors of every devnet contract (a Jobs call may revert in TeeManager)."""
    return RevertDecoder(load_artifact(name)[0] for name in (*CONTRACT_NAMES, "OysterConsumer"))


def _contract(w3: AsyncWeb3[Any], name: str, address: str) -> AsyncContract:
    abi, _ = load_artifact(name)
    return w3.eth.contract(address=_address(address), abi=abi)


def _address(value: str) -> ChecksumAddress:
    return to_checksum_address(value)


def _job_response(log: Any) -> JobResponse:
    args = log["args"]
    return JobResponse(
        job_id=int(args["jobId"]),
        executor=to_checksum_address(args["executor"]),
        output=bytes(args["output"]),
        total_time=int(args["totalTime"]),
        error_code=int(args["errorCode"]),
        output_count=int(args["outputCount"]),
        tx_hash=HexStr(log["transactionHash"].to_0x_hex()),
        block_number=int(log["blockNumber"]),
    )


def _slash_event(log: Any) -> SlashEvent:
    return SlashEvent(
        job_id=int(log["args"]["jobId"]),
        enclave_address=to_checksum_address(log["args"]["enclaveAddress"]),
        tx_hash=HexStr(log["transactionHash"].to_0x_hex()),
        block_number=int(log["blockNumber"]),
    )


__all__ = [
    "Devnet",
    "DevnetTransactionError",
    "JobInfo",
    "JobResponse",
    "SlashEvent",
    "TeeNodeInfo",
    "TransactionReverted",
    "TxSender",
    "deploy_devnet",
    "devnet_reverts",
    "load_artifact",
]
