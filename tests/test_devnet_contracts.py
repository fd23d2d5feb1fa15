"""The devnet contracts and their Python tooling, against a real anvil.

Signatures are made here with eth-account's EIP-712 encoder, independently of the project's signer,
so these tests pin the contracts to docs/protocol.md §2 rather than to our own implementation of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_keys import keys
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3

from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount
from oyster_devnet.anvil import AnvilError, AnvilNode, start_anvil
from oyster_devnet.contracts import (
    Devnet,
    JobInfo,
    JobResponse,
    TeeNodeInfo,
    TransactionReverted,
    load_artifact,
)
from oyster_devnet.tools import REPO_ROOT
from tests.eip712_reference import REGISTER_FIELDS, SUBMIT_OUTPUT_FIELDS, typed_data

pytestmark = pytest.mark.chain  # some tests start their own anvil

OWNER, OTHER_OWNER, JOB_OWNER, GAS = DEV_ACCOUNTS[1:5]  # [0] deploys the contracts
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class Enclave:
    """An enclave key as the executor holds it: 32 raw bytes."""

    secret: bytes

    @classmethod
    def generate(cls) -> Enclave:
        return cls(secrets.token_bytes(32))

    @property
    def public_key(self) -> bytes:
        return keys.PrivateKey(self.secret).public_key.to_bytes()  # 64 bytes, no 0x04

    @property
    def address(self) -> ChecksumAddress:
        return to_checksum_address(keccak(self.public_key)[-20:])

    def sign_register(
        self, owner: str, job_capacity: int, storage_capacity: int, env: int, sign_timestamp: int
    ) -> bytes:
        message = {
            "owner": owner,
            "jobCapacity": job_capacity,
            "storageCapacity": storage_capacity,
            "env": env,
            "signTimestamp": sign_timestamp,
        }
        data = typed_data("marlin.oyster.TeeManager", "Register", REGISTER_FIELDS, message)
        return bytes(Account.sign_message(data, self.secret).signature)

    def sign_output(
        self, job_id: int, output: bytes, total_time: int, error_code: int, sign_timestamp: int
    ) -> bytes:
        message = {
            "jobId": job_id,
            "output": output,
            "totalTime": total_time,
            "errorCode": error_code,
            "signTimestamp": sign_timestamp,
        }
        data = typed_data("marlin.oyster.Jobs", "SubmitOutput", SUBMIT_OUTPUT_FIELDS, message)
        return bytes(Account.sign_message(data, self.secret).signature)


async def register(
    devnet: Devnet, enclave: Enclave, owner: DevAccount = OWNER, env: int = 1
) -> ChecksumAddress:
    now = await devnet.chain_time()
    signature = enclave.sign_register(owner.address, 20, 1000, env, now)
    return await devnet.register_node(owner, enclave.public_key, 20, 1000, env, now, signature)


async def new_job(devnet: Devnet, **kwargs: Any) -> int:
    codehash = await devnet.save_code(JOB_OWNER, "export default { fetch() {} }")
    kwargs.setdefault("deadline_ms", 60_000)
    return await devnet.create_job(JOB_OWNER, codehash=codehash, code_inputs=b"in", **kwargs)


async def submit(
    devnet: Devnet,
    enclave: Enclave,
    job_id: int,
    output: bytes = b"out",
    *,
    sign_timestamp: int | None = None,
) -> Any:
    if sign_timestamp is None:
        sign_timestamp = await devnet.chain_time()
    signature = enclave.sign_output(job_id, output, 123, 0, sign_timestamp)
    return await devnet.submit_output(
        GAS,
        signature=signature,
        job_id=job_id,
        output=output,
        total_time=123,
        error_code=0,
        sign_timestamp=sign_timestamp,
    )


async def existing_job(devnet: Devnet, job_id: int) -> JobInfo:
    job = await devnet.job(job_id)
    assert job is not None, f"job {job_id} not found"
    return job


async def existing_node(devnet: Devnet, enclave_address: str) -> TeeNodeInfo:
    node = await devnet.tee_node(enclave_address)
    assert node is not None, f"node {enclave_address} not registered"
    return node


def high_s_twin(signature: bytes) -> bytes:
    """The malleable twin (r, n - s, v ^ 1) of a valid low-s signature: ecrecover accepts it."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


# --- ABIs ------------------------------------------------------------------------------------

