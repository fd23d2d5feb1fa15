"""One chain clock for the whole daemon: chain time moves between blocks, the follower and the
transaction manager read the same clock, and an output whose window passes while no block comes
is withdrawn (``STALL_GRACE_S``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import AsyncWeb3

from executor.chain.follow.events import NewHead
from executor.chain.transactions.inflight import STALL_GRACE_S
from executor.chain.transactions.manager import TxManager, TxStatus
from executor.service import ExecutorService
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import write_node_files

GAS = Account.from_key(DEV_ACCOUNTS[2].private_key)
STALL_S = 1.0
"""A quiet period is the point here: the chain makes no block for this long."""


async def test_chain_time_moves_while_the_chain_stalls(w3: AsyncWeb3[Any], anvil: Any) -> None:
    # automine anvil makes no block while nobody sends a transaction: a stalled chain.
    txm = TxManager(w3, [w3], await w3.eth.chain_id)
    try:
        await txm.head.read()
        before = txm.chain_now()
        await asyncio.sleep(STALL_S)
        assert not await txm.head.read()  # the same block as before
        moved = txm.chain_now() - before
    finally:
        await txm.close()
    assert moved >= STALL_S * 0.9, f"chain time moved {moved:.2f}s in {STALL_S}s without a block"


async def test_an_output_is_withdrawn_when_its_window_passes_without_a_block(
    w3: AsyncWeb3[Any], devnet: Devnet
) -> None:
    await devnet.set_automine(False)
    txm = TxManager(w3, [w3], await w3.eth.chain_id, poll_s=0.1, idle_poll_s=0.2)
    txm.set_account(GAS)
    await txm.start()
    try:
        await txm.head.read()
        valid_until = txm.chain_now() + 1.0
        began = time.monotonic()
        async with asyncio.timeout(1.0 + STALL_GRACE_S + 10):
            outcome = await txm.submit(
                GAS.address, b"", kind="output", job_id=1, valid_until=valid_until, gas_limit=21000
            )
        waited = time.monotonic() - began
    finally:
        await txm.close()
        await devnet.set_automine(True)
    assert outcome.status is TxStatus.EXPIRED, outcome
    assert waited >= 1.0 + STALL_GRACE_S * 0.9  # not before its grace ran out


async def test_the_follower_and_the_transaction_manager_share_one_clock(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)

    async def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("no job runs here")

    service = ExecutorService(
        settings=files.settings,
        key=files.key,
        w3=devnet.w3,
        execute=never,
        job_capacity=1,
        secret_store=None,
    )
    try:
        future = int(time.time()) + 3600  # a head an hour ahead of the host's clock
        service.follower.handle(
            NewHead(number=10**6, block_hash="0x" + "ab" * 32, timestamp=future)
        )
        assert service.txm.chain_now() >= future
        # The chain moved one hour on: a job created now has its window an hour ahead too.
        assert service.watch.due_in_s(1000, future) < 4.0
    finally:
        await service.close(0.0)
