"""What the gas estimate adds to an output's critical path, on anvil.

  .venv/bin/python -m benchmarks.gas_estimate [--runs N]

An output whose job owner holds code (and an account's, until the manager has learned what
outputs to the contract cost) is estimated on its exact signed calldata (the job owner's callback
decides its cost): its path from a signed output to its broadcast is one ``eth_estimateGas`` round
trip (the transaction's and the owner callback's estimates run concurrently) plus the send; later
outputs of accounts go with a learned limit, the send alone. This
measures, interleaved per job on the devnet contracts of a local anvil through one HTTP client:
the estimate as ``TxManager`` makes it (the transaction's alone for an owner known to be an
account, both at once for a contract owner), and ``eth_sendRawTransaction``
of the same output, for a job owned by an account and by the sample consumer that stores its
output. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.chain.enclave_key import EnclaveKey
from executor.chain.jobs_contract import (
    result_callback_calldata,
    sign_output,
    submit_output_calldata,
)
from executor.chain.transactions.signing import sign_dynamic_fee_tx
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import start_anvil
from oyster_devnet.contracts import deploy_devnet

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(runs: int) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = {}
    async with start_anvil() as anvil:
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        try:
            devnet = await deploy_devnet(
                w3, DEV_ACCOUNTS[0], execution_buffer_time=60, num_selected_executors=1
            )
            key = EnclaveKey.generate()
            now = await devnet.chain_time()
            signature = key.sign_registration(OWNER.address, 1000, 0, 1, now)
            await devnet.register_node(OWNER, key.public_key, 1000, 0, 1, now, signature)
            consumer = await devnet.deploy_consumer(USER)
            gas = Account.from_key(GAS.private_key)
            nonce = int(await w3.eth.get_transaction_count(gas.address))
            chain_id = await w3.eth.chain_id
            for name, owner in (("account owner", None), ("consumer owner", consumer)):
                samples: dict[str, list[float]] = {"estimate": [], "send": []}
                for i in range(runs):
                    output = b'{"answer": %d}' % i
                    if owner is None:
                        job_id = await devnet.create_job(
                            USER, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=60_000
                        )
                        owner_address = USER.address
                    else:
                        job_id = await devnet.consumer_request(
                            USER, owner, codehash=b"\x01" * 32, code_inputs=b"", deadline_ms=60_000
                        )
                        owner_address = owner.address
                    ts = await devnet.chain_time()
                    sig = sign_output(key, job_id, output, 5, 0, ts)
                    data = submit_output_calldata(sig, job_id, output, 5, 0, ts)
                    call: Any = {"from": gas.address, "to": devnet.jobs_address, "data": data}
                    callback: Any = {
                        "from": devnet.jobs_address,
                        "to": owner_address,
                        "data": result_callback_calldata(job_id, output, 0, 5),
                    }
                    started = time.perf_counter()
                    if owner is None:  # an account (known to hold no code): one estimate
                        estimate = await w3.eth.estimate_gas(call, "pending")
                    else:
                        estimate, _ = await asyncio.gather(
                            w3.eth.estimate_gas(call, "pending"),
                            w3.eth.estimate_gas(callback, "pending"),
                        )
                    samples["estimate"].append((time.perf_counter() - started) * 1000)
                    signed = sign_dynamic_fee_tx(
                        bytes(gas.key),
                        chain_id=chain_id,
                        nonce=nonce,
                        tip=10**9,
                        max_fee=50 * 10**9,
                        gas=estimate * 5 // 4,
                        to=devnet.jobs_address,
                        value=0,
                        data=data,
                    )
                    nonce += 1
                    started = time.perf_counter()
                    await w3.eth.send_raw_transaction(signed.raw)
                    samples["send"].append((time.perf_counter() - started) * 1000)
                found[name] = samples
        finally:
            await w3.provider.disconnect()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="outputs per owner kind (default 50)")
    args = parser.parse_args()
    found = asyncio.run(measure(args.runs))
    print("| owner | estimate p50 / p90 (ms) | send p50 / p90 (ms) | estimate / send (p50) |")
    print("|---|---:|---:|---:|")
    for name, s in found.items():
        est, send = s["estimate"], s["send"]
        print(
            f"| {name} | {statistics.median(est):.2f} / {pct(est, 0.9):.2f} | "
            f"{statistics.median(send):.2f} / {pct(send, 0.9):.2f} | "
            f"{statistics.median(est) / statistics.median(send):.2f} |"
        )


if __name__ == "__main__":
    main()
