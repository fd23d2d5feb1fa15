"""``oyster-devnet consumer``: one job owned by a dApp contract, from a JS file to its callback.

Against a running ``oyster-devnet up``: deploys the sample ``OysterConsumer``
(contracts/devnet/OysterConsumer.sol) unless ``--address`` names one, stores the code, has the
consumer create the job (so the consumer is the job owner), waits until the Jobs contract called
its ``oysterResultCall`` and prints what the contract stored.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from web3 import AsyncHTTPProvider, AsyncWeb3

from oyster_devnet.contracts import Devnet
from oyster_devnet.network import NetworkState, user_account

POLL_S = 0.25


async def run_consumer_job(args: argparse.Namespace) -> int:
    state = NetworkState.read(args.state_file)
    w3 = AsyncWeb3(AsyncHTTPProvider(state.http_url))
    try:
        devnet = await Devnet.attach(
            w3,
            jobs_address=state.jobs_address,
            tee_manager_address=state.tee_manager_address,
            user_code_address=state.user_code_address,
        )
        user = user_account(state)
        if args.address:
            consumer = devnet.consumer(args.address)
        else:
            consumer = await devnet.deploy_consumer(user)
            print(f"OysterConsumer deployed at {consumer.address}", flush=True)
        codehash = await devnet.save_code(user, args.code.read_text())
        job_id = await devnet.consumer_request(
            user,
            consumer,
            codehash=codehash,
            code_inputs=args.input.encode(),
            deadline_ms=args.deadline_ms,
        )
        print(f"job {job_id} created, owned by {consumer.address}", flush=True)
        give_up = time.monotonic() + args.deadline_ms / 1000 + state.execution_buffer_time + 5
        while time.monotonic() < give_up:
            callbacks = await devnet.callback_events(job_id)
            if callbacks:
                break
            await asyncio.sleep(POLL_S)
        else:
            print(f"!! no callback for job {job_id} before its window closed")
            return 1
        result = await devnet.consumer_result(consumer, job_id)
    finally:
        await w3.provider.disconnect()
    kind, success = callbacks[0]
    print(f"oyster{kind.capitalize()}Call {'succeeded' if success else 'reverted'}", flush=True)
    if not result.received:
        print(f"the consumer stored no result (failed={result.failed})")
        return 1
    try:
        text = result.output.decode()
    except UnicodeDecodeError:
        text = "0x" + result.output.hex()
    print(
        f"stored: error_code {result.error_code} total_time {result.total_time_ms}ms\n"
        f"  output: {text}",
        flush=True,
    )
    return 0
