"""Fault injection on a real anvil, through proxies of the tests' own: websocket connections cut
every 2 s under a stream of jobs, dead RPC endpoints, and a reorg that removes a job whose output
is pending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes

from executor.config import Settings
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import ROLES, Rpc
from tests.fault_helpers import lost_and_duplicated, responses_of, submit_output_txs
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.relay import running_relay
from tests.ws_proxy import WsProxy, running_ws_proxy

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
JOBS = 100
CREATION_S = 20.0
CUT_EVERY_S = 2.0


@contextlib.asynccontextmanager
async def cutting(proxy: WsProxy, every_s: float) -> AsyncIterator[list[int]]:
    """Drops every live websocket connection every ``every_s`` seconds; yields the cut count."""
    cuts = [0]

    async def cut() -> None:
        while True:
            await asyncio.sleep(every_s)
            await proxy.drop_all()
            cuts[0] += 1

    task = asyncio.create_task(cut())
    try:
        yield cuts
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_jobs_under_websocket_cuts_are_answered_exactly_once(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=proxy.url)
        async with running_daemon(files) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            codehash = await devnet.save_code(USER, CODE_ECHO)
            start = await devnet.w3.eth.block_number
            job_ids: list[int] = []
            async with cutting(proxy, CUT_EVERY_S) as cuts:
                loop = asyncio.get_running_loop()
                began = loop.time()
                for i in range(JOBS):
                    # Paced to spread the jobs over CREATION_S seconds.
                    await asyncio.sleep(max(0.0, began + i * CREATION_S / JOBS - loop.time()))
                    job_ids.append(  # named: more at once than the node's job capacity
                        await devnet.create_job(
                            USER,
                            codehash=codehash,
                            code_inputs=b"%d" % i,
                            deadline_ms=5000,
                            executors=[files.key.address],
                        )
                    )
                me = files.key.address

                async def all_answered() -> bool:
                    answered = {r.job_id for r in await responses_of(devnet, me, start)}
                    return answered >= set(job_ids)

                with contextlib.suppress(AssertionError):
                    await wait_until(all_answered, timeout=20, what="every job's output")
            responses = await responses_of(devnet, me, start)
            txs = await submit_output_txs(devnet, GAS.address, start)
            health = daemon.service.health() if daemon.service else {}
    answered = Counter(r.job_id for r in responses)
    lost, duplicated = lost_and_duplicated(job_ids, answered)
    tx_lost, tx_duplicated = lost_and_duplicated(job_ids, txs)
    print(
        f"\n{JOBS} jobs over {CREATION_S:.0f}s, websocket cut every {CUT_EVERY_S:.0f}s "
        f"({cuts[0]} cuts, {proxy.connections} connections): JobResponded lost={len(lost)} "
        f"duplicated={len(duplicated)}; submitOutput txs lost={len(tx_lost)} "
        f"duplicated={len(tx_duplicated)}; stream health {health.get('stream')}"
    )
    assert cuts[0] >= 8 and proxy.connections >= 8
    assert (lost, duplicated) == ([], [])
    assert (tx_lost, tx_duplicated) == ([], [])
    outputs = {r.job_id: r.output for r in responses}
    assert all(outputs[j] == b"echo:%d" % i for i, j in enumerate(job_ids))


async def test_dead_first_endpoints_and_one_killed_mid_run(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    async with (
        running_relay(anvil.http_url) as http1,
        running_relay(anvil.http_url) as http2,
        running_ws_proxy(anvil.ws_url, keys={""}) as ws1,
        running_ws_proxy(anvil.ws_url, keys={""}) as ws2,
    ):
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=ws1.url)
        config = json.loads(files.config_file.read_text())
        config["http_rpc_url"] = [http1.url, http2.url]
        config["web_socket_url"] = [ws1.url, ws2.url]
        files.config_file.write_text(json.dumps(config))
        settings = Settings.load(files.config_file)
        # The first endpoint of each kind is dead from the start.
        http1.mode = "error500"
        ws1.down = True
        async with running_daemon(replace(files, settings=settings)) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            codehash = await devnet.save_code(USER, CODE_ECHO)
            first = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"one", deadline_ms=5000
            )
            await wait_until(lambda: devnet.job_responses(first), timeout=20, what="output 1")
            assert http2.requests["eth_sendRawTransaction"] >= 1
            assert ws2.connections >= 1

            # The first ones come back; the second ones die mid-run.
            http1.mode = "ok"
            ws1.down = False
            await http2.stop()
            ws2.down = True
            await ws2.drop_all()
            second = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"two", deadline_ms=5000
            )
            (response,) = await wait_until(
                lambda: devnet.job_responses(second), timeout=20, what="output 2"
            )
            assert response.output == b"echo:two"
            assert http1.requests["eth_sendRawTransaction"] >= 1
            assert ws1.connections >= 1
            assert daemon.service is not None
            stream = daemon.service.health()["stream"]
            assert stream["failures"] >= 2 and stream["healthy"]


async def signed_create_job(devnet: Devnet, codehash: str, inputs: bytes, nonce: int) -> str:
    data = devnet.jobs.encode_abi("createJob", args=[1, 0, HexBytes(codehash), inputs, 5000])
    block = await devnet.w3.eth.get_block("latest")
    base = int(block.get("baseFeePerGas") or 0)
    tx = {
        "to": devnet.jobs_address,
        "data": data,
        "nonce": nonce,
        "gas": 1_000_000,
        "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 4 * base + 10**9,
        "chainId": await devnet.w3.eth.chain_id,
        "type": 2,
    }
    signed = Account.sign_transaction(tx, USER.private_key)
    return "0x" + bytes(signed.raw_transaction).hex()


async def test_a_reorged_job_pending_output_is_never_mined(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.node")
    files = write_node_files(tmp_path / "node", anvil, devnet)
    async with running_daemon(files) as daemon:
        await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
        await wait_registered(daemon)
        codehash = await devnet.save_code(USER, CODE_ECHO)
        await devnet.set_automine(False)
        creating = asyncio.create_task(
            devnet.create_job(USER, codehash=codehash, code_inputs=b"old", deadline_ms=5000)
        )
        await asyncio.sleep(0.3)
        await devnet.mine()
        job_id = await creating

        async def output_pending() -> bool:
            w3 = devnet.w3
            pending = await w3.eth.get_transaction_count(GAS.address, "pending")
            return pending > await w3.eth.get_transaction_count(GAS.address, "latest")

        await wait_until(output_pending, timeout=15, what="the old content's output in the pool")
        # The job's block is replaced by one where the same id names new content.
        user_nonce = await devnet.w3.eth.get_transaction_count(USER.address, "latest") - 1
        raw = await signed_create_job(devnet, codehash, b"new", user_nonce)
        await Rpc(devnet.w3)("anvil_reorg", 1, [[raw, 0]])
        devnet.sender.forget_nonces()
        job = await devnet.job(job_id)
        assert job is not None

        async def withdrawn() -> bool:
            # The pool's transaction on the output's nonce is now the no-op (a 0-value transfer
            # to itself). Mining before then would race the daemon, not test it: on a real chain
            # the next block is a block time away, here it would be a few milliseconds.
            pool = await Rpc(devnet.w3)("txpool_content")
            ours = pool["pending"].get(GAS.address.lower(), {})
            return any(tx["to"].lower() == GAS.address.lower() for tx in ours.values())

        await wait_until(withdrawn, timeout=15, what="the old content's output withdrawn")

        async def answered() -> list[Any]:
            await devnet.mine()
            return await devnet.job_responses(job_id)

        try:
            responses = await wait_until(answered, timeout=20, what="the new job's output")
        finally:
            await devnet.set_automine(True)
    assert [r.output for r in responses] == [b"echo:new"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"job {job_id}: JobCreated reorged out" in m for m in messages)
