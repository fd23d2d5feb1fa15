"""``make demo``: the main job on an embedded default, end to end on a local chain.

Built on the same network code as ``oyster-devnet up`` (``oyster_devnet.network``): starts anvil,
deploys the devnet contracts, writes a fresh enclave key and config, creates cgroup slices (or,
where the machine does not allow it, runs unconfined and says so), starts the daemon (the real
``oyster-executor serve`` command), initializes it through the admin API and registers it. Then it
stores a sample JavaScript function on chain, creates a few jobs and prints what the chain got,
read back from the ``JobResponded`` events, and stops everything it started. Exits non-zero if
any job did not come back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from executor.outcome import ErrorCode
from oyster_devnet.contracts import Devnet, JobResponse
from oyster_devnet.network import USER, start_network
from oyster_devnet.transactions import TransactionReverted

logger = logging.getLogger("demo")

SAMPLE_CODE = """\
// A dApp's serverless function: is n prime? Input and output are JSON.
export default {
  async fetch(request) {
    const { n } = await request.json();
    let prime = n > 1;
    for (let d = 2; d * d <= n && prime; d++) if (n % d === 0) prime = false;
    return new Response(JSON.stringify({ n, prime }));
  },
};
"""
SLOW_CODE = """\
// Never answers: the deadline ends it (error code 4).
export default { fetch() { return new Promise((resolve) => setInterval(() => {}, 1000)); } };
"""
BROKEN_CODE = "export default { fetch( { return new Response('oops') } };\n"

DEADLINE_MS = 5000
EXECUTION_BUFFER_S = 10
SLICES = 4


@dataclass(frozen=True)
class DemoJob:
    label: str
    code: str
    inputs: bytes


JOBS = [
    DemoJob("prime? 7", SAMPLE_CODE, b'{"n": 7}'),
    DemoJob("prime? 91", SAMPLE_CODE, b'{"n": 91}'),
    DemoJob("prime? 7919", SAMPLE_CODE, b'{"n": 7919}'),
    DemoJob("syntax error", BROKEN_CODE, b"{}"),
    DemoJob("never answers", SLOW_CODE, b"{}"),
]


def say(text: str = "") -> None:
    print(text, flush=True)


async def wait_for_responses(
    devnet: Devnet, job_ids: list[int], timeout_s: float
) -> dict[int, JobResponse]:
    found: dict[int, JobResponse] = {}
    give_up = time.monotonic() + timeout_s
    while len(found) < len(job_ids) and time.monotonic() < give_up:
        for job_id in job_ids:
            if job_id not in found:
                responses = await devnet.job_responses(job_id)
                if responses:
                    found[job_id] = responses[0]
        await asyncio.sleep(0.5)
    return found


def show(value: bytes, width: int) -> str:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        text = "0x" + value.hex()
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(jobs: list[tuple[int, DemoJob]], found: dict[int, JobResponse]) -> None:
    header = f"{'job':>4}  {'what':<14} {'input':<14} {'output':<28} {'err':>3}  {'time':>7}  tx"
    say(header)
    say("-" * (len(header) + 60))
    for job_id, job in jobs:
        r = found.get(job_id)
        if r is None:
            say(f"{job_id:>4}  {job.label:<14} {show(job.inputs, 14):<14} {'NO RESPONSE':<28}")
            continue
        code = ErrorCode(r.error_code)
        say(
            f"{job_id:>4}  {job.label:<14} {show(job.inputs, 14):<14} {show(r.output, 28):<28} "
            f"{r.error_code:>3}  {r.total_time:>5}ms  {r.tx_hash}"
        )
        if code != ErrorCode.OK:
            say(f"{'':>20}error {code.value}: {code.meaning}")


async def sandbox_path(log_file: Path, wait_s: float = 10) -> str:
    """Which path the daemon's jobs take, from its log (warm slices are armed in the background)."""
    give_up = time.monotonic() + wait_s
    while time.monotonic() < give_up:
        text = await asyncio.to_thread(log_file.read_text, errors="replace")
        if "warm slices available" in text:
            return "jobs run in warm slices: workerd is started in its slice before the job arrives"
        if "warm slices UNAVAILABLE" in text or "so no warm slices" in text:
            return "jobs run cold (no warm slices here: see the daemon log): workerd starts per job"
        await asyncio.sleep(0.1)
    return "warm slices not armed yet: the first jobs may start workerd cold"


async def create_when_free(devnet: Devnet, codehash: str, inputs: bytes) -> int:
    """createJob, waiting while every executor is busy (the contract refuses then, as
    production does: each executor takes as many jobs at once as it has slices)."""
    give_up = time.monotonic() + DEADLINE_MS / 1000 + EXECUTION_BUFFER_S
    while True:
        try:
            return await devnet.create_job(
                USER, codehash=codehash, code_inputs=inputs, deadline_ms=DEADLINE_MS
            )
        except TransactionReverted as e:
            if "JobsExecutorsUnavailable" not in str(e) or time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.5)


async def run_demo(workdir: Path) -> int:
    say("== oyster-executor demo: a local chain, the devnet contracts, the daemon, real jobs")
    async with start_network(
        workdir,
        executors=1,
        selected=1,
        slices=SLICES,
        execution_buffer_time=EXECUTION_BUFFER_S,
        say=say,
    ) as network:
        devnet, executor = network.devnet, network.executors[0]
        log_file = Path(executor.log_file)
        say(f"-- Jobs contract {devnet.jobs_address}")
        say(f"-- executor {executor.enclave_address}: admin API {executor.admin_url}")
        say(f"   daemon log {log_file}")
        say(f"-- {await sandbox_path(log_file)}")
        jobs: list[tuple[int, DemoJob]] = []
        codehashes: dict[str, str] = {}
        for job in JOBS:
            if job.code not in codehashes:
                codehashes[job.code] = await devnet.save_code(USER, job.code)
            job_id = await create_when_free(devnet, codehashes[job.code], job.inputs)
            jobs.append((job_id, job))
        say(f"-- {len(jobs)} jobs created; waiting for the outputs on chain")
        timeout = DEADLINE_MS / 1000 + EXECUTION_BUFFER_S
        found = await wait_for_responses(devnet, [j for j, _ in jobs], timeout)
        daemon_log = _read(log_file)
    say()
    print_table(jobs, found)
    say()
    missing = [job_id for job_id, _ in jobs if job_id not in found]
    if missing:
        say(f"!! {len(missing)} job(s) got no response: {missing}. Daemon log (tail):")
        say("   " + "\n   ".join(daemon_log.splitlines()[-20:]))
        return 1
    say("== all jobs answered on chain; everything the demo started is stopped")
    return 0


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="oyster-demo-"))
    try:
        return asyncio.run(run_demo(workdir))
    finally:
        keep = os.environ.get("OYSTER_DEMO_KEEP")
        if keep:
            say(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
