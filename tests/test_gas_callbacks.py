"""Outputs and slashes whose cost the job owner decides, on a real anvil.

The Jobs contract (devnet, like production) calls the job owner's ``oysterResultCall`` with the
first output, and ``oysterFailureCall`` when an unanswered job is slashed, forwarding all the gas
left; the work after the callback (payments) then needs the 1/64 the contract kept. A gas limit
that is too low makes the whole transaction revert with gas used below the limit. The owner here
is the sample ``OysterConsumer`` (contracts/devnet/OysterConsumer.sol): it stores what it gets,
and can be told to burn gas or revert. Outputs go through the real ``JobRunner`` and
``TxManager``; the chain's blocks tell what the gas account sent and whether it reverted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncWeb3
from web3.contract import AsyncContract

from executor.chain.enclave_key import EnclaveKey
from executor.chain.transactions.manager import TxStatus
from executor.jobs import JobContext, JobRunner, Slasher
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import Rpc
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.test_tx_faults import GAS, OWNER, USER, enclave, manager, runner_for, sent_by

__all__ = ["enclave"]  # the fixture, re-used

BIG_BURN = 5_000_000
"""Far above the fixed 300k + 64/byte bound the daemon used to send with."""


async def receipts_of(w3: AsyncWeb3[Any], sender: str, from_block: int) -> list[Any]:
    return [
        await w3.eth.get_transaction_receipt(tx["hash"])
        for tx in await sent_by(w3, sender, from_block)
    ]


async def window_end(devnet: Devnet, job_id: int) -> float:
    info = await devnet.job(job_id)
    assert info is not None
    return info.exec_start_time + info.deadline_ms / 1000 + devnet.execution_buffer_time


async def consumer_job(devnet: Devnet, consumer: AsyncContract, deadline_ms: int = 30_000) -> int:
    return await devnet.consumer_request(
        USER, consumer, codehash=b"\x01" * 32, code_inputs=b"{}", deadline_ms=deadline_ms
    )


@pytest.mark.parametrize(
    ("burn", "fail", "output", "callback_ok"),
    [
        (0, False, b"x" * MAX_OUTPUT_BYTES, True),  # stores 20 KiB: ~14M gas
        (BIG_BURN, False, b"42", True),
        (BIG_BURN, True, b"42", False),  # reverts after burning: the output still lands
        (0, True, b"", False),
    ],
    ids=["stores-20KiB", "burns-5M", "burns-then-reverts", "reverts"],
)
async def test_every_output_lands_whatever_the_owner_callback_costs(
    anvil: AnvilNode,
    w3: AsyncWeb3[Any],
    devnet: Devnet,
    enclave: EnclaveKey,
    burn: int,
    fail: bool,
    output: bytes,
    callback_ok: bool,
) -> None:
    consumer = await devnet.deploy_consumer(USER)
    await devnet.set_consumer_behaviour(USER, consumer, burn_gas=burn, fail=fail)
    job_id = await consumer_job(devnet, consumer)
    start = await w3.eth.block_number
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        sent = await runner.submit(
            job_id,
            JobOutcome(output, ErrorCode.OK, 12),
            valid_until=await window_end(devnet, job_id),
            owner=consumer.address,
        )
    assert sent.mined, sent
    assert sent.gas_used is not None and sent.gas_limit is not None
    assert sent.gas_used <= sent.gas_limit
    (response,) = await devnet.job_responses(job_id)
    assert response.output == output
    assert await devnet.callback_events(job_id) == [("result", callback_ok)]
    stored = await devnet.consumer_result(consumer, job_id)
    assert stored.received is callback_ok
    if callback_ok:
        assert (stored.output, stored.error_code, stored.total_time_ms) == (output, 0, 12)
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [1]  # one tx, and it did not revert


async def test_an_output_above_max_job_gas_is_not_sent_and_logged_once_with_the_owner(
    anvil: AnvilNode,
    w3: AsyncWeb3[Any],
    devnet: Devnet,
    enclave: EnclaveKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = await devnet.deploy_consumer(USER)
    await devnet.set_consumer_behaviour(USER, consumer, burn_gas=BIG_BURN)
    job_id = await consumer_job(devnet, consumer)
    nonce = await w3.eth.get_transaction_count(GAS.address)
    caplog.set_level(logging.INFO, logger="executor")
    async with manager(w3, anvil.chain_id) as txm:
        runner = JobRunner(
            key=enclave,
            fetcher=runner_for(txm, enclave, devnet)._fetcher,
            execute=runner_for(txm, enclave, devnet)._execute,
            txm=txm,
            context=JobContext(devnet.jobs_address, devnet.execution_buffer_time, 2_000_000),
        )
        sent = await runner.submit(
            job_id,
            JobOutcome(b"42", ErrorCode.OK, 12),
            valid_until=await window_end(devnet, job_id),
            owner=consumer.address,
        )
    assert sent.status is TxStatus.OVER_CEILING
    assert sent.gas_needed is not None and sent.gas_needed > 2_000_000
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert f"job {job_id}" in message and consumer.address in message
    assert str(sent.gas_needed) in message and "max_job_gas=2000000" in message
    assert await w3.eth.get_transaction_count(GAS.address) == nonce  # nothing sent
    assert await devnet.job_responses(job_id) == []


async def test_an_output_that_ran_out_of_gas_on_chain_is_sent_again_with_more(
    anvil: AnvilNode,
    w3: AsyncWeb3[Any],
    devnet: Devnet,
    enclave: EnclaveKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The callback gets costlier between the estimate and the block (the owner changed its
    state first): the output reverts out of gas, its receipt showing gas used *below* the limit;
    the manager recognises it and sends it again with enough gas, within the window."""
    consumer = await devnet.deploy_consumer(USER)
    job_id = await consumer_job(devnet, consumer)
    start = await w3.eth.block_number
    caplog.set_level(logging.INFO, logger="executor")
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        await devnet.set_automine(False)
        try:
            pending = asyncio.create_task(
                runner.submit(
                    job_id,
                    JobOutcome(b"42", ErrorCode.OK, 12),
                    valid_until=await window_end(devnet, job_id),
                    owner=consumer.address,
                )
            )
            await wait_until(lambda: txm.in_flight == 1, timeout=10, what="the output pooled")
            # The owner's own tx, with a higher tip, lands first in the same block.
            user = Account.from_key(USER.private_key)
            data = consumer.encode_abi("setBehaviour", args=[BIG_BURN, False])
            fees = txm.current_fees()
            tx = {
                "to": consumer.address,
                "data": data,
                "gas": 100_000,
                "nonce": await w3.eth.get_transaction_count(user.address),
                "chainId": anvil.chain_id,
                "maxFeePerGas": fees.cap * 4,
                "maxPriorityFeePerGas": fees.cap * 2,
                "type": 2,
            }
            await w3.eth.send_raw_transaction(user.sign_transaction(tx).raw_transaction)
            await Rpc(w3)("evm_mine")
            while not pending.done():
                await asyncio.sleep(0.2)
                await Rpc(w3)("evm_mine")
            sent = await pending
        finally:
            await devnet.set_automine(True)
    assert sent.mined, sent
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [0, 1]
    reverted = receipts[0]
    first = await w3.eth.get_transaction(reverted["transactionHash"])
    assert reverted["gasUsed"] < first["gas"]  # an inner out-of-gas: below the limit
    assert receipts[1]["gasUsed"] > BIG_BURN
    assert await devnet.callback_events(job_id) == [("result", True)]
    assert (await devnet.consumer_result(consumer, job_id)).output == b"42"
    assert any("ran out of gas" in r.getMessage() for r in caplog.records)


