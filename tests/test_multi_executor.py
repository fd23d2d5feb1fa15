"""Two executors on one devnet with ``num_selected_executors = 2`` (docs/protocol.md §3): a job
whose second selected executor never answers is slashed exactly once, and the node that finds it
already slashed says so quietly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncWeb3

from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.conftest import DEVNET_EXECUTION_BUFFER_TIME, DEVNET_SIGN_MAX_AGE
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until

OWNER, USER = ROLES.owner, ROLES.user
GAS_KEYS = (DEV_ACCOUNTS[2], DEV_ACCOUNTS[4])
NOBODY = Account.create().address


@pytest.fixture
async def devnet2(w3: AsyncWeb3[Any]) -> Devnet:
    return await deploy_devnet(
        w3,
        DEV_ACCOUNTS[0],
        execution_buffer_time=DEVNET_EXECUTION_BUFFER_TIME,
        num_selected_executors=2,
        sign_max_age=DEVNET_SIGN_MAX_AGE,
    )


@pytest.fixture
async def two_nodes(
    tmp_path: Path, anvil: AnvilNode, devnet2: Devnet
) -> AsyncIterator[list[tuple[Daemon, NodeFiles]]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for name, gas in zip("ab", GAS_KEYS, strict=True):
            files = write_node_files(tmp_path / name, anvil, devnet2)
            daemon = await stack.enter_async_context(running_daemon(files))
            await init_and_register(daemon.admin_url, devnet2, owner=OWNER, gas=gas)
            await wait_registered(daemon)
            nodes.append((daemon, files))
        yield nodes


async def test_a_job_missing_its_second_output_is_slashed_once(
    two_nodes: list[tuple[Daemon, NodeFiles]],
    devnet2: Devnet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="executor")
    (_, answering), _ = two_nodes
    codehash = await devnet2.save_code(USER, CODE_ECHO)
    job_id = await devnet2.create_job(
        USER,
        codehash=codehash,
        code_inputs=b"x",
        deadline_ms=1000,
        executors=[answering.key.address, NOBODY],
    )
    (response,) = await wait_until(
        lambda: devnet2.job_responses(job_id), timeout=20, what="the first selected node's output"
    )
    assert (response.executor, response.output_count) == (answering.key.address, 1)
    slashes = await wait_until(
        lambda: devnet2.slash_events(job_id), timeout=20, what="SlashedOnExecutionTimeout"
    )
    # Both nodes' timeout watches fire (deadline + buffer + 1 s): let the second one finish.
    label = f"job {job_id} slashOnExecutionTimeout: "

    def settled() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(label)]

    await wait_until(lambda: len(settled()) >= 2, timeout=20, what="both nodes' slash outcomes")
    await asyncio.sleep(0.5)  # a short quiet period is the point: no third outcome may follow
    outcomes = sorted(m.removeprefix(label).split(" ")[0] for m in settled())
    assert outcomes == ["nothing", "slashed"]  # one slashed it; the other found it settled
    assert [s.enclave_address for s in await devnet2.slash_events(job_id)] == [NOBODY]
    assert len(slashes) == 1
    noisy = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and f"job {job_id}" in r.getMessage()
    ]
    assert noisy == []
