"""The project's signer against the devnet contracts on a real anvil: same domain separators, and
signatures the contracts' ecrecover accepts."""

from __future__ import annotations

from executor.chain.enclave_key import TEE_MANAGER_DOMAIN, EnclaveKey, domain_separator
from executor.chain.jobs_contract import JOBS_DOMAIN, sign_output
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.contracts import Devnet

OWNER, GAS = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]


async def test_domain_separators_match_the_contracts(devnet: Devnet) -> None:
    assert await devnet.jobs.functions.DOMAIN_SEPARATOR().call() == domain_separator(JOBS_DOMAIN)
    assert await devnet.tee_manager.functions.DOMAIN_SEPARATOR().call() == domain_separator(
        TEE_MANAGER_DOMAIN
    )


async def test_registration_and_output_signatures_are_accepted(devnet: Devnet) -> None:
    key = EnclaveKey.generate()
    now = await devnet.chain_time()
    signature = key.sign_registration(OWNER.address, 20, 0, 1, now)
    enclave = await devnet.register_node(OWNER, key.public_key, 20, 0, 1, now, signature)
    assert enclave == key.address

    job_id = await devnet.create_job(
        OWNER, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=60_000
    )
    output = b"\x00\xffbinary output"
    response = await devnet.submit_output(
        GAS,
        signature=sign_output(key, job_id, output, 123, 0, now),
        job_id=job_id,
        output=output,
        total_time=123,
        error_code=0,
        sign_timestamp=now,
    )
    assert (response.executor, response.output) == (key.address, output)
