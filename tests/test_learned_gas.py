"""Outputs of job owners without code go without ``eth_estimateGas``, on a real anvil.

When the job owner is an account, the Jobs contract's call to it runs nothing, so an output's gas
depends only on the contract and the output's size: the ``TxManager`` learns that from the
outputs it estimated for such owners and sends the next ones with twice what it learned, without
an estimate (one round trip less on each output's critical path). Owners with code are still
estimated; a learned limit that is too low runs out of gas on chain and is sent again, estimated;
a refusal of the contract comes back from the receipt. Every RPC call the manager makes goes
through the test relay (``tests/relay.py``), which counts them; outputs go through the real
``JobRunner`` and ``TxManager``; the chain's blocks tell what the gas account sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.chain.enclave_key import EnclaveKey
from executor.chain.jobs_contract import Refusal, classify_revert, submit_output_gas_bound
from executor.chain.transactions.manager import (
    LEARNED_MARGIN,
    OUTPUT_GAS_PER_BYTE,
    TxManager,
    TxStatus,
)
from executor.jobs import JobRunner, Slasher
from executor.metrics import Metrics
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from oyster_devnet.accounts import DevAccount
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import Rpc
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.relay import Relay, running_relay
from tests.test_gas_callbacks import receipts_of, window_end
from tests.test_tx_faults import GAS, GAS_ACCOUNT, OWNER, USER, enclave, runner_for

__all__ = ["enclave"]  # the fixture, re-used

ESTIMATE = "eth_estimateGas"


class Counted(NamedTuple):
    txm: TxManager
    runner: JobRunner
    relay: Relay
    metrics: Metrics

    def limits(self, source: str) -> float:
        """How many output limits were chosen by ``source`` (the metric)."""
        value = self.metrics.registry.get_sample_value(
            "oyster_executor_output_gas_limits_total", {"source": source}
        )
        return value or 0.0


@asynccontextmanager
async def counted(anvil: AnvilNode, devnet: Devnet, key: EnclaveKey) -> AsyncIterator[Counted]:
    """A started manager (and a runner on it) whose every RPC call goes through a relay."""
    async with running_relay(anvil.http_url) as relay:
        w3 = AsyncWeb3(AsyncHTTPProvider(relay.url))
        metrics = Metrics()
        txm = TxManager(w3, [w3], anvil.chain_id, poll_s=0.1, idle_poll_s=0.2, metrics=metrics)
        txm.set_account(GAS_ACCOUNT)
        await txm.start()
        try:
            yield Counted(txm, runner_for(txm, key, devnet), relay, metrics)
        finally:
            await txm.close()
            await w3.provider.disconnect()


async def account_jobs(devnet: Devnet, owner: DevAccount, executor: str, count: int) -> list[int]:
    return [
        await devnet.create_job(
            owner, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=30_000, executors=[executor]
        )
        for _ in range(count)
    ]


async def answer(c: Counted, devnet: Devnet, job_id: int, owner: str, output: bytes) -> Any:
    return await c.runner.submit(
        job_id,
        JobOutcome(output, ErrorCode.OK, 9),
        valid_until=await window_end(devnet, job_id),
        owner=owner,
    )


async def fresh_account(devnet: Devnet) -> DevAccount:
    account = DevAccount.from_key(Account.create().key)
    await devnet.send_eth(USER, account.address, 10**18)
    return account


async def test_the_second_output_of_an_account_owned_job_goes_without_an_estimate(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    first, second, third = await account_jobs(devnet, USER, enclave.address, 3)
    start = await w3.eth.block_number
    async with counted(anvil, devnet, enclave) as c:
        learned_from = await answer(c, devnet, first, USER.address, b"small")
        assert learned_from.mined and learned_from.gas_source == "estimate"
        assert c.relay.calls[ESTIMATE] == 1  # the output's own (the owner has no callback to run)
        learned = c.txm.learned_gas(devnet.jobs_address)
        assert learned is not None and learned.samples == 1

        sent = await answer(c, devnet, second, USER.address, b"a longer output " * 40)
        assert sent.mined, sent
        assert c.relay.calls[ESTIMATE] == 1  # none for this one
        assert sent.gas_source == "learned"
        tx = await w3.eth.get_transaction(sent.tx_hash)  # type: ignore[arg-type]
        size = len(bytes(tx["input"]))
        expected = LEARNED_MARGIN * (learned.base + OUTPUT_GAS_PER_BYTE * size)
        assert (
            tx["gas"]
            == sent.gas_limit
            == max(expected, submit_output_gas_bound(bytes(tx["input"])))
        )
        assert sent.gas_used is not None and sent.gas_used < sent.gas_limit

        # An output without a known owner (nothing says it holds no code) is estimated.
        until = await window_end(devnet, third)
        unowned = await c.runner.submit(third, JobOutcome(b"x", ErrorCode.OK, 1), valid_until=until)
        assert unowned.mined and unowned.gas_source == "estimate"
        assert c.relay.calls[ESTIMATE] == 2
        assert (c.limits("estimate"), c.limits("learned")) == (2, 1)
    assert [r.output for r in await devnet.job_responses(second)] == [b"a longer output " * 40]
    assert [r["status"] for r in await receipts_of(w3, GAS.address, start)] == [1, 1, 1]


async def test_a_learned_limit_that_is_too_low_runs_out_of_gas_and_is_sent_again_estimated(
    w3: AsyncWeb3[Any],
    anvil: AnvilNode,
    devnet: Devnet,
    enclave: EnclaveKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What was learned is set far too low: the output goes with the calldata floor (300k + 64
    per byte, less than the devnet's submission costs), runs out of gas on chain, and is sent
    again with an estimate (never the learned limit again), which raises what was learned; the
    job is answered once and there is nothing to slash."""
    first, second = await account_jobs(devnet, USER, enclave.address, 2)
    caplog.set_level(logging.INFO, logger="executor")
    async with counted(anvil, devnet, enclave) as c:
        assert (await answer(c, devnet, first, USER.address, b"1")).mined
        learned = c.txm.learned_gas(devnet.jobs_address)
        assert learned is not None
        real_base = learned.base
        learned.base = learned.peak = 1_000  # as if the contract had been far cheaper
        start = await w3.eth.block_number
        estimates = c.relay.calls[ESTIMATE]
        sent = await answer(c, devnet, second, USER.address, b"2")
        assert sent.mined, sent
        assert sent.gas_source == "estimate"
        # The replay of the reverted tx on its block's state, and the re-send's estimate.
        assert c.relay.calls[ESTIMATE] == estimates + 2
        assert learned.base > real_base * 9 // 10  # raised by the re-send's estimate
        assert (c.limits("learned"), c.limits("estimate")) == (1, 2)

        watch = Slasher(txm=c.txm, jobs_contract=devnet.jobs_address)
        await devnet.increase_time(devnet.execution_buffer_time + 31)
        slash = await watch.slash(second)
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [0, 1]
    reverted = await w3.eth.get_transaction(receipts[0]["transactionHash"])
    assert reverted["gas"] == submit_output_gas_bound(bytes(reverted["input"]))
    assert [r.output for r in await devnet.job_responses(second)] == [b"2"]
    assert any("ran out of gas (learned limit" in r.getMessage() for r in caplog.records)
    # Answered by its only executor: the slash is refused (nothing to slash) and nothing is sent.
    assert slash.status is TxStatus.REVERTED and slash.tx_hash is None
    assert classify_revert(slash.revert_data).refusal is Refusal.SETTLED
    assert await devnet.slash_events(second) == []


