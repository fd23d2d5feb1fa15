"""``make demo``: the main job on an embedded default, end to end on a local chain.

Starts anvil, deploys the devnet contracts, writes a fresh enclave key and config, creates cgroup
slices (or, where the machine does not allow it, runs unconfined and says so), starts the daemon
(the real ``oyster-executor serve`` command), initializes it through the admin API, registers it,
stores a sample JavaScript function on chain, creates a few jobs and prints what the chain got,
read back from the ``JobResponded`` events. Then it stops everything it started. Exits non-zero if
any job did not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import start_anvil
from oyster_devnet.contracts import Devnet, JobResponse, deploy_devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from oyster_devnet.tools import REPO_ROOT, free_port

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


@contextlib.contextmanager
def cgroup_slices(tag: str) -> Iterator[Path | None]:
    """Slices under a parent of the demo's own; None (unconfined) where that is impossible."""
    script = REPO_ROOT / "cgroup_setup.sh"
    parent = f"oyster-demo-{tag}"
    made = subprocess.run(
        [str(script), "--parent", parent, "--count", str(SLICES)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        say("!! cannot create cgroup slices here; the demo runs user code UNCONFINED:")
        say("   " + (made.stderr.strip() or made.stdout.strip()).replace("\n", "\n   "))
        yield None
        return
    for line in made.stdout.splitlines() + made.stderr.splitlines():
        if "not available" in line or "unavailable" in line:
            say(f"   note: {line.strip()}")
    try:
        mount = _cgroup2_mount()
        yield mount / parent
    finally:
        subprocess.run([str(script), "--parent", parent, "--remove"], capture_output=True)


def _cgroup2_mount() -> Path:
    from executor.sandbox.cgroups import find_cgroup2_mount

    return find_cgroup2_mount()


@contextlib.asynccontextmanager
async def daemon_process(
    config_file: Path, cgroup_parent: Path | None, log_file: Path
) -> AsyncIterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "executor",
        "serve",
        "--tcp-addr",
        f"127.0.0.1:{port}",
        "--config-file",
        str(config_file),
        "--shutdown-grace",
        "5",
    ]
    cmd += ["--cgroup-parent", str(cgroup_parent)] if cgroup_parent else ["--unconfined-dev"]
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


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


async def run_demo(workdir: Path) -> int:
    owner, gas, user = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
    say("== oyster-executor demo: a local chain, the devnet contracts, the daemon, real jobs")
    async with start_anvil() as anvil:
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        try:
            devnet = await deploy_devnet(
                w3,
                DEV_ACCOUNTS[0],
                execution_buffer_time=EXECUTION_BUFFER_S,
                num_selected_executors=1,
            )
            say(f"-- anvil at {anvil.http_url}; Jobs {devnet.jobs_address}")
            files = write_node_files(workdir / "node", anvil, devnet)
            say(f"-- enclave key written; enclave address {files.key.address}")
            with cgroup_slices(str(os.getpid())) as parent:
                if parent:
                    say(f"-- {SLICES} cgroup slices under {parent}")
                log_file = workdir / "daemon.log"
                async with daemon_process(files.config_file, parent, log_file) as admin_url:
                    say(f"-- daemon started (admin API {admin_url}, log {log_file})")
                    result = await init_and_register(admin_url, devnet, owner=owner, gas=gas)
                    message = result["registration_message"]
                    say(
                        f"-- initialized via the admin API and registered on chain "
                        f"(job capacity {message['job_capacity']})"
                    )
                    say(f"-- {await sandbox_path(log_file)}")
                    jobs: list[tuple[int, DemoJob]] = []
                    codehashes: dict[str, str] = {}
                    for job in JOBS:
                        if job.code not in codehashes:
                            codehashes[job.code] = await devnet.save_code(user, job.code)
                        job_id = await devnet.create_job(
                            user,
                            codehash=codehashes[job.code],
                            code_inputs=job.inputs,
                            deadline_ms=DEADLINE_MS,
                        )
                        jobs.append((job_id, job))
                    say(f"-- {len(jobs)} jobs created; waiting for the outputs on chain")
                    timeout = DEADLINE_MS / 1000 + EXECUTION_BUFFER_S
                    found = await wait_for_responses(devnet, [j for j, _ in jobs], timeout)
            say()
            print_table(jobs, found)
            say()
        finally:
            await w3.provider.disconnect()
    missing = [job_id for job_id, _ in jobs if job_id not in found]
    if missing:
        say(f"!! {len(missing)} job(s) got no response: {missing}. Daemon log: {log_file}")
        say("   " + "\n   ".join(log_file.read_text().splitlines()[-20:]))
        return 1
    say("== all jobs answered on chain; everything the demo started is stopped")
    return 0


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
