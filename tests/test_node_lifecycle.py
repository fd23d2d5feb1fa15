"""The node's on-chain life on a real anvil: registration, drain / revive / deregister, slashing of
jobs nobody answered, and gas key rotation while running (docs/protocol.md §3, §6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account

from executor.admin.client import AdminClient
from executor.daemon import Daemon
from executor.node import NodeStatus
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import (
    NodeFiles,
    init_and_register,
    register_on_chain,
    write_node_files,
)
from tests.chain_helpers import ROLES
from tests.fault_helpers import submit_output_txs
from tests.node_helpers import (
    CODE_ECHO,
    running_daemon,
    seen_through_latest,
    wait_registered,
    wait_until,
)
from tests.ws_proxy import running_ws_proxy

OWNER, GAS, USER, NEW_GAS = ROLES.owner, ROLES.gas, ROLES.user, DEV_ACCOUNTS[5]
NOBODY = Account.create().address


@pytest.fixture
async def node(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> AsyncIterator[tuple[Daemon, NodeFiles]]:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    async with running_daemon(files) as daemon:
        yield daemon, files


def status(daemon: Daemon) -> NodeStatus:
    assert daemon.service is not None
    return daemon.service.status


async def registered(daemon: Daemon, devnet: Devnet) -> None:
    await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
    await wait_registered(daemon)


async def answered(devnet: Devnet, job_id: int) -> bool:
    return bool(await devnet.job_responses(job_id))


async def test_jobs_are_ignored_until_registration_is_seen(
    node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    daemon, files = node
    client = AdminClient(daemon.admin_url)
    await client.init(
        owner_address=OWNER.address,
        executor_gas_key=GAS.private_key,
        store_gas_key="",
        ws_api_key="",
    )
    assert status(daemon) is NodeStatus.AWAITING_REGISTRATION
    codehash = await devnet.save_code(USER, CODE_ECHO)
    early = await devnet.create_job(
        USER,
        codehash=codehash,
        code_inputs=b"early",
        deadline_ms=3000,
        executors=[files.key.address],
    )
    await registered_on_chain(daemon, devnet)
    later = await devnet.create_job(USER, codehash=codehash, code_inputs=b"later", deadline_ms=3000)
    await wait_until(lambda: answered(devnet, later), timeout=20, what="the later job's output")
    assert not await answered(devnet, early)


async def registered_on_chain(daemon: Daemon, devnet: Devnet) -> None:
    client = AdminClient(daemon.admin_url)
    message = (await client.expect_ok("GET", "/signed-registration-message")).json()
    details = (await client.expect_ok("GET", "/tee-details")).json()
    await register_on_chain(devnet, OWNER, details, message)
    await wait_registered(daemon)


async def test_drain_revive_deregister(node: tuple[Daemon, NodeFiles], devnet: Devnet) -> None:
    daemon, files = node
    me = files.key.address
    await registered(daemon, devnet)
    codehash = await devnet.save_code(USER, CODE_ECHO)

    await devnet.drain_node(OWNER, me)
    await wait_until(lambda: status(daemon) is NodeStatus.DRAINED, timeout=10, what="drain seen")
    while_drained = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"drained", deadline_ms=3000, executors=[me]
    )

    await devnet.revive_node(OWNER, me)
    after_revive = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"revived", deadline_ms=3000
    )
    await wait_until(lambda: answered(devnet, after_revive), timeout=20, what="revived job output")
    # Events are handled in chain order: the drained-time job was seen before, and skipped.
    assert not await answered(devnet, while_drained)
    assert status(daemon) is NodeStatus.ACTIVE

    await devnet.deregister_node(OWNER, me)
    await wait_until(lambda: status(daemon) is NodeStatus.IDLE, timeout=10, what="deregister seen")
    after_deregister = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"gone", deadline_ms=2000, executors=[me]
    )
    # Deregistered, the node has stopped following the chain, so no event can show that it ignores
    # the job: a short quiet period is the point (an answer takes well under a second here).
    await asyncio.sleep(1.0)
    assert daemon.service is not None and after_deregister not in daemon.service.watch.running
    assert not await answered(devnet, after_deregister)


async def test_unanswered_job_is_slashed_by_this_node(
    node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    daemon, _ = node
    await registered(daemon, devnet)
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"x", deadline_ms=1000, executors=[NOBODY]
    )
    # Due at deadline + buffer + 1 s = 1 + 2 + 1 s after the event was seen.
    slashes = await wait_until(
        lambda: devnet.slash_events(job_id), timeout=15, what="SlashedOnExecutionTimeout"
    )
    assert [s.enclave_address for s in slashes] == [NOBODY]
    tx = await devnet.w3.eth.get_transaction(slashes[0].tx_hash)  # type: ignore[arg-type]
    assert tx["from"] == GAS.address
    assert daemon.service is not None and job_id not in daemon.service.watch.running


async def test_answered_job_leaves_the_running_set(
    node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    daemon, _ = node
    await registered(daemon, devnet)
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(USER, codehash=codehash, code_inputs=b"x", deadline_ms=1000)
    await wait_until(lambda: answered(devnet, job_id), timeout=20, what="the job's output")
    assert daemon.service is not None
    await wait_until(
        lambda: job_id not in daemon.service.watch.running,  # type: ignore[union-attr]
        timeout=5,
        what="the job to complete",
    )
    # Its timeout timer is cancelled with it: nothing can slash it later, even after a new block.
    await seen_through_latest(daemon, devnet)
    assert job_id not in daemon.service.watch.running
    assert job_id not in daemon.service.watch.slashed
    assert await devnet.slash_events(job_id) == []


async def test_gas_and_ws_key_rotation_take_effect_while_running(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    async with running_ws_proxy(anvil.ws_url, keys={"first"}) as proxy:
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=proxy.url)
        async with running_daemon(files) as daemon:
            await init_and_register(
                daemon.admin_url, devnet, owner=OWNER, gas=GAS, ws_api_key="first"
            )
            await wait_registered(daemon)
            # The operator rotates both keys; the old ws key stops working at the provider.
            proxy.keys = {"second"}
            await AdminClient(daemon.admin_url).expect_ok(
                "POST",
                "/mutable-config",
                {
                    "executor_gas_key": NEW_GAS.private_key,
                    "secret_store_gas_key": "",
                    "ws_api_key": "second",
                },
            )
            await proxy.drop_all()
            codehash = await devnet.save_code(USER, CODE_ECHO)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"x", deadline_ms=3000
            )
            (response,) = await wait_until(
                lambda: devnet.job_responses(job_id), timeout=20, what="the job's output"
            )
    tx = await devnet.w3.eth.get_transaction(response.tx_hash)  # type: ignore[arg-type]
    assert tx["from"] == NEW_GAS.address
    assert "second" in proxy.paths and "first" in proxy.paths


async def test_websocket_outage_loses_and_doubles_nothing(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.node")
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=proxy.url)
        async with running_daemon(files) as daemon:
            await registered(daemon, devnet)
            codehash = await devnet.save_code(USER, CODE_ECHO)
            before = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"1", deadline_ms=3000
            )
            await wait_until(lambda: answered(devnet, before), timeout=20, what="first output")
            # Outage: connections dropped and refused while jobs are created.
            proxy.down = True
            await proxy.drop_all()
            during = [  # named: two at once may exceed the node's job capacity
                await devnet.create_job(
                    USER,
                    codehash=codehash,
                    code_inputs=b"2",
                    deadline_ms=5000,
                    executors=[files.key.address],
                )
                for _ in range(2)
            ]
            await asyncio.sleep(1.0)
            proxy.down = False
            for job_id in during:
                await wait_until(
                    lambda j=job_id: answered(devnet, j), timeout=20, what="backfilled job"
                )
            # A plain reconnect re-reads the last block: still nothing runs twice.
            await proxy.drop_all()
            after = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"3", deadline_ms=3000
            )
            await wait_until(
                lambda: answered(devnet, after), timeout=20, what="output after reconnect"
            )
    assert proxy.connections >= 3
    for job_id in [before, *during, after]:
        assert len(await devnet.job_responses(job_id)) == 1
        executions = [
            r for r in caplog.records if r.getMessage().startswith(f"job {job_id}: selected")
        ]
        assert len(executions) == 1, f"job {job_id} executed {len(executions)} times"


async def test_concurrent_registration_requests_start_one_stream(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    """Each request reads the chain before it starts following: without serialization, requests
    that overlap each started a stream and a follower (two outputs per job, and a ws key rotation
    that reconnects only one of them)."""
    async with running_ws_proxy(anvil.ws_url, keys={"first"}) as proxy:
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=proxy.url)
        async with running_daemon(files) as daemon:
            assert daemon.service is not None
            client = AdminClient(daemon.admin_url)
            await client.expect_ok(
                "POST", "/immutable-config", {"owner_address_hex": OWNER.address}
            )
            await client.expect_ok(
                "POST",
                "/mutable-config",
                {
                    "executor_gas_key": GAS.private_key,
                    "secret_store_gas_key": "",
                    "ws_api_key": "first",
                },
            )
            replies = await asyncio.gather(
                *(client.request("GET", "/signed-registration-message") for _ in range(4))
            )
            assert [r.status for r in replies] == [200] * 4
            followers = [t for t in asyncio.all_tasks() if "follower" in t.get_name()]
            assert len(followers) == 1
            await register_on_chain(
                devnet,
                OWNER,
                (await client.expect_ok("GET", "/tee-details")).json(),
                replies[0].json(),
            )
            await wait_registered(daemon)
            codehash = await devnet.save_code(USER, CODE_ECHO)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"x", deadline_ms=3000
            )
            await wait_until(lambda: answered(devnet, job_id), timeout=20, what="the output")
            assert proxy.connections == 1
            outputs = await submit_output_txs(devnet, GAS.address, 0)
    assert outputs[job_id] == 1
