"""What the websocket RPC sends is input like any other: garbage, malformed logs and logs spoofed
from another contract are dropped with a warning, and the node keeps serving real jobs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from eth_abi import encode

from executor.chain.follow.events import JobCreated
from executor.node import NodeStatus
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.ws_proxy import running_ws_proxy

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
SPOOFED_JOB = 4242


def job_created_log(address: str, enclave: str, *, data: bytes | None = None) -> dict[str, object]:
    topics = [
        JobCreated.topic0(),
        *(
            encode([t], [v])
            for t, v in zip(JobCreated.INDEXED, [SPOOFED_JOB, 1, USER.address], strict=True)
        ),
    ]
    if data is None:
        data = encode(list(JobCreated.DATA), [0, b"\x01" * 32, b"in", 5000, [enclave]])
    return {
        "address": address,
        "blockNumber": "0x1",
        "logIndex": "0x0",
        "transactionHash": "0x" + "ee" * 32,
        "topics": ["0x" + t.hex() for t in topics],
        "data": "0x" + data.hex(),
        "removed": False,
    }


async def test_garbage_and_spoofed_logs_are_dropped(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=proxy.url)
        async with running_daemon(files) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            me = files.key.address
            await proxy.inject("this is not JSON")
            await proxy.inject(json.dumps({"method": "eth_subscription", "params": 5}))
            await proxy.inject_log({"blockNumber": "0xzz", "logIndex": "0x0", "topics": []})
            await proxy.inject_log(job_created_log(devnet.jobs_address, me, data=b"\x00" * 7))
            # A well-formed JobCreated selecting us, but emitted by another contract.
            await proxy.inject_log(job_created_log(devnet.user_code_address, me))

            codehash = await devnet.save_code(USER, CODE_ECHO)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"real", deadline_ms=3000
            )
            (response,) = await wait_until(
                lambda: devnet.job_responses(job_id), timeout=20, what="the real job's output"
            )
            assert response.output == b"echo:real"
            assert daemon.service is not None
            assert daemon.service.status is NodeStatus.ACTIVE
    messages = [r.getMessage() for r in caplog.records]
    assert any("not JSON" in m for m in messages)
    assert any("malformed JobCreated log" in m for m in messages)
    assert not any(m.startswith(f"job {SPOOFED_JOB}:") for m in messages)
