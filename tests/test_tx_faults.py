"""The transaction manager under faults, on a real anvil.

anvil (1.7.1) behaves unlike geth in ways these tests rely on: when a block's base fee rises above
a pooled transaction's fee cap, anvil deletes it (and the sender's later nonces) from its pool, so
it has no receipt and ``eth_getTransactionByHash`` returns null, where geth would keep it pending;
a new transaction below the base fee is refused; ``anvil_setNextBlockBaseFeePerGas`` sets the next
block's base fee only; ``evm_setAutomine false`` + ``evm_mine`` mines on demand.

Outputs are signed by a registered enclave key and sent through the real ``JobRunner.submit`` and
``TxManager``; the devnet contract checks each one (signature, window), so a JobResponded proves
that the output landed inside its window. Transactions are counted from the gas account's blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.chain.code import CodeFetcher
from executor.chain.enclave_key import EnclaveKey
from executor.chain.jobs_contract import (
    SUBMIT_OUTPUT_SELECTOR,
    Refusal,
    classify_revert,
    sign_output,
    submit_output_calldata,
    submit_output_gas_bound,
)
from executor.chain.transactions.manager import TxManager, TxOutcome, TxStatus
from executor.jobs import JobContext, JobRunner, Slasher
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from tests.chain_helpers import ROLES, Rpc
from tests.node_helpers import wait_until
from tests.relay import running_relay
from tests.rpc_proxy import running_rpc_proxy as lying_rpc_proxy

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
GAS_ACCOUNT: LocalAccount = Account.from_key(GAS.private_key)
NOBODY = Account.create().address
GWEI = 10**9


@pytest.fixture
async def enclave(devnet: Devnet) -> EnclaveKey:
    """A registered, active enclave key (the contract accepts its outputs)."""
    key = EnclaveKey.generate()
    now = await devnet.chain_time()
    signature = key.sign_registration(OWNER.address, 20, 0, 1, now)
    await devnet.register_node(OWNER, key.public_key, 20, 0, 1, now, signature)
    return key


@asynccontextmanager
async def manager(
    w3: AsyncWeb3[Any], chain_id: int, account: LocalAccount = GAS_ACCOUNT
) -> AsyncIterator[TxManager]:
    txm = TxManager(w3, [w3], chain_id, poll_s=0.1, idle_poll_s=0.2)
    txm.set_account(account)
    await txm.start()
    try:
        yield txm
    finally:
        await txm.close()


def runner_for(txm: TxManager, key: EnclaveKey, devnet: Devnet) -> JobRunner:
    async def never(*_: Any, **__: Any) -> JobOutcome:
        raise AssertionError("these tests submit outcomes directly")

    return JobRunner(
        key=key,
        fetcher=CodeFetcher([devnet.w3], devnet.user_code_address),
        execute=never,
        txm=txm,
        context=JobContext(devnet.jobs_address, devnet.execution_buffer_time),
    )


async def new_jobs(devnet: Devnet, executors: list[str], count: int, deadline_ms: int) -> list[int]:
    return [
        await devnet.create_job(
            USER,
            codehash=b"\x01" * 32,
            code_inputs=b"",
            deadline_ms=deadline_ms,
            executors=executors,
        )
        for _ in range(count)
    ]


async def submit(runner: JobRunner, devnet: Devnet, job_id: int) -> TxOutcome:
    info = await devnet.job(job_id)
    assert info is not None
    window_end = info.exec_start_time + info.deadline_ms / 1000 + devnet.execution_buffer_time
    outcome = JobOutcome(f"out-{job_id}".encode(), ErrorCode.OK, 7)
    return await runner.submit(job_id, outcome, valid_until=window_end)


async def sent_by(w3: AsyncWeb3[Any], sender: str, from_block: int) -> list[Any]:
    """Every mined transaction from ``sender`` after ``from_block``."""
    latest = await w3.eth.block_number
    txs = []
    for number in range(from_block + 1, latest + 1):
        block = await w3.eth.get_block(number, full_transactions=True)
        txs += [tx for tx in block["transactions"] if tx["from"] == sender]  # type: ignore[index]
    return txs


def outputs_per_job(txs: list[Any]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for tx in txs:
        data = bytes(tx["input"])
        if data[:4] == SUBMIT_OUTPUT_SELECTOR:
            counts[int.from_bytes(data[36:68], "big")] += 1  # _jobId, the second argument
    return counts


async def test_outputs_survive_a_dropped_pool_while_mining_is_paused(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    jobs = await new_jobs(devnet, [enclave.address], 4, deadline_ms=10_000)
    start = await w3.eth.block_number
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        await devnet.set_automine(False)
        pending = [asyncio.create_task(submit(runner, devnet, j)) for j in jobs]
        await wait_until(lambda: txm.in_flight == len(jobs), timeout=10, what="4 txs in the pool")
        await Rpc(w3)("anvil_dropAllTransactions")
        await devnet.set_automine(True)
        outcomes = await asyncio.wait_for(asyncio.gather(*pending), 30)
        assert [o.status for o in outcomes] == [TxStatus.MINED] * len(jobs)
        (later,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=10_000)
        assert (await submit(runner, devnet, later)).mined  # no nonce gap behind the drop
    for job_id in [*jobs, later]:
        assert [r.executor for r in await devnet.job_responses(job_id)] == [enclave.address]
    txs = await sent_by(w3, GAS.address, start)
    assert outputs_per_job(txs) == {j: 1 for j in [*jobs, later]}
    assert sorted(tx["nonce"] for tx in txs) == list(range(txs[0]["nonce"], txs[0]["nonce"] + 5))


async def test_outputs_are_repriced_and_land_while_the_base_fee_is_held_high(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    jobs = await new_jobs(devnet, [enclave.address], 3, deadline_ms=12_000)
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        await devnet.set_automine(False)
        pending = [asyncio.create_task(submit(runner, devnet, j)) for j in jobs]
        await wait_until(lambda: txm.in_flight == len(jobs), timeout=10, what="3 txs in the pool")
        first_cap = txm.current_fees().cap
        high = max(20 * GWEI, 4 * first_cap)  # far above every pending tx's fee cap
        hold = asyncio.Event()

        async def hold_base_fee() -> None:
            while not hold.is_set():
                await Rpc(w3)("anvil_setNextBlockBaseFeePerGas", hex(high))
                await Rpc(w3)("evm_mine")
                await asyncio.sleep(0.3)

        holder = asyncio.create_task(hold_base_fee())
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*pending), 30)
        finally:
            hold.set()
            await holder
            await devnet.set_automine(True)
    for outcome in outcomes:
        assert outcome.mined, outcome
        assert outcome.block_number is not None
        block = await w3.eth.get_block(outcome.block_number)
        assert block["baseFeePerGas"] == high  # landed during the hold
        tx = await w3.eth.get_transaction(outcome.tx_hash)  # type: ignore[arg-type]
        assert tx["maxFeePerGas"] >= high > first_cap  # re-priced
    for job_id in jobs:
        assert len(await devnet.job_responses(job_id)) == 1


async def test_a_burst_on_a_chain_that_mines_each_transaction_replaces_nothing(
    w3: AsyncWeb3[Any], devnet: Devnet, enclave: EnclaveKey, caplog: pytest.LogCaptureFixture
) -> None:
    """On automine anvil every output sent is a block: three blocks pass within milliseconds of
    a send while the manager has not yet read the nonce that says it was mined. Taking that for a
    stuck transaction replaced outputs that were fine, and each replacement was itself a block (a
    storm of re-priced replacements, seen in the end-to-end benchmark)."""
    caplog.set_level(logging.INFO, logger="executor.chain.transactions.inflight")
    jobs = await new_jobs(devnet, [enclave.address], 40, deadline_ms=15_000)
    start = await w3.eth.block_number

    async def staggered(runner: JobRunner, index: int, job_id: int) -> TxOutcome:
        await asyncio.sleep(0.015 * index)  # outputs trickle out, as a burst's executions end
        return await submit(runner, devnet, job_id)

    txm = TxManager(w3, [w3], await w3.eth.chain_id)  # the daemon's polling
    txm.set_account(GAS_ACCOUNT)
    await txm.start()
    try:
        runner = runner_for(txm, enclave, devnet)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(staggered(runner, i, j) for i, j in enumerate(jobs))), 60
        )
    finally:
        await txm.close()
    assert [o.status for o in outcomes] == [TxStatus.MINED] * len(jobs)
    assert [r.getMessage() for r in caplog.records if "replacing" in r.getMessage()] == []
    assert outputs_per_job(await sent_by(w3, GAS.address, start)) == {j: 1 for j in jobs}


async def test_transient_rpc_errors_never_send_a_second_output(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    jobs = await new_jobs(devnet, [enclave.address], 4, deadline_ms=15_000)
    start = await w3.eth.block_number
    async with running_relay(anvil.http_url) as proxy:
        flaky = AsyncWeb3(AsyncHTTPProvider(proxy.url))
        try:
            proxy.fail_every = {
                "eth_getTransactionReceipt": 2,
                "eth_getTransactionCount": 2,
                "eth_getBlockByNumber": 3,
                "eth_blockNumber": 2,
            }
            proxy.lose_answer = {"eth_sendRawTransaction": 2}  # sent, but the answer is lost
            async with manager(flaky, anvil.chain_id) as txm:
                runner = runner_for(txm, enclave, devnet)
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*(submit(runner, devnet, j) for j in jobs)), 30
                )
        finally:
            await flaky.provider.disconnect()
    assert [o.status for o in outcomes] == [TxStatus.MINED] * len(jobs)
    assert proxy.failed["eth_sendRawTransaction"] == 2
    assert proxy.failed["eth_getTransactionReceipt"] + proxy.failed["eth_getBlockByNumber"] > 0
    assert outputs_per_job(await sent_by(w3, GAS.address, start)) == {j: 1 for j in jobs}


async def test_insufficient_funds_is_one_clear_error_and_consumes_no_nonce(
    w3: AsyncWeb3[Any],
    anvil: AnvilNode,
    devnet: Devnet,
    enclave: EnclaveKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="executor")
    poor: LocalAccount = Account.create()
    jobs = await new_jobs(devnet, [enclave.address], 3, deadline_ms=30_000)
    async with manager(w3, anvil.chain_id, account=poor) as txm:
        runner = runner_for(txm, enclave, devnet)
        outcomes = [await submit(runner, devnet, j) for j in jobs]
        assert [o.status for o in outcomes] == [TxStatus.NO_FUNDS] * 3
        funds_errors = [
            r.getMessage() for r in caplog.records if "insufficient funds" in r.getMessage()
        ]
        assert len(funds_errors) == 1, funds_errors
        assert poor.address in funds_errors[0] and "balance 0 wei" in funds_errors[0]
        naming = [r for r in caplog.records if poor.address in r.getMessage()]
        assert [r.levelno for r in naming] == [logging.ERROR]

        await devnet.send_eth(USER, poor.address, 10**18)
        funded = await submit(runner, devnet, jobs[0])
    assert funded.mined and funded.nonce == 0  # the refused ones left no gap


async def test_a_slash_of_a_completed_job_ends_at_once_quietly(
    anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey, caplog: pytest.LogCaptureFixture
) -> None:
    (job_id,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=1000)
    async with running_relay(anvil.http_url) as proxy:
        counted = AsyncWeb3(AsyncHTTPProvider(proxy.url))
        try:
            async with manager(counted, anvil.chain_id) as txm:
                assert (await submit(runner_for(txm, enclave, devnet), devnet, job_id)).mined
                await devnet.increase_time(10)  # the window is over: the job is complete
                nonce = await devnet.w3.eth.get_transaction_count(GAS.address)
                caplog.set_level(logging.INFO, logger="executor")
                caplog.clear()
                estimates_before = proxy.calls["eth_estimateGas"]  # the output's one
                watch = Slasher(txm=txm, jobs_contract=devnet.jobs_address)
                outcome = await watch.slash(job_id)
        finally:
            await counted.provider.disconnect()
    assert outcome.status is TxStatus.REVERTED
    assert classify_revert(outcome.revert_data).refusal is Refusal.SETTLED
    assert proxy.calls["eth_estimateGas"] == estimates_before + 1  # one attempt, no retries
    assert await devnet.w3.eth.get_transaction_count(GAS.address) == nonce  # nothing sent
    assert [r.levelname for r in caplog.records if r.name.startswith("executor")] == ["INFO"]


async def test_a_slash_sent_too_early_is_retried_until_due(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet
) -> None:
    (job_id,) = await new_jobs(devnet, [NOBODY], 1, deadline_ms=1000)
    async with manager(w3, anvil.chain_id) as txm:
        watch = Slasher(txm=txm, jobs_contract=devnet.jobs_address)
        outcome = await watch.slash(job_id)  # due 1 + 2 s after the job's block
    assert outcome.mined, outcome
    assert [s.enclave_address for s in await devnet.slash_events(job_id)] == [NOBODY]


async def test_cancelling_a_pending_output_withdraws_it_with_a_noop(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    withdrawn, later = await new_jobs(devnet, [enclave.address], 2, deadline_ms=15_000)
    start = await w3.eth.block_number
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        await devnet.set_automine(False)
        task = asyncio.create_task(submit(runner, devnet, withdrawn))
        await wait_until(lambda: txm.in_flight == 1, timeout=10, what="the output in the pool")
        task.cancel()  # e.g. a reorg removed the job
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(
            lambda: txm.in_flight == 1 and txm.withdrawing == 1, timeout=5, what="the no-op"
        )
        await devnet.set_automine(True)  # mines the pool: the no-op replaced the output
        await wait_until(lambda: txm.in_flight == 0, timeout=10, what="the no-op to be mined")
        assert (await submit(runner, devnet, later)).mined
    assert await devnet.job_responses(withdrawn) == []
    txs = await sent_by(w3, GAS.address, start)
    assert outputs_per_job(txs) == {later: 1}
    noop = txs[0]
    assert (noop["to"], noop["value"], noop["input"]) == (GAS.address, 0, b"")


async def test_a_nonce_used_behind_the_managers_back_is_re_read_not_retried_blindly(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    first, second = await new_jobs(devnet, [enclave.address], 2, deadline_ms=30_000)
    async with manager(w3, anvil.chain_id) as txm:
        runner = runner_for(txm, enclave, devnet)
        assert (await submit(runner, devnet, first)).mined
        # Another process sends with the same key: the manager's next nonce is now taken.
        taken = await devnet.send_eth(GAS, USER.address, 1)
        outcome = await submit(runner, devnet, second)
    assert outcome.mined, outcome
    assert (
        outcome.nonce == int((await w3.eth.get_transaction(taken["transactionHash"]))["nonce"]) + 1
    )


async def test_the_fixed_gas_bound_is_no_longer_enough_and_the_estimate_is(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    """The devnet costs what production does for a submission (payments stand-in): the fixed
    300k + 64/byte bound the daemon once sent with would revert there; the estimate lands."""
    (job_id,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=60_000)
    now = await devnet.chain_time()
    signature = sign_output(enclave, job_id, b"", 1, 0, now)
    data = submit_output_calldata(signature, job_id, b"", 1, 0, now)
    used = await w3.eth.estimate_gas({"from": GAS.address, "to": devnet.jobs_address, "data": data})
    assert used > submit_output_gas_bound(data)
    async with manager(w3, anvil.chain_id) as txm:
        assert (await submit(runner_for(txm, enclave, devnet), devnet, job_id)).mined


async def test_a_receipt_that_lags_its_mined_nonce_is_waited_for(
    anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    """A busy node can count a nonce as mined before it serves the receipt (the soak test saw
    it on anvil): a few missing receipts in quick succession are not "a tx not sent by us"."""
    (job_id,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=30_000)
    lagging = [6]

    async def receipt_lags(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getTransactionReceipt" and result is not None and lagging[0] > 0:
            lagging[0] -= 1
            return None
        return result

    async with lying_rpc_proxy(anvil.http_url) as proxy:
        proxy.rewrite = receipt_lags
        client = AsyncWeb3(AsyncHTTPProvider(proxy.url))
        try:
            async with manager(client, anvil.chain_id) as txm:
                outcome = await submit(runner_for(txm, enclave, devnet), devnet, job_id)
        finally:
            await client.provider.disconnect()
    assert lagging == [0]
    assert outcome.mined, outcome


@pytest.mark.parametrize("size", [MAX_OUTPUT_BYTES])
async def test_the_output_gas_bound_covers_the_bytes(
    w3: AsyncWeb3[Any], devnet: Devnet, enclave: EnclaveKey, size: int
) -> None:
    (job_id,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=60_000)
    now = await devnet.chain_time()
    output = b"\xff" * size
    signature = sign_output(enclave, job_id, output, 1, 0, now)
    data = submit_output_calldata(signature, job_id, output, 1, 0, now)
    used = await w3.eth.estimate_gas({"from": GAS.address, "to": devnet.jobs_address, "data": data})
    assert used < submit_output_gas_bound(data)


async def test_a_hanging_endpoint_does_not_hold_up_the_broadcast(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    (job_id,) = await new_jobs(devnet, [enclave.address], 1, deadline_ms=30_000)
    async with running_relay(anvil.http_url) as proxy:
        proxy.hang = {"eth_sendRawTransaction"}
        hanging = AsyncWeb3(AsyncHTTPProvider(proxy.url))
        txm = TxManager(w3, [hanging, w3], anvil.chain_id, poll_s=0.1, idle_poll_s=0.2)
        txm.set_account(GAS_ACCOUNT)
        await txm.start()
        try:
            outcome = await asyncio.wait_for(
                submit(runner_for(txm, enclave, devnet), devnet, job_id), 20
            )
        finally:
            await txm.close()  # also abandons the send still waiting on the hanging endpoint
            await hanging.provider.disconnect()
    assert outcome.mined
    assert proxy.calls["eth_sendRawTransaction"] == 1