PROTOCOL_MEMBERS = {
    "Jobs": {
        "event JobCreated(uint256 indexed jobId, uint8 indexed env, address indexed jobOwner, "
        "uint256 secretId, bytes32 codehash, bytes codeInputs, uint256 deadline, "
        "address[] selectedExecutors)",
        "event JobResponded(uint256 indexed jobId, address indexed executor, bytes output, "
        "uint256 totalTime, uint8 errorCode, uint8 outputCount)",
        "event SlashedOnExecutionTimeout(uint256 indexed jobId, address indexed enclaveAddress)",
        "function submitOutput(bytes _signature, uint256 _jobId, bytes _output, "
        "uint256 _totalTime, uint8 _errorCode, uint256 _signTimestamp)",
        "function slashOnExecutionTimeout(uint256 _jobId)",
    },
    "TeeManager": {
        "event TeeNodeRegistered(address indexed enclaveAddress, address indexed owner, "
        "uint256 jobCapacity, uint256 storageCapacity, uint8 env)",
        "event TeeNodeDrained(address indexed enclaveAddress)",
        "event TeeNodeRevived(address indexed enclaveAddress)",
        "event TeeNodeDeregistered(address indexed enclaveAddress)",
    },
    "UserCode": {
        "function saveCodeInCallData(string inputData, bytes metadata)",
        "event CodeCreated(address indexed owner, bytes metadata)",
    },
}


def declaration(entry: dict[str, Any]) -> str:
    params = ", ".join(
        f"{p['type']}{' indexed' if p.get('indexed') else ''} {p['name']}" for p in entry["inputs"]
    )
    return f"{entry['type']} {entry['name']}({params})"


@pytest.mark.parametrize("name", sorted(PROTOCOL_MEMBERS))
def test_abis_hold_exactly_the_protocol_members(name: str) -> None:
    """executor/abi is what the executor talks to production with (docs/protocol.md §1)."""
    interface = json.loads((REPO_ROOT / "executor" / "abi" / f"{name}.json").read_text())
    assert {declaration(entry) for entry in interface} == PROTOCOL_MEMBERS[name]
    # the devnet contract implements each member with the same names (the compiler checks types)
    devnet_abi, _ = load_artifact(name)
    assert all(entry in devnet_abi for entry in interface)


# --- anvil and accounts -----------------------------------------------------------------------


async def test_dev_accounts_are_anvils(w3: AsyncWeb3[Any], anvil: AnvilNode) -> None:
    assert await w3.eth.accounts == [a.address for a in DEV_ACCOUNTS]
    assert await w3.eth.chain_id == anvil.chain_id == 31337
    assert anvil.ws_url == anvil.http_url.replace("http://", "ws://")


async def test_anvil_is_killed_on_exit_even_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with start_anvil(chain_id=1234) as node:
            pid = node.pid
            raise RuntimeError("boom")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_anvil_on_a_taken_port_fails_with_its_stderr() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AnvilError, match="Address already in use"):
            async with start_anvil(port=port):
                pass


async def test_anvil_with_a_block_time_mines_on_its_own() -> None:
    async with start_anvil(block_time=0.2) as node:
        client = AsyncWeb3(AsyncHTTPProvider(node.http_url))
        try:
            first = await client.eth.block_number
            await asyncio.sleep(0.7)
            assert await client.eth.block_number >= first + 2
        finally:
            await client.provider.disconnect()


# --- EIP-712 ----------------------------------------------------------------------------------


async def test_domain_separators_follow_the_protocol(devnet: Devnet) -> None:
    def separator(name: str) -> bytes:
        domain_type = keccak(text="EIP712Domain(string name,string version)")
        return keccak(domain_type + keccak(text=name) + keccak(text="1"))

    jobs = await devnet.jobs.functions.DOMAIN_SEPARATOR().call()
    tee = await devnet.tee_manager.functions.DOMAIN_SEPARATOR().call()
    assert jobs == separator("marlin.oyster.Jobs")
    assert tee == separator("marlin.oyster.TeeManager")
    message = {"jobId": 1, "output": b"", "totalTime": 0, "errorCode": 0, "signTimestamp": 0}
    signable = typed_data("marlin.oyster.Jobs", "SubmitOutput", SUBMIT_OUTPUT_FIELDS, message)
    assert signable.header == separator("marlin.oyster.Jobs")


# --- TeeManager -------------------------------------------------------------------------------


