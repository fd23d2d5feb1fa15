"""``oyster-executor serve`` as an operator runs it: start-up errors and signal handling."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from executor.admin.client import AdminClient
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from oyster_devnet.tools import free_port
from tests.node_helpers import wait_until

HANG_UNTIL_DEADLINE = (
    "export default { fetch() { return new Promise(() => setInterval(() => {}, 1000)); } };"
)


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "executor", "serve", *args]


async def run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *serve_cmd(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_listen_address_is_required_and_exclusive(tmp_path: Path) -> None:
    rc, out = await run("--config-file", str(tmp_path / "c.json"))
    assert rc == 2 and "one of the arguments --vsock-addr --tcp-addr is required" in out
    rc, out = await run("--tcp-addr", "127.0.0.1:1", "--vsock-addr", "3:1")
    assert rc == 2 and "not allowed with argument" in out


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda c: c.pop("jobs_contract_addr"), "config key 'jobs_contract_addr': is required"),
        (
            lambda c: c.update(common_chain_id="x"),
            "config key 'common_chain_id': must be an integer",
        ),
        (lambda c: c.update(enclave_signer_file="/nonexistent/id.sec"), "key file /nonexistent"),
        (lambda c: c.update(workerd_runtime_path="/nonexistent"), "no workerd binary"),
        # the mistakes of issue 19: a key path naming a folder, a missing store, an empty path
        (
            lambda c: c.update(enclave_signer_file=c["secret_store_path"]),
            "is a folder; enclave_signer_file must name the key file itself",
        ),
        (
            lambda c: c.update(secret_store_path="/nonexistent/store"),
            "config key 'secret_store_path': /nonexistent/store is not a folder (create it",
        ),
        (
            lambda c: c.update(workerd_runtime_path=""),
            "config key 'workerd_runtime_path': must be a non-empty path",
        ),
    ],
)
async def test_startup_errors_are_one_clear_line(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, mangle: object, expected: str
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    config = json.loads(files.config_file.read_text())
    mangle(config)  # type: ignore[operator]
    files.config_file.write_text(json.dumps(config))
    rc, out = await run(
        "--tcp-addr", "127.0.0.1:0", "--config-file", str(files.config_file), "--unconfined-dev"
    )
    assert rc == 2
    assert expected in out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("oyster-executor: error: "), out
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], out


async def test_missing_slices_and_busy_port_are_explained(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    empty = tmp_path / "no-slices"
    empty.mkdir()
    rc, out = await run(
        "--tcp-addr", "127.0.0.1:0", "--config-file", str(files.config_file),
        "--cgroup-parent", str(empty),
    )  # fmt: skip
    assert rc == 2 and "cgroup_setup.sh" in out and "Traceback" not in out
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, out = await run(
            "--tcp-addr", f"127.0.0.1:{port}", "--config-file", str(files.config_file),
            "--unconfined-dev",
        )  # fmt: skip
    assert rc == 2 and "cannot serve the admin API" in out and "Traceback" not in out


@asynccontextmanager
async def serving(
    files: NodeFiles, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *serve_cmd(
                "--tcp-addr", f"127.0.0.1:{port}", "--config-file", str(files.config_file),
                "--unconfined-dev", "--shutdown-grace", "20",
            ),
            stdout=out,
            stderr=out,
        )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}/"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def start_hanging_job(devnet: Devnet, admin_url: str, deadline_ms: int) -> int:
    await AdminClient(admin_url).wait_until_up(20)
    await init_and_register(admin_url, devnet, owner=DEV_ACCOUNTS[1], gas=DEV_ACCOUNTS[2])
    codehash = await devnet.save_code(DEV_ACCOUNTS[3], HANG_UNTIL_DEADLINE)
    return await devnet.create_job(
        DEV_ACCOUNTS[3], codehash=codehash, code_inputs=b"", deadline_ms=deadline_ms
    )


async def test_sigterm_lets_the_running_job_finish_and_submit(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    log = tmp_path / "serve.log"
    async with serving(files, log) as (proc, url):
        job_id = await start_hanging_job(devnet, url, deadline_ms=3000)
        await wait_until(lambda: "executing" in log.read_text(), timeout=10, what="job start")
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0, log.read_text()
    (response,) = await devnet.job_responses(job_id)
    assert (response.error_code, response.total_time) == (4, 3000)
    assert "running jobs get up to 20s" in log.read_text()


async def test_second_signal_forces_the_stop(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    log = tmp_path / "serve.log"
    async with serving(files, log) as (proc, url):
        job_id = await start_hanging_job(devnet, url, deadline_ms=60_000)
        await wait_until(lambda: "executing" in log.read_text(), timeout=10, what="job start")
        proc.send_signal(signal.SIGTERM)
        await wait_until(
            lambda: "stopping; running jobs" in log.read_text(), timeout=10, what="stop"
        )
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 15)
    assert rc == 0, log.read_text()
    assert time.monotonic() - started < 10
    assert "second signal" in log.read_text()
    assert await devnet.job_responses(job_id) == []
    runtime = files.settings.workerd_runtime_path
    assert list(runtime.iterdir()) == [runtime / "workerd"]  # no job file left behind
