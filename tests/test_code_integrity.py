"""Acceptance: the daemon behind a lying HTTP RPC never runs or signs forged code.

A real anvil, the devnet contracts and the daemon, whose HTTP RPC is a proxy of the test's own
(tests/rpc_proxy.py). The proxy (a) rewrites the code transaction's ``input`` in the JSON view
(and hides the raw method, so the JSON view is all the daemon gets), (b) also rewrites the
calldata inside the raw bytes, (c) answers with another real transaction. Each time the job is
answered on chain with errorCode 1, the forged code never reaches the sandbox, and the log names
the attack and the RPC. An honest proxy gives errorCode 0 for every transaction type anvil mines,
raw method or not.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import rlp
from eth_utils import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.chain.code.envelope import LegacyTransaction
from executor.daemon import Daemon
from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode, start_anvil
from oyster_devnet.contracts import Devnet, JobResponse, deploy_devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.code_txs import TX_KINDS, send_code_tx
from tests.node_helpers import (
    CODE_ECHO,
    record_executions,
    running_daemon,
    wait_registered,
    wait_until,
)
from tests.relay import Relay, running_relay
from tests.tx_samples import code_calldata

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.chain]

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
EVIL = "export default { fetch() { return new Response('pwned'); } };"


@dataclass
class Node:
    anvil: AnvilNode
    w3: AsyncWeb3[Any]
    devnet: Devnet
    proxy: Relay
    daemon: Daemon
    executed: list[bytes]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    async with start_anvil() as anvil:
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        try:
            devnet = await deploy_devnet(
                w3, DEV_ACCOUNTS[0], execution_buffer_time=2, num_selected_executors=1
            )
            async with running_relay(anvil.http_url) as proxy:
                folder: Path = tmp_path_factory.mktemp("node")
                files = write_node_files(folder, anvil, devnet, http_url=proxy.url)
                async with running_daemon(files) as daemon:
                    await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
                    await wait_registered(daemon)
                    executed = record_executions(daemon)
                    yield Node(anvil, w3, devnet, proxy, daemon, executed)
        finally:
            await w3.provider.disconnect()


@pytest.fixture(autouse=True)
def honest_proxy(node: Node) -> None:
    node.proxy.rewrite = None
    node.proxy.hide = set()
    node.executed.clear()


async def response_of(node: Node, job_id: int) -> JobResponse:
    (response,) = await wait_until(
        lambda: node.devnet.job_responses(job_id), timeout=30, what=f"the output of job {job_id}"
    )
    return response


async def run_job(node: Node, codehash: str, inputs: bytes) -> JobResponse:
    job_id = await node.devnet.create_job(
        USER, codehash=codehash, code_inputs=inputs, deadline_ms=5000
    )
    return await response_of(node, job_id)


@pytest.mark.parametrize("hide_raw", [False, True], ids=["raw-method", "json-rebuild"])
async def test_honest_rpc_every_tx_type_gives_error_0(node: Node, hide_raw: bool) -> None:
    if hide_raw:
        node.proxy.hide = {"eth_getRawTransactionByHash"}
    for kind in TX_KINDS:
        codehash = await send_code_tx(node.w3, node.devnet.user_code_address, CODE_ECHO, kind)
        response = await run_job(node, codehash, kind.encode())
        assert (response.error_code, response.output) == (ErrorCode.OK, b"echo:" + kind.encode())
    assert len(node.executed) == len(TX_KINDS)


def only_for(codehash: str, forge: Any) -> Any:
    async def rewrite(method: str, params: list[Any], result: Any) -> Any:
        if params and str(params[0]).lower() == codehash.lower() and result:
            return await forge(method, result)
        return result

    return rewrite


def assert_attack_refused(
    node: Node, response: JobResponse, caplog: pytest.LogCaptureFixture
) -> None:
    assert (response.error_code, response.output) == (ErrorCode.CODE_TX_NOT_FOUND, b"")
    assert response.executor == node.daemon.service.key.address  # type: ignore[union-attr]
    assert node.executed == [], "forged code reached the sandbox"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    named = [m for m in warnings if "POSSIBLE ATTACK" in m and node.proxy.url.rstrip("/") in m]
    assert named, warnings


async def test_a_rewritten_json_input_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    codehash = await send_code_tx(node.w3, node.devnet.user_code_address, CODE_ECHO, "eip1559")

    async def forge(method: str, result: Any) -> Any:
        return {**result, "input": "0x" + code_calldata(EVIL.encode()).hex()}

    node.proxy.hide = {"eth_getRawTransactionByHash"}
    node.proxy.rewrite = only_for(codehash, forge)
    assert_attack_refused(node, await run_job(node, codehash, b"x"), caplog)


async def test_rewritten_calldata_inside_the_raw_bytes_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    codehash = await send_code_tx(
        node.w3, node.devnet.user_code_address, CODE_ECHO, "legacy-eip155"
    )
    evil_calldata = code_calldata(EVIL.encode())

    async def forge(method: str, result: Any) -> Any:
        if method == "eth_getRawTransactionByHash":
            tx = rlp.decode(bytes.fromhex(result[2:]), LegacyTransaction)
            forged = rlp.encode(tx.copy(data=evil_calldata))
            assert keccak(forged).hex() != codehash[2:]
            return "0x" + forged.hex()
        return {**result, "input": "0x" + evil_calldata.hex()}

    node.proxy.rewrite = only_for(codehash, forge)
    assert_attack_refused(node, await run_job(node, codehash, b"x"), caplog)
    assert "eth_getRawTransactionByHash" in node.proxy.calls


async def test_an_answer_for_another_transaction_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    codehash = await send_code_tx(node.w3, node.devnet.user_code_address, CODE_ECHO, "eip2930")
    evil_hash = await send_code_tx(node.w3, node.devnet.user_code_address, EVIL, "eip2930")

    async def forge(method: str, result: Any) -> Any:
        answer = await node.w3.provider.make_request(method, [evil_hash])  # type: ignore[arg-type]
        return answer["result"]

    node.proxy.rewrite = only_for(codehash, forge)
    assert_attack_refused(node, await run_job(node, codehash, b"x"), caplog)
    # The same code asked honestly is still served (a lie is never cached).
    node.proxy.rewrite = None
    response = await run_job(node, codehash, b"again")
    assert (response.error_code, response.output) == (ErrorCode.OK, b"echo:again")
