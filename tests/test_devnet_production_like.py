"""The devnet Jobs contract behaves like production where a daemon or a dApp can tell.

Job ids from 0, ``totalTime`` clamped to the deadline, the job owner's callbacks with their events,
a submission costing gas of production's order, and ``createJob`` refusing while no executor has a
free job slot (an output or a slash frees it). On a real anvil, with outputs signed by a registered
enclave key.
"""

from __future__ import annotations

from typing import Any

import pytest
from web3 import AsyncWeb3

from executor.chain.enclave_key import EnclaveKey
from executor.chain.jobs_contract import (
    sign_output,
    submit_output_calldata,
    submit_output_gas_bound,
)
from oyster_devnet.contracts import Devnet
from oyster_devnet.transactions import TransactionReverted
from tests.test_tx_faults import GAS, OWNER, USER

__all__: list[str] = []


async def register(devnet: Devnet, capacity: int) -> EnclaveKey:
    key = EnclaveKey.generate()
    now = await devnet.chain_time()
    signature = key.sign_registration(OWNER.address, capacity, 0, 1, now)
    await devnet.register_node(OWNER, key.public_key, capacity, 0, 1, now, signature)
    return key


async def create(devnet: Devnet, owner: Any = None, deadline_ms: int = 5000) -> int:
    if owner is not None:
        return await devnet.consumer_request(
            USER, owner, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=deadline_ms
        )
    return await devnet.create_job(
        USER, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=deadline_ms
    )


async def answer(devnet: Devnet, key: EnclaveKey, job_id: int, total_time: int = 7) -> Any:
    now = await devnet.chain_time()
    return await devnet.submit_output(
        GAS,
        signature=sign_output(key, job_id, b"out", total_time, 0, now),
        job_id=job_id,
        output=b"out",
        total_time=total_time,
        error_code=0,
        sign_timestamp=now,
    )


async def test_ids_from_zero_clamped_total_time_and_the_result_callback(devnet: Devnet) -> None:
    key = await register(devnet, 5)
    consumer = await devnet.deploy_consumer(USER)
    first = await create(devnet, consumer, deadline_ms=1000)
    assert first == 0
    await answer(devnet, key, first, total_time=99_999)  # longer than the deadline
    (response,) = await devnet.job_responses(first)
    assert response.total_time == 1000  # clamped, as production's JobResponded
    assert await devnet.callback_events(first) == [("result", True)]
    stored = await devnet.consumer_result(consumer, first)
    assert (stored.received, stored.output, stored.total_time_ms) == (True, b"out", 1000)
    assert await create(devnet) == 1


async def test_create_job_refuses_while_no_executor_is_free(devnet: Devnet) -> None:
    key = await register(devnet, 1)
    busy = await create(devnet, deadline_ms=1000)
    with pytest.raises(TransactionReverted, match="JobsExecutorsUnavailable"):
        await create(devnet)
    await answer(devnet, key, busy)  # the output frees the slot
    unanswered = await create(devnet, deadline_ms=1000)
    with pytest.raises(TransactionReverted, match="JobsExecutorsUnavailable"):
        await create(devnet)
    await devnet.increase_time(devnet.execution_buffer_time + 5)
    assert len(await devnet.slash_on_timeout(USER, unanswered)) == 1  # so does the slash
    await create(devnet)


async def test_a_slash_of_an_unanswered_job_calls_the_failure_callback(devnet: Devnet) -> None:
    await register(devnet, 1)
    consumer = await devnet.deploy_consumer(USER)
    job_id = await create(devnet, consumer, deadline_ms=1000)
    await devnet.increase_time(devnet.execution_buffer_time + 5)
    await devnet.slash_on_timeout(USER, job_id)
    assert await devnet.callback_events(job_id) == [("failure", True)]
    assert (await devnet.consumer_result(consumer, job_id)).failed


async def test_a_submission_costs_gas_of_production_order(
    w3: AsyncWeb3[Any], devnet: Devnet
) -> None:
    """Production's submitOutput to an account owner used ~270k-330k gas for a short output
    (its payments and the executor's release); the devnet must not be much cheaper, or a bound
    tuned on it would fail there."""
    key = await register(devnet, 1)
    job_id = await create(devnet)
    now = await devnet.chain_time()
    signature = sign_output(key, job_id, b"out", 7, 0, now)
    data = submit_output_calldata(signature, job_id, b"out", 7, 0, now)
    used = await w3.eth.estimate_gas({"from": GAS.address, "to": devnet.jobs_address, "data": data})
    assert 250_000 < used < 600_000
    assert used > submit_output_gas_bound(data)
