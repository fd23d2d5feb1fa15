"""Three daemons on one devnet whose jobs select two executors each (num_selected_executors = 2):
every job is answered by exactly its two selected enclaves, and a job whose second executor never
answers is slashed exactly once, by whichever node gets there first."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.conftest import DEVNET_EXECUTION_BUFFER_TIME
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until

OWNER, USER = ROLES.owner, ROLES.user
GAS = (DEV_ACCOUNTS[2], DEV_ACCOUNTS[5], DEV_ACCOUNTS[6])
NOBODY = Account.create().address


@pytest.fixture
async def devnet2(w3: Any) -> Devnet:
    return await deploy_devnet(
        w3,
        DEV_ACCOUNTS[0],
        execution_buffer_time=DEVNET_EXECUTION_BUFFER_TIME,
        num_selected_executors=2,
    )


@contextlib.asynccontextmanager
async def three_nodes(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> AsyncIterator[list[tuple[Daemon, NodeFiles]]]:
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i, gas in enumerate(GAS):
            files = write_node_files(tmp_path / f"node{i}", anvil, devnet)
            daemon = await stack.enter_async_context(running_daemon(files))
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=gas)
            await wait_registered(daemon)
            nodes.append((daemon, files))
        yield nodes


async def test_two_of_three_answer_and_a_half_answered_job_is_slashed_once(
    tmp_path: Path, anvil: AnvilNode, devnet2: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    devnet = devnet2
    async with three_nodes(tmp_path, anvil, devnet) as nodes:
        enclaves = [files.key.address for _, files in nodes]
        codehash = await devnet.save_code(USER, CODE_ECHO)
        selected = {}
        for i in range(4):
            # One after the other: like production, createJob selects only executors with a free
            # job slot (each node here has one), so a burst would find them busy.
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"%d" % i, deadline_ms=4000
            )
            selected[job_id] = (await devnet.job(job_id)).selected_executors  # type: ignore[union-attr]
            responses = await wait_until(
                lambda j=job_id: _complete(devnet, j, 2), timeout=20, what=f"job {job_id} answers"
            )
            assert sorted(r.executor for r in responses) == sorted(selected[job_id])
            assert [r.output_count for r in responses] == [1, 2]
        assert {e for s in selected.values() for e in s} <= set(enclaves)

        half = await devnet.create_job(
            USER,
            codehash=codehash,
            code_inputs=b"half",
            deadline_ms=1000,
            executors=[enclaves[0], NOBODY],
        )
        (response,) = await wait_until(
            lambda: devnet.job_responses(half), timeout=20, what="the selected node's output"
        )
        assert response.executor == enclaves[0]
        slashes = await wait_until(
            lambda: devnet.slash_events(half), timeout=20, what="the slash of the half-answered job"
        )
        for daemon, _ in nodes:
            assert daemon.service is not None
            await wait_until(
                lambda d=daemon: half not in d.service.watch.running,  # type: ignore[union-attr]
                timeout=10,
                what="every node to stop watching the slashed job",
            )
    assert [s.enclave_address for s in slashes] == [NOBODY]
    assert len(await devnet.slash_events(half)) == 1
    # Every node watches every job; the ones beaten to the slash do not fail noisily.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "slash" in r.getMessage()]
    assert errors == []


async def _complete(devnet: Devnet, job_id: int, count: int) -> list[Any] | None:
    responses = await devnet.job_responses(job_id)
    return responses if len(responses) >= count else None