async def test_an_output_the_contract_refuses_on_chain_is_logged_with_its_tx_and_not_resent(
    w3: AsyncWeb3[Any],
    anvil: AnvilNode,
    devnet: Devnet,
    enclave: EnclaveKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a pre-check, a refusal (here: this executor already answered the job) shows in
    the receipt: it is read back, classified and logged as the pre-check's was, and the output
    is not sent again as if it had run out of gas."""
    (job_id,) = await account_jobs(devnet, USER, enclave.address, 1)
    async with counted(anvil, devnet, enclave) as c:
        assert (await answer(c, devnet, job_id, USER.address, b"first")).mined
        start = await w3.eth.block_number
        caplog.set_level(logging.INFO, logger="executor")
        caplog.clear()
        again = await answer(c, devnet, job_id, USER.address, b"second")
    assert again.status is TxStatus.REVERTED and again.gas_source == "learned"
    assert again.tx_hash is not None
    reason = classify_revert(again.revert_data)
    assert (reason.name, reason.refusal) == ("JobsOutputAlreadySubmitted", Refusal.SETTLED)
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [0]  # one tx, not sent again
    messages = [r.getMessage() for r in caplog.records if r.name == "executor.jobs"]
    assert len(messages) == 1 and "refused by the contract on chain" in messages[0]
    assert again.tx_hash in messages[0] and "JobsOutputAlreadySubmitted" in messages[0]
    assert not any("out of gas" in r.getMessage() for r in caplog.records)
    assert [r.output for r in await devnet.job_responses(job_id)] == [b"first"]


async def test_an_owner_that_got_code_after_it_was_read_is_estimated_on_the_re_send(
    w3: AsyncWeb3[Any], anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    """An account may get code later (EIP-7702, a contract deployed at a precomputed address):
    here the owner, read as an account, gets the sample consumer's code, whose callback stores
    a 20 KiB output (~14M gas). The learned limit runs out of gas on chain; the re-send reads
    the owner again, estimates its callback too, and lands with the callback fed; what was
    learned for accounts is not raised by a callback's cost."""
    owner = await fresh_account(devnet)
    small, big = await account_jobs(devnet, owner, enclave.address, 2)
    consumer = await devnet.deploy_consumer(USER)
    async with counted(anvil, devnet, enclave) as c:
        assert (await answer(c, devnet, small, owner.address, b"small")).mined
        learned = c.txm.learned_gas(devnet.jobs_address)
        assert learned is not None
        peak = learned.peak
        code = (await w3.eth.get_code(consumer.address)).to_0x_hex()
        await Rpc(w3)("anvil_setCode", owner.address, code)
        start = await w3.eth.block_number
        sent = await answer(c, devnet, big, owner.address, b"x" * MAX_OUTPUT_BYTES)
        assert sent.mined, sent
        assert learned.peak == peak
    receipts = await receipts_of(w3, GAS.address, start)
    assert [r["status"] for r in receipts] == [0, 1]
    assert receipts[1]["gasUsed"] > 10_000_000
    assert await devnet.callback_events(big) == [("result", True)]
    stored = await devnet.consumer_result(devnet.consumer(owner.address), big)
    assert stored.output == b"x" * MAX_OUTPUT_BYTES


async def test_the_daemon_reads_owners_as_jobs_start_and_estimates_only_where_needed(
    tmp_path: Path, anvil: AnvilNode, w3: AsyncWeb3[Any], devnet: Devnet
) -> None:
    """The whole daemon, its RPC through the relay: the first output (nothing learned yet) is
    estimated; a job of an owner never seen before is read as it starts (its execution here
    waits until the node answered that read, so a read started only at the output would never
    come) and its output goes without an estimate; a job owned by a contract is estimated,
    its callback too, and fed. Every output lands, none reverts."""
    async with running_relay(anvil.http_url) as relay:
        answered: set[str] = set()

        async def note_code_reads(method: str, params: list[Any], result: Any) -> Any:
            if method == "eth_getCode":
                answered.add(str(params[0]).lower())
            return result

        relay.rewrite = note_code_reads
        files = write_node_files(tmp_path / "node", anvil, devnet, http_url=relay.url)
        async with running_daemon(files) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            assert daemon.service is not None
            runner = daemon.service.runner
            real_execute = runner._execute
            newcomer = await fresh_account(devnet)
            newcomer_job = [-1]

            async def once_newcomer_read(*args: Any, **kwargs: Any) -> JobOutcome:
                if kwargs.get("label") == str(newcomer_job[0]):
                    await wait_until(
                        lambda: newcomer.address.lower() in answered,
                        timeout=10,
                        what="the new owner's code read, started with its job",
                    )
                return await real_execute(*args, **kwargs)

            runner._execute = once_newcomer_read
            echo = await devnet.save_code(USER, CODE_ECHO)
            start = await w3.eth.block_number

            async def answered_job(job_id: int) -> bytes:
                (response,) = await wait_until(
                    lambda: devnet.job_responses(job_id), timeout=30, what=f"job {job_id}"
                )
                return response.output

            estimates = [relay.calls[ESTIMATE]]
            first = await devnet.create_job(USER, codehash=echo, code_inputs=b"a", deadline_ms=5000)
            assert await answered_job(first) == b"echo:a"
            estimates.append(relay.calls[ESTIMATE])

            newcomer_job[0] = await devnet.create_job(
                newcomer, codehash=echo, code_inputs=b"b", deadline_ms=5000
            )
            assert await answered_job(newcomer_job[0]) == b"echo:b"
            estimates.append(relay.calls[ESTIMATE])

            consumer = await devnet.deploy_consumer(USER)
            await devnet.set_consumer_behaviour(USER, consumer, burn_gas=2_000_000)
            owned = await devnet.consumer_request(
                USER, consumer, codehash=echo, code_inputs=b"c", deadline_ms=5000
            )
            assert await answered_job(owned) == b"echo:c"
            estimates.append(relay.calls[ESTIMATE])
    per_job = [b - a for a, b in itertools.pairwise(estimates)]
    assert per_job == [1, 0, 2]  # the output's; none; the output's and its callback's
    assert await devnet.callback_events(owned) == [("result", True)]
    assert (await devnet.consumer_result(consumer, owned)).output == b"echo:c"
    receipts = await receipts_of(w3, GAS.address, start)
    assert len(receipts) == 3 and all(r["status"] == 1 for r in receipts), receipts


async def test_an_owner_read_is_shared_and_one_still_under_way_is_ended_by_close(
    anvil: AnvilNode, devnet: Devnet, enclave: EnclaveKey
) -> None:
    """The read ``JobRunner.run`` starts belongs to the manager: jobs of one owner share it,
    and ``close`` ends one the node never answers (no task is left behind)."""
    async with counted(anvil, devnet, enclave) as c:
        c.relay.hang = {"eth_getCode"}
        c.txm.note_owner(USER.address)
        c.txm.note_owner(USER.address)
        await wait_until(lambda: c.relay.calls["eth_getCode"] == 1, timeout=5, what="the read")
        name = f"code of {USER.address}"
        (reading,) = [t for t in asyncio.all_tasks() if t.get_name() == name]
        await asyncio.wait_for(c.txm.close(), 5)
        assert reading.cancelled()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == name]
    assert c.relay.calls["eth_getCode"] == 1
