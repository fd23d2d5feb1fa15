"""A real job on a real chain: anvil + devnet contracts + the daemon + workerd in cgroup slices.

The contract itself checks the executor's EIP-712 signature, so a JobResponded whose ``executor`` is
the enclave address proves the whole path: code fetch, execution, signing and submission.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account

from executor.outcome import ErrorCode
from oyster_devnet.contracts import Devnet, JobResponse
from tests.chain_helpers import ROLES
from tests.node_helpers import CODE_ECHO, RegisteredNode, wait_until

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user


async def response_of(devnet: Devnet, job_id: int, wait_s: float = 20) -> JobResponse:
    responses = await wait_until(
        lambda: devnet.job_responses(job_id), timeout=wait_s, what=f"JobResponded of job {job_id}"
    )
    assert len(responses) == 1
    return responses[0]


async def test_job_is_answered_on_chain_by_the_enclave(
    confined_node: RegisteredNode, devnet: Devnet
) -> None:
    _, files = confined_node
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"hello chain", deadline_ms=5000
    )
    response = await response_of(devnet, job_id)
    daemon, _ = confined_node
    assert daemon.sandbox is not None and daemon.sandbox.warm is not None
    assert daemon.sandbox.warm.available  # the default: jobs run in warm slices
    assert response.executor == files.key.address
    assert response.error_code == ErrorCode.OK
    assert response.output == b"echo:hello chain"
    assert 0 < response.total_time < 5000
    assert response.output_count == 1


async def test_concurrent_jobs_each_get_their_own_output(
    confined_node: RegisteredNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, CODE_ECHO)
    _daemon, files = confined_node
    job_ids = [
        await devnet.create_job(
            USER,
            codehash=codehash,
            code_inputs=f"input-{i}".encode(),
            deadline_ms=5000,
            # Named: createJob's own selection (free executors only, as production) would
            # refuse jobs above the node's capacity, which is what this test gives it.
            executors=[files.key.address],
        )
        for i in range(5)  # more jobs than the 3 slices: the extra ones wait for a slice
    ]
    for i, job_id in enumerate(job_ids):
        response = await response_of(devnet, job_id, wait_s=30)
        assert response.output == f"echo:input-{i}".encode()


async def send_raw(devnet: Devnet, to: str, data: bytes) -> str:
    """A transaction that may revert (it is mined anyway, calldata and all)."""
    w3 = devnet.w3
    account = Account.from_key(USER.private_key)
    tx: dict[str, Any] = {
        "to": to,
        "data": data,
        "gas": 200_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "nonce": await w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": await w3.eth.chain_id,
        "type": 2,
    }
    tx_hash = await w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    await w3.eth.wait_for_transaction_receipt(tx_hash)
    return tx_hash.to_0x_hex()


async def test_code_errors_1_and_2_are_submitted(
    confined_node: RegisteredNode, devnet: Devnet
) -> None:
    not_code = await send_raw(devnet, devnet.jobs_address, b"")  # not sent to UserCode
    bad_calldata = await send_raw(devnet, devnet.user_code_address, b"\x12\x34\x56\x78garbage")
    missing = "0x" + "42" * 32
    expected = {
        not_code: ErrorCode.CODE_TX_NOT_FOUND,
        missing: ErrorCode.CODE_TX_NOT_FOUND,
        bad_calldata: ErrorCode.INVALID_CALLDATA,
    }
    jobs = {
        await devnet.create_job(USER, codehash=h, code_inputs=b"", deadline_ms=3000): code
        for h, code in expected.items()
    }
    for job_id, code in jobs.items():
        response = await response_of(devnet, job_id)
        assert (response.error_code, response.output) == (code, b"")
