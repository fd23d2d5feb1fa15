"""The whole daemon on a real anvil against jobs written to exhaust the host: a block full of
spinning jobs, and jobs that exhaust their memory. Every job is answered on chain, none of this
enclave's jobs is slashed, and the next job is answered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor.daemon import Daemon
from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet, JobResponse
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.sandbox_helpers import slice_parent
from tests.test_daemon_tx_faults import rpc
from tests.test_hostile_jobs import HEAP_BLOAT_JS

pytestmark = (
    pytest.mark.alone
)  # 19 spinning jobs: their timing is the point, on a machine of its own

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
SLICES = 20
SPIN_JS = "export default { async fetch() { for (;;) {} } };"
DEADLINE_MS = 5000


@pytest.fixture
async def node(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> AsyncIterator[tuple[Daemon, NodeFiles]]:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    with slice_parent(count=SLICES) as parent:
        async with running_daemon(files, cgroup_parent=parent) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            yield daemon, files


async def in_one_block(devnet: Devnet, jobs: list[tuple[str, bytes]]) -> list[int]:
    """Create the jobs ``(codehash, inputs)`` while mining is paused, then mine them in one
    block; their ids, from their own receipts."""
    await devnet.set_automine(False)
    try:
        creating = [
            asyncio.create_task(
                devnet.create_job(
                    USER, codehash=codehash, code_inputs=inputs, deadline_ms=DEADLINE_MS
                )
            )
            for codehash, inputs in jobs
        ]

        async def all_pooled() -> bool:
            status = await rpc(devnet, "txpool_status")
            return int(status["pending"], 16) == len(jobs)

        await wait_until(all_pooled, timeout=20, what="the createJob txs in the pool")
        await devnet.mine()
    finally:
        await devnet.set_automine(True)
    return list(await asyncio.gather(*creating))


async def response_of(devnet: Devnet, job_id: int, wait_s: float = 40) -> JobResponse:
    (response,) = await wait_until(
        lambda: devnet.job_responses(job_id), timeout=wait_s, what=f"job {job_id}'s output"
    )
    return response


async def test_a_block_of_spinning_jobs_does_not_starve_a_normal_one(
    node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    _, files = node
    spin = await devnet.save_code(USER, SPIN_JS)
    echo = await devnet.save_code(USER, CODE_ECHO)
    ids = await in_one_block(devnet, [(spin, b"")] * (SLICES - 1) + [(echo, b"normal")])
    *spinners, normal = ids
    answer = await response_of(devnet, normal)
    assert (answer.executor, answer.error_code) == (files.key.address, ErrorCode.OK)
    assert answer.output == b"echo:normal"
    assert answer.total_time < DEADLINE_MS / 2  # well within its deadline
    for job_id in spinners:
        response = await response_of(devnet, job_id)
        assert (response.executor, response.error_code) == (
            files.key.address,
            ErrorCode.DEADLINE_EXCEEDED,
        )
    for job_id in ids:
        assert await devnet.slash_events(job_id) == []


async def test_jobs_exhausting_their_memory_are_answered_and_nothing_is_slashed(
    node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    _, files = node
    bloat = await devnet.save_code(USER, HEAP_BLOAT_JS.decode())
    ids = await in_one_block(devnet, [(bloat, b"")] * 2)
    for job_id in ids:
        response = await response_of(devnet, job_id)
        assert response.executor == files.key.address
        assert (response.error_code, response.output) == (ErrorCode.OK, b"Internal Server Error")
    echo = await devnet.save_code(USER, CODE_ECHO)
    after = await devnet.create_job(USER, codehash=echo, code_inputs=b"next", deadline_ms=5000)
    assert (await response_of(devnet, after)).output == b"echo:next"
    for job_id in ids:
        assert await devnet.slash_events(job_id) == []