async def test_a_slash_calls_the_owner_failure_callback_with_enough_gas(
    anvil: AnvilNode, w3: AsyncWeb3[Any], devnet: Devnet, enclave: EnclaveKey
) -> None:
    consumer = await devnet.deploy_consumer(USER)
    await devnet.set_consumer_behaviour(USER, consumer, burn_gas=BIG_BURN)
    job_id = await consumer_job(devnet, consumer, deadline_ms=1000)
    await devnet.increase_time(devnet.execution_buffer_time + 5)
    start = await w3.eth.block_number
    async with manager(w3, anvil.chain_id) as txm:
        slasher = Slasher(txm=txm, jobs_contract=devnet.jobs_address)
        sent = await slasher.slash(job_id, consumer.address)
    assert sent.mined, sent
    assert [e.enclave_address for e in await devnet.slash_events(job_id)] == [enclave.address]
    assert await devnet.callback_events(job_id) == [("failure", True)]
    assert (await devnet.consumer_result(consumer, job_id)).failed
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [1]


BIG_CODE = "export default { async fetch() { return new Response('x'.repeat(20480)); } };\n"


async def test_the_daemon_answers_every_consumer_job_without_a_reverted_transaction(
    tmp_path: Path, anvil: AnvilNode, w3: AsyncWeb3[Any], devnet: Devnet
) -> None:
    """The whole daemon (event stream, sandbox, transaction manager): jobs owned by consumer
    contracts whose callbacks store 20 KiB, burn 5M gas, or revert, and by an account: every job
    is answered once, and no transaction from the gas account reverted."""
    async with running_daemon(write_node_files(tmp_path / "node", anvil, devnet)) as daemon:
        await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
        await wait_registered(daemon)
        start = await w3.eth.block_number
        big = await devnet.save_code(USER, BIG_CODE)
        echo = await devnet.save_code(USER, CODE_ECHO)
        jobs: list[tuple[int, AsyncContract | None, bytes]] = []
        for burn, fail, codehash in (
            (0, False, big),
            (BIG_BURN, False, echo),
            (0, True, echo),
            (None, False, echo),
        ):
            consumer = None
            if burn is None:  # an account owns it
                job_id = await devnet.create_job(
                    USER, codehash=codehash, code_inputs=b"acct", deadline_ms=5000
                )
            else:
                consumer = await devnet.deploy_consumer(USER)
                await devnet.set_consumer_behaviour(USER, consumer, burn_gas=burn, fail=fail)
                job_id = await devnet.consumer_request(
                    USER, consumer, codehash=codehash, code_inputs=b"dapp", deadline_ms=5000
                )
            # The node has one job slot (no cgroup slices): one job at a time.
            (response,) = await wait_until(
                lambda j=job_id: devnet.job_responses(j), timeout=30, what=f"job {job_id}"
            )
            jobs.append((job_id, consumer, response.output))
    assert len(jobs[0][2]) == MAX_OUTPUT_BYTES
    for (job_id, consumer, output), ok in zip(jobs, (True, True, False, None), strict=True):
        if consumer is None:
            continue
        assert await devnet.callback_events(job_id) == [("result", ok)]
        stored = await devnet.consumer_result(consumer, job_id)
        assert stored.received is ok and (not ok or stored.output == output)
    receipts = await receipts_of(w3, GAS.address, start)
    assert len(receipts) == len(jobs)
    assert all(r["status"] == 1 for r in receipts), receipts
