"""A lying endpoint is not believed, another one is asked: the daemon with two HTTP RPC endpoints,
the first a proxy that rewrites the code transaction (JSON view and raw bytes alike), the second
the honest anvil. The job is answered with the honest code's output (errorCode 0), the forged code
never reaches the sandbox, and the log names the lying endpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import rlp

from executor.chain.code.envelope import LegacyTransaction
from executor.outcome import ErrorCode
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.code_txs import send_code_tx
from tests.node_helpers import (
    CODE_ECHO,
    record_executions,
    running_daemon,
    wait_registered,
    wait_until,
)
from tests.relay import running_relay
from tests.tx_samples import code_calldata

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
EVIL = b"export default { fetch() { return new Response('pwned'); } };"


async def test_a_lying_first_endpoint_is_skipped_for_an_honest_second(
    tmp_path: Path,
    anvil: AnvilNode,
    devnet: Devnet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    codehash = await send_code_tx(devnet.w3, devnet.user_code_address, CODE_ECHO, "legacy-eip155")
    evil_calldata = code_calldata(EVIL)

    async def lie(method: str, params: list[Any], result: Any) -> Any:
        if not params or str(params[0]).lower() != codehash.lower() or not result:
            return result
        if method == "eth_getRawTransactionByHash":
            tx = rlp.decode(bytes.fromhex(result[2:]), LegacyTransaction)
            return "0x" + rlp.encode(tx.copy(data=evil_calldata)).hex()
        if method == "eth_getTransactionByHash":
            return {**result, "input": "0x" + evil_calldata.hex()}
        return result

    async with running_relay(anvil.http_url) as liar:
        liar.rewrite = lie
        files = write_node_files(
            tmp_path / "node", anvil, devnet, http_url=[liar.url, anvil.http_url]
        )
        async with running_daemon(files) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            executed = record_executions(daemon)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"honest", deadline_ms=5000
            )
            (response,) = await wait_until(
                lambda: devnet.job_responses(job_id), timeout=30, what="the job's output"
            )
    assert (response.error_code, response.output) == (ErrorCode.OK, b"echo:honest")
    assert executed == [CODE_ECHO.encode()]
    assert any(c in ("eth_getRawTransactionByHash", "eth_getTransactionByHash") for c in liar.calls)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("POSSIBLE ATTACK" in m and liar.url.rstrip("/") in m for m in warnings), warnings
