"""Fault injection on a real anvil, through proxies of the tests' own: websocket connections cut
every 2 s under a stream of jobs, dead RPC endpoints, and a reorg that removes a job whose output
is pending."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.fault_helpers import lost_and_duplicated, responses_of, submit_output_txs
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.ws_proxy import WsProxy, running_ws_proxy

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
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
                    job_ids.append(
                        await devnet.create_job(
                            USER, codehash=codehash, code_inputs=b"%d" % i, deadline_ms=5000
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
