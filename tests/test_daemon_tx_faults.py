"""The whole daemon when the chain loses its transactions: mining paused during a burst of jobs,
every pending transaction of the gas account dropped, mining resumed. Every output still lands in
its window, and a job created afterwards is answered (no nonce gap)."""

from __future__ import annotations

import asyncio

from executor.chain.jobs_contract import SUBMIT_OUTPUT_SELECTOR
from oyster_devnet.contracts import Devnet
from tests.chain_helpers import ROLES, Rpc
from tests.node_helpers import CODE_ECHO, RegisteredNode, wait_until

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
BURST = 4


async def jobs_in_one_block(devnet: Devnet, codehash: str, count: int) -> list[int]:
    """Create ``count`` jobs while mining is paused, then mine them in one block."""
    creating = [
        asyncio.create_task(
            devnet.create_job(
                USER, codehash=codehash, code_inputs=f"in-{i}".encode(), deadline_ms=10_000
            )
        )
        for i in range(count)
    ]

    async def all_pooled() -> bool:
        status = await Rpc(devnet.w3)("txpool_status")
        return int(status["pending"], 16) == count

    await wait_until(all_pooled, timeout=10, what="the createJob txs in the pool")
    await Rpc(devnet.w3)("evm_mine")
    return list(await asyncio.gather(*creating))


async def test_outputs_land_after_the_pool_is_dropped_while_mining_is_paused(
    registered_node: RegisteredNode, devnet: Devnet
) -> None:
    daemon, files = registered_node
    assert daemon.service is not None
    txm = daemon.service.txm
    codehash = await devnet.save_code(USER, CODE_ECHO)
    start = await devnet.w3.eth.block_number
    await devnet.set_automine(False)
    try:
        burst = await jobs_in_one_block(devnet, codehash, BURST)
        await wait_until(
            lambda: txm.in_flight == BURST, timeout=20, what="every output pending in the pool"
        )
        await Rpc(devnet.w3)("anvil_dropAllTransactions")
    finally:
        await devnet.set_automine(True)
    for i, job_id in enumerate(burst):
        (response,) = await wait_until(
            lambda j=job_id: devnet.job_responses(j), timeout=20, what=f"job {job_id}'s output"
        )
        assert (response.executor, response.output) == (files.key.address, f"echo:in-{i}".encode())
    later = await devnet.create_job(USER, codehash=codehash, code_inputs=b"later", deadline_ms=5000)
    await wait_until(lambda: devnet.job_responses(later), timeout=20, what="the later job's output")

    sent = []
    for number in range(start + 1, await devnet.w3.eth.block_number + 1):
        block = await devnet.w3.eth.get_block(number, full_transactions=True)
        sent += [tx for tx in block["transactions"] if tx["from"] == GAS.address]  # type: ignore[index]
    outputs = [tx for tx in sent if bytes(tx["input"])[:4] == SUBMIT_OUTPUT_SELECTOR]
    assert len(outputs) == BURST + 1  # exactly one output each
    nonces = sorted(tx["nonce"] for tx in sent)
    assert nonces == list(range(nonces[0], nonces[0] + len(nonces)))  # no gap