async def test_register_emits_the_node(devnet: Devnet, w3: AsyncWeb3[Any]) -> None:
    enclave = Enclave.generate()
    now = await devnet.chain_time()
    signature = enclave.sign_register(OWNER.address, 20, 1000, 1, now)
    receipt_address = await devnet.register_node(
        OWNER, enclave.public_key, 20, 1000, 1, now, signature
    )
    assert receipt_address == enclave.address

    (event,) = await devnet.tee_manager.events.TeeNodeRegistered.get_logs(from_block=0)
    assert event["args"]["enclaveAddress"] == enclave.address
    assert event["args"]["owner"] == OWNER.address
    assert (event["args"]["jobCapacity"], event["args"]["storageCapacity"]) == (20, 1000)
    assert event["args"]["env"] == 1
    # topic1 = enclave address, topic2 = owner: what the executor filters on
    raw = (await w3.eth.get_transaction_receipt(event["transactionHash"]))["logs"][0]
    assert raw["topics"][1] == HexBytes(bytes(12) + bytes.fromhex(enclave.address[2:]))
    assert raw["topics"][2] == HexBytes(bytes(12) + bytes.fromhex(OWNER.address[2:]))

    node = await devnet.tee_node(enclave.address)
    assert node is not None and node.owner == OWNER.address and not node.draining
    assert await devnet.active_nodes(1) == [enclave.address]


async def test_register_rejects_a_signature_by_another_key(devnet: Devnet) -> None:
    enclave, impostor = Enclave.generate(), Enclave.generate()
    now = await devnet.chain_time()
    signature = impostor.sign_register(OWNER.address, 20, 1000, 1, now)
    with pytest.raises(TransactionReverted) as caught:
        await devnet.register_node(OWNER, enclave.public_key, 20, 1000, 1, now, signature)
    assert caught.value.error_name == "TeeManagerInvalidSigner"
    assert caught.value.error_args == {
        "signer": impostor.address,
        "enclaveAddress": enclave.address,
    }


