"""Reading this enclave's own record on chain (what a restarted daemon resumes from), through an
RPC that caps the block range of ``eth_getLogs`` as hosted RPCs do."""

from __future__ import annotations

import time

from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow.events import TeeNodeDrained, TeeNodeRegistered
from executor.chain.follow.resume import read_node_record
from executor.chain.rpc import RpcEndpoints
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from tests.chain_helpers import ROLES
from tests.eip712_reference import SUBMIT_OUTPUT_FIELDS, digest, typed_data
from tests.relay import running_relay

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user


async def register(devnet: Devnet, key: EnclaveKey) -> None:
    now = int(time.time())
    signature = key.sign_registration(OWNER.address, 2, 0, 1, now)
    await devnet.register_node(OWNER, key.public_key, 2, 0, 1, now, signature)


async def answer(devnet: Devnet, key: EnclaveKey, job_id: int) -> None:
    now = int(time.time())
    message = {"jobId": job_id, "output": b"out", "totalTime": 5, "errorCode": 0,
               "signTimestamp": now}  # fmt: skip
    signable = typed_data("marlin.oyster.Jobs", "SubmitOutput", SUBMIT_OUTPUT_FIELDS, message)
    await devnet.submit_output(
        GAS,
        signature=key.sign_digest(digest(signable)),
        job_id=job_id,
        output=b"out",
        total_time=5,
        error_code=0,
        sign_timestamp=now,
    )


async def test_the_latest_node_event_and_answered_jobs_are_found_despite_range_caps(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    key, other = EnclaveKey.generate(), EnclaveKey.generate()
    await register(devnet, key)
    await register(devnet, other)
    codehash = await devnet.save_code(USER, "x")
    mine, theirs = [
        await devnet.create_job(
            USER, codehash=codehash, code_inputs=b"", deadline_ms=60_000, executors=[k.address]
        )
        for k in (key, other)
    ]
    await answer(devnet, key, mine)
    await answer(devnet, other, theirs)
    for _ in range(40):  # spread the record over more blocks than the RPC serves at once
        await devnet.mine()

    async with running_relay(anvil.http_url) as proxy:
        proxy.max_log_range = 16
        rpc = RpcEndpoints([proxy.url])
        try:

            async def record() -> object:
                head = await rpc.w3.eth.block_number
                return await read_node_record(
                    rpc.w3,
                    tee_manager=devnet.tee_manager_address,
                    jobs_contract=devnet.jobs_address,
                    enclave=key.address,
                    head=head,
                    job_lookback=10_000,
                )

            registered = await record()
            await devnet.drain_node(OWNER, key.address)
            drained = await record()
        finally:
            await rpc.close()
    assert isinstance(registered.last_event, TeeNodeRegistered)  # type: ignore[attr-defined]
    assert registered.last_event.enclave_address == key.address  # type: ignore[attr-defined]
    assert registered.answered == {mine}  # type: ignore[attr-defined]
    assert isinstance(drained.last_event, TeeNodeDrained)  # type: ignore[attr-defined]


async def test_a_node_never_registered_has_no_record(anvil: AnvilNode, devnet: Devnet) -> None:
    rpc = RpcEndpoints([anvil.http_url])
    try:
        record = await read_node_record(
            rpc.w3,
            tee_manager=devnet.tee_manager_address,
            jobs_contract=devnet.jobs_address,
            enclave=EnclaveKey.generate().address,
            head=await rpc.w3.eth.block_number,
        )
    finally:
        await rpc.close()
    assert record.last_event is None and record.answered == frozenset()
