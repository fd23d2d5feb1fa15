"""``oyster-devnet job``: one job on a running ``oyster-devnet up`` network, answers as they come.

Stores the code on chain (a UserCode transaction), creates the job as the devnet user account and
prints every selected executor's ``JobResponded`` as it arrives, until all of them answered or the
job's window (deadline + execution buffer) closed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.outcome import ErrorCode
from oyster_devnet.contracts import Devnet, JobResponse
from oyster_devnet.network import NetworkState, user_account

POLL_S = 0.25


def show(response: JobResponse) -> str:
    try:
        output = response.output.decode()
    except UnicodeDecodeError:
        output = "0x" + response.output.hex()
    try:
        code = ErrorCode(response.error_code)
        meaning = f" ({code.name}: {code.meaning})" if code else ""
    except ValueError:
        meaning = " (not a protocol error code)"
    return (
        f"JobResponded job {response.job_id} executor {response.executor} "
        f"error_code {response.error_code}{meaning} total_time {response.total_time}ms "
        f"output_count {response.output_count} tx {response.tx_hash}\n  output: {output}"
    )


async def run_job(args: argparse.Namespace) -> int:
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
        codehash = await devnet.save_code(user, args.code.read_text())
        print(f"code stored in tx {codehash}", flush=True)
        job_id = await devnet.create_job(
            user,
            secret_id=args.secret_id,
            codehash=codehash,
            code_inputs=args.input.encode(),
            deadline_ms=args.deadline_ms,
        )
        job = await devnet.job(job_id)
        selected = list(job.selected_executors) if job is not None else []
        print(f"job {job_id} created; selected executors: {', '.join(selected)}", flush=True)
        seen: set[str] = set()
        give_up = time.monotonic() + args.deadline_ms / 1000 + state.execution_buffer_time + 5
        while len(seen) < len(selected) and time.monotonic() < give_up:
            for response in await devnet.job_responses(job_id):
                if response.tx_hash not in seen:
                    seen.add(response.tx_hash)
                    print(show(response), flush=True)
            await asyncio.sleep(POLL_S)
    finally:
        await w3.provider.disconnect()
    if len(seen) < len(selected):
        print(f"!! {len(selected) - len(seen)} selected executor(s) did not answer in time")
        return 1
    return 0