async def test_register_binds_the_owner_and_the_fields(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    now = await devnet.chain_time()
    signature = enclave.sign_register(OWNER.address, 20, 1000, 1, now)
    for sender, capacity in ((OTHER_OWNER, 20), (OWNER, 21)):
        with pytest.raises(TransactionReverted, match="TeeManagerInvalidSigner"):
            await devnet.register_node(
                sender, enclave.public_key, capacity, 1000, 1, now, signature
            )


async def test_register_rejects_a_too_old_signature(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    old = await devnet.chain_time() - devnet.sign_max_age - 5
    signature = enclave.sign_register(OWNER.address, 20, 1000, 1, old)
    with pytest.raises(TransactionReverted) as caught:
        await devnet.register_node(OWNER, enclave.public_key, 20, 1000, 1, old, signature)
    assert caught.value.error_name == "TeeManagerSignatureTooOld"


async def test_register_rejects_a_registered_node(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    with pytest.raises(TransactionReverted, match="TeeManagerNodeAlreadyRegistered"):
        await register(devnet, enclave, owner=OTHER_OWNER)


async def test_register_rejects_malformed_signatures(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    now = await devnet.chain_time()
    good = enclave.sign_register(OWNER.address, 20, 1000, 1, now)
    cases = {
        "SignatureMalleable": high_s_twin(good),
        "SignatureInvalidV": good[:64] + bytes([good[64] - 27]),
        "SignatureInvalidLength": good[:64],
    }
    for error_name, signature in cases.items():
        with pytest.raises(TransactionReverted) as caught:
            await devnet.register_node(OWNER, enclave.public_key, 20, 1000, 1, now, signature)
        assert caught.value.error_name == error_name
    with pytest.raises(TransactionReverted, match="TeeManagerInvalidPublicKeyLength"):
        await devnet.register_node(OWNER, b"\x04" + enclave.public_key, 20, 1000, 1, now, good)


async def test_drain_revive_deregister_are_owner_only(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    for action in (devnet.drain_node, devnet.revive_node, devnet.deregister_node):
        with pytest.raises(TransactionReverted) as caught:
            await action(OTHER_OWNER, enclave.address)
        assert caught.value.error_name == "TeeManagerNotNodeOwner"

    await devnet.drain_node(OWNER, enclave.address)
    assert await devnet.active_nodes(1) == []
    with pytest.raises(TransactionReverted, match="TeeManagerNodeAlreadyDraining"):
        await devnet.drain_node(OWNER, enclave.address)
    await devnet.revive_node(OWNER, enclave.address)
    assert await devnet.active_nodes(1) == [enclave.address]
    with pytest.raises(TransactionReverted, match="TeeManagerNodeNotDraining"):
        await devnet.revive_node(OWNER, enclave.address)
    await devnet.deregister_node(OWNER, enclave.address)
    assert await devnet.tee_node(enclave.address) is None
    with pytest.raises(TransactionReverted, match="TeeManagerNodeNotFound"):
        await devnet.drain_node(OWNER, enclave.address)

    events = devnet.tee_manager.events
    for event, expected in (
        (events.TeeNodeDrained, 1),
        (events.TeeNodeRevived, 1),
        (events.TeeNodeDeregistered, 1),
    ):
        logs = await event.get_logs(from_block=0)
        assert [log["args"]["enclaveAddress"] for log in logs] == [enclave.address] * expected

    # a deregistered node may register again, with a new owner
    await register(devnet, enclave, owner=OTHER_OWNER)
    assert (await existing_node(devnet, enclave.address)).owner == OTHER_OWNER.address


# --- Jobs: creation ---------------------------------------------------------------------------


async def test_create_job_selects_active_nodes_of_the_env(devnet: Devnet) -> None:
    first, second, other_env = Enclave.generate(), Enclave.generate(), Enclave.generate()
    with pytest.raises(TransactionReverted) as caught:
        await new_job(devnet)
    assert caught.value.error_name == "JobsNoActiveNodes"

    await register(devnet, first)
    await register(devnet, second)
    await register(devnet, other_env, env=2)
    job_a = await new_job(devnet)
    await devnet.drain_node(OWNER, first.address)
    job_b = await new_job(devnet)
    job_c = await new_job(devnet, env=2)
    await devnet.drain_node(OWNER, second.address)
    with pytest.raises(TransactionReverted, match="JobsNoActiveNodes"):
        await new_job(devnet)

    assert (job_a, job_b, job_c) == (0, 1, 2)  # ids from 0, as production
    selected = [(await existing_job(devnet, j)).selected_executors for j in (job_a, job_b, job_c)]
    assert selected == [(first.address,), (second.address,), (other_env.address,)]


async def test_job_created_event_carries_the_job(devnet: Devnet, w3: AsyncWeb3[Any]) -> None:
    executors = [Enclave.generate().address for _ in range(3)]
    codehash = await devnet.save_code(JOB_OWNER, "code")
    job_id = await devnet.create_job(
        JOB_OWNER,
        env=1,
        secret_id=7,
        codehash=codehash,
        code_inputs=b"\x00inputs",
        deadline_ms=4321,
        executors=executors,
    )
    (event,) = await devnet.jobs.events.JobCreated.get_logs(from_block=0)
    args = event["args"]
    assert (args["jobId"], args["env"], args["jobOwner"]) == (job_id, 1, JOB_OWNER.address)
    assert (args["secretId"], args["deadline"]) == (7, 4321)
    assert HexBytes(args["codehash"]) == HexBytes(codehash)
    assert args["codeInputs"] == b"\x00inputs"
    assert list(args["selectedExecutors"]) == executors

    job = await devnet.job(job_id)
    block = await w3.eth.get_block(event["blockNumber"])
    assert job is not None
    assert (job.exec_start_time, job.deadline_ms, job.output_count) == (block["timestamp"], 4321, 0)
    assert await devnet.job(job_id + 1) is None

    with pytest.raises(TransactionReverted, match="JobsDuplicateExecutor"):
        await new_job(devnet, executors=[executors[0], executors[0]])
    with pytest.raises(TransactionReverted, match="JobsNoExecutors"):
        await new_job(devnet, executors=[])


async def test_concurrent_transactions_from_one_sender(devnet: Devnet) -> None:
    executor = Enclave.generate().address
    ids = await asyncio.gather(*(new_job(devnet, executors=[executor]) for _ in range(8)))
    assert sorted(ids) == list(range(8))  # ids from 0, as production


# --- Jobs: outputs ----------------------------------------------------------------------------


async def test_submit_output_emits_the_response(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet)
    response = await submit(devnet, enclave, job_id, b"hello \x00 world")

    assert response.executor == enclave.address != GAS.address  # the enclave, not the gas payer
    assert (response.job_id, response.output, response.total_time) == (
        job_id,
        b"hello \x00 world",
        123,
    )
    assert (response.error_code, response.output_count) == (0, 1)
    assert await devnet.job_responses(job_id) == [response]
    assert (await existing_job(devnet, job_id)).output_count == 1
    assert await devnet.jobs.functions.hasResponded(job_id, enclave.address).call()


async def test_submit_output_counts_outputs_per_job(devnet: Devnet) -> None:
    enclaves = [Enclave.generate() for _ in range(2)]
    for enclave in enclaves:
        await register(devnet, enclave)
    job_id = await new_job(devnet, executors=[e.address for e in enclaves])
    counts = [(await submit(devnet, e, job_id)).output_count for e in enclaves]
    assert counts == [1, 2]
    await devnet.increase_time(100)
    with pytest.raises(TransactionReverted, match="JobsNothingToSlash"):
        await devnet.slash_on_timeout(GAS, job_id)


async def test_submit_output_rejects_an_executor_not_selected(devnet: Devnet) -> None:
    selected, bystander = Enclave.generate(), Enclave.generate()
    await register(devnet, selected)
    await register(devnet, bystander)
    job_id = await new_job(devnet, executors=[selected.address])
    with pytest.raises(TransactionReverted) as caught:
        await submit(devnet, bystander, job_id)
    assert caught.value.error_name == "JobsNotSelectedExecutor"
    assert caught.value.error_args["signer"] == bystander.address

    # a signature over another output recovers to some unrelated address
    now = await devnet.chain_time()
    signature = selected.sign_output(job_id, b"signed", 123, 0, now)
    with pytest.raises(TransactionReverted, match="JobsNotSelectedExecutor"):
        await devnet.submit_output(
            GAS,
            signature=signature,
            job_id=job_id,
            output=b"tampered",
            total_time=123,
            error_code=0,
            sign_timestamp=now,
        )


async def test_submit_output_rejects_an_unregistered_or_draining_executor(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    job_id = await new_job(devnet, executors=[enclave.address])
    with pytest.raises(TransactionReverted, match="JobsExecutorNotActive"):
        await submit(devnet, enclave, job_id)
    await register(devnet, enclave)
    await devnet.drain_node(OWNER, enclave.address)
    with pytest.raises(TransactionReverted, match="JobsExecutorNotActive"):
        await submit(devnet, enclave, job_id)
    await devnet.revive_node(OWNER, enclave.address)
    assert (await submit(devnet, enclave, job_id)).output_count == 1


async def test_submit_output_rejects_a_too_old_signature(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet)
    old = await devnet.chain_time() - devnet.sign_max_age - 1
    with pytest.raises(TransactionReverted) as caught:
        await submit(devnet, enclave, job_id, sign_timestamp=old)
    assert caught.value.error_name == "JobsSignatureTooOld"


async def test_submit_output_rejects_a_second_submission(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet)
    await submit(devnet, enclave, job_id)
    with pytest.raises(TransactionReverted, match="JobsOutputAlreadySubmitted"):
        await submit(devnet, enclave, job_id, b"again")
    assert len(await devnet.job_responses(job_id)) == 1


async def test_submit_output_rejects_malleable_signatures(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet)
    now = await devnet.chain_time()
    signature = high_s_twin(enclave.sign_output(job_id, b"out", 123, 0, now))
    with pytest.raises(TransactionReverted, match="SignatureMalleable"):
        await devnet.submit_output(
            GAS,
            signature=signature,
            job_id=job_id,
            output=b"out",
            total_time=123,
            error_code=0,
            sign_timestamp=now,
        )


async def test_a_transaction_reverted_on_chain_is_explained(
    devnet: Devnet, w3: AsyncWeb3[Any]
) -> None:
    """Two gas accounts race the same output into one block: the second reverts when mined."""
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet)
    now = await devnet.chain_time()
    signature = enclave.sign_output(job_id, b"out", 1, 0, now)
    payers = DEV_ACCOUNTS[5:7]
    await devnet.set_automine(False)
    sends = [
        asyncio.create_task(
            devnet.submit_output(
                payer,
                signature=signature,
                job_id=job_id,
                output=b"out",
                total_time=1,
                error_code=0,
                sign_timestamp=now,
            )
        )
        for payer in payers
    ]
    for _ in range(250):  # both in the pool, within 5 s
        if [await w3.eth.get_transaction_count(p.address, "pending") for p in payers] == [1, 1]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the two submissions never reached the pool")
    await devnet.mine()
    results = await asyncio.gather(*sends, return_exceptions=True)

    # the block orders the two as it likes: one lands, the other reverts on chain
    (landed,) = [r for r in results if isinstance(r, JobResponse)]
    (reverted,) = [r for r in results if isinstance(r, TransactionReverted)]
    assert landed.output_count == 1
    assert reverted.error_name == "JobsOutputAlreadySubmitted"
    assert reverted.tx_hash is not None
    assert (await w3.eth.get_transaction_receipt(reverted.tx_hash))["status"] == 0
    assert await devnet.job_responses(job_id) == [landed]


async def test_output_window_closes_after_deadline_plus_buffer(devnet: Devnet) -> None:
    """Open while block.timestamp*1000 <= execStartTime*1000 + deadline + buffer*1000."""
    enclaves = [Enclave.generate() for _ in range(2)]
    for enclave in enclaves:
        await register(devnet, enclave)
    job_id = await new_job(devnet, deadline_ms=1500, executors=[e.address for e in enclaves])
    start = (await existing_job(devnet, job_id)).exec_start_time
    last_open = start + (1500 + devnet.execution_buffer_time * 1000) // 1000  # 3.5 s -> 3 s

    await devnet.set_next_block_timestamp(last_open)
    await submit(devnet, enclaves[0], job_id, sign_timestamp=last_open)
    await devnet.set_next_block_timestamp(last_open + 1)
    with pytest.raises(TransactionReverted) as caught:
        await submit(devnet, enclaves[1], job_id, sign_timestamp=last_open)
    assert caught.value.error_name == "JobsExecutionWindowClosed"


async def test_output_window_closed_after_time_passes(devnet: Devnet) -> None:
    enclave = Enclave.generate()
    await register(devnet, enclave)
    job_id = await new_job(devnet, deadline_ms=1000)
    await devnet.increase_time(1 + devnet.execution_buffer_time + 2)
    with pytest.raises(TransactionReverted, match="JobsExecutionWindowClosed"):
        await submit(devnet, enclave, job_id)


# --- Jobs: timeout slashing -------------------------------------------------------------------


async def test_slash_waits_for_the_window_then_slashes_the_silent(devnet: Devnet) -> None:
    answering, silent = Enclave.generate(), Enclave.generate()
    await register(devnet, answering)
    unregistered = Enclave.generate().address
    job_id = await new_job(
        devnet, deadline_ms=30_000, executors=[answering.address, silent.address, unregistered]
    )
    await submit(devnet, answering, job_id)
    with pytest.raises(TransactionReverted) as caught:
        await devnet.slash_on_timeout(GAS, job_id)
    assert caught.value.error_name == "JobsDeadlineNotOver"

    await devnet.increase_time(30 + devnet.execution_buffer_time + 1)
    slashed = await devnet.slash_on_timeout(GAS, job_id)
    assert [s.enclave_address for s in slashed] == [silent.address, unregistered]
    assert {s.job_id for s in slashed} == {job_id}
    assert await devnet.slash_events(job_id) == slashed
    assert await devnet.job(job_id) is None
    with pytest.raises(TransactionReverted, match="JobsJobNotFound"):
        await devnet.slash_on_timeout(GAS, job_id)
    with pytest.raises(TransactionReverted, match="JobsJobNotFound"):
        await submit(devnet, answering, job_id)


# --- UserCode ---------------------------------------------------------------------------------


async def test_saved_code_is_in_the_transaction_calldata(
    devnet: Devnet, w3: AsyncWeb3[Any]
) -> None:
    code = 'export default { async fetch(request) { return new Response("ünïcode ✓"); } };'
    tx_hash = await devnet.save_code(JOB_OWNER, code, b"\x01meta")

    tx = await w3.eth.get_transaction(tx_hash)
    assert tx["to"] == devnet.user_code_address
    function, args = devnet.user_code.decode_function_input(tx["input"])
    assert function.fn_name == "saveCodeInCallData"
    assert args == {"inputData": code, "metadata": b"\x01meta"}

    receipt = await w3.eth.get_transaction_receipt(tx_hash)
    (event,) = devnet.user_code.events.CodeCreated().process_receipt(receipt)
    assert event["args"]["owner"] == JOB_OWNER.address
    assert event["args"]["metadata"] == b"\x01meta"
    assert await w3.eth.get_storage_at(devnet.user_code_address, 0) == bytes(32)
