"""``GET /health`` tells the truth: a real daemon on a real anvil, with relays the test can cut.

``GET /`` stays 200 whatever happens (the original executor's contract); ``GET /health`` answers
503 with the reasons while the node cannot serve, and 200 again once it can. ``GET /jobs`` and the
metrics say what runs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account import Account

from executor import __version__
from executor.admin.client import AdminClient
from executor.admin.sites import parse_tcp_addr
from executor.daemon import Daemon
from executor.errors import SandboxError
from executor.health import SANDBOX_FAILURE_STREAK, SandboxWatch
from executor.outcome import ErrorCode
from executor.sandbox import Sandbox
from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from oyster_devnet.tools import workerd_binary
from tests.endpoint_proxy import running_http_proxy
from tests.node_helpers import wait_registered, wait_until
from tests.test_observability import parse_exposition
from tests.ws_proxy import running_ws_proxy

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]

CODE_SLOW = """
export default {
  async fetch(request) {
    await new Promise((resolve) => setTimeout(resolve, 6000));
    return new Response("late");
  }
};
"""
CODE_NO_DEFAULT_EXPORT = "export const x = 1;"


@asynccontextmanager
async def daemon_on(
    files: NodeFiles,
    *,
    parts_down: Any = None,
    startup_canary: bool = False,
    metrics: bool = False,
) -> AsyncIterator[tuple[Daemon, AdminClient]]:
    kwargs: dict[str, Any] = {"parts_down": parts_down} if parts_down is not None else {}
    daemon = Daemon(
        files.settings,
        parse_tcp_addr("127.0.0.1:0"),
        unconfined=True,
        shutdown_grace_s=2.0,
        chain_grace_s=1.0,
        startup_canary=startup_canary,
        metrics_addr="127.0.0.1:0" if metrics else None,
        **kwargs,
    )
    async with daemon:
        yield daemon, AdminClient(daemon.admin_url, timeout_s=10)


async def health(client: AdminClient) -> tuple[int, dict[str, Any]]:
    response = await client.request("GET", "/health")
    body = response.json()
    assert isinstance(body, dict)
    return response.status, body


async def health_becomes(
    client: AdminClient, status: int, *, within_s: float = 20
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body = await health(client)
        return body if code == status else None

    return await wait_until(probe, timeout=within_s, what=f"GET /health to answer {status}")


async def test_health_fails_while_the_rpc_is_cut_and_recovers(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    async with (
        running_ws_proxy(anvil.ws_url, keys={""}) as ws,
        running_http_proxy(anvil.http_url) as http,
    ):
        files = write_node_files(tmp_path / "node", anvil, devnet, ws_url=ws.url, http_url=http.url)
        async with daemon_on(files) as (daemon, client):
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            assert daemon.health is not None
            node_health = daemon.health
            await wait_until(
                lambda: node_health.gas.balance_wei, timeout=10, what="the gas balance read"
            )
            body = await health_becomes(client, 200)
            assert body["healthy"] is True and body["reasons"] == {}
            assert body["status"] == "active" and body["version"] == __version__
            assert body["gas"]["address"] == GAS.address and body["gas"]["balance_wei"] > 0

            ws.down = True  # the RPC goes away: no new connection, the live one dropped
            http.mode = "error500"
            await ws.drop_all()
            body = await health_becomes(client, 503)
            assert body["healthy"] is False
            assert "no websocket connection to the chain" in body["reasons"]["chain"]
            assert (await client.request("GET", "/")).status == 200  # the index stays 200

            ws.down = False
            http.mode = "ok"
            body = await health_becomes(client, 200, within_s=30)
            assert body["reasons"] == {}


async def test_a_broken_sandbox_is_unhealthy_from_the_start(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    workerd = files.folder / "runtime" / "workerd"
    workerd.unlink()
    workerd.write_text("#!/bin/sh\necho 'exec: runtime/workerd: not found' >&2\nexit 127\n")
    workerd.chmod(0o755)
    async with daemon_on(files, startup_canary=True) as (_, client):
        body = await health_becomes(client, 503)
        assert "a known-good canary job failed" in body["reasons"]["sandbox"]
        assert "127" in body["reasons"]["sandbox"]


async def test_a_working_sandbox_passes_the_startup_canary(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    async with daemon_on(files, startup_canary=True) as (daemon, client):
        assert daemon.health is not None and daemon.health.sandbox is not None
        sandbox = daemon.health.sandbox
        await wait_until(lambda: sandbox.canaries, timeout=20, what="the start-up canary")
        status, body = await health(client)
        assert status == 200, body


async def test_user_code_that_fails_in_the_sandbox_does_not_make_the_node_unhealthy(
    tmp_path: Path,
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    sandbox = Sandbox(
        workerd_bin=workerd_binary(), runtime_path=runtime, secret_store_path=tmp_path, pool=None
    )
    watch = SandboxWatch(sandbox)
    for _ in range(SANDBOX_FAILURE_STREAK):
        with pytest.raises(SandboxError):  # the user's module does not start: not the node's
            await watch.execute(CODE_NO_DEFAULT_EXPORT.encode(), b"", deadline_ms=5000)
    assert watch.suspect
    await watch.canary(force=True)  # known-good code runs: the sandbox is fine
    assert watch.broken is None and not watch.suspect
    outcome = await watch.execute(
        b"export default {fetch() {return new Response('y')}}", b"", deadline_ms=5000
    )
    assert outcome.error_code == ErrorCode.OK


async def test_a_gas_account_that_cannot_pay_is_a_reason(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    broke = DevAccount.from_key(Account.create().key)
    async with daemon_on(files) as (_, client):
        await client.init(
            owner_address=OWNER.address,
            executor_gas_key=broke.private_key,
            store_gas_key="",
            ws_api_key="",
        )
        body = await health_becomes(client, 503)
        assert f"gas account {broke.address} holds 0 wei" in body["reasons"]["gas"]
        assert "fund it" in body["reasons"]["gas"]


async def test_parts_down_are_reasons(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    down: dict[str, str] = {"listener": "crashed 3 times in 60s, last: boom"}

    def parts_down() -> Mapping[str, str]:
        return down

    async with daemon_on(files, parts_down=parts_down) as (_, client):
        body = await health_becomes(client, 503)
        assert body["reasons"] == {"part:listener": "crashed 3 times in 60s, last: boom"}
        down.clear()
        await health_becomes(client, 200)


async def test_running_jobs_are_listed_and_counted(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    async with daemon_on(files, metrics=True) as (daemon, client):
        await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
        await wait_registered(daemon)
        assert (await client.get_json("/jobs")) == {"jobs": []}
        codehash = await devnet.save_code(USER, CODE_SLOW)
        job_id = await devnet.create_job(
            USER, codehash=codehash, code_inputs=b"", deadline_ms=15000
        )

        async def listed() -> list[dict[str, Any]]:
            return list((await client.get_json("/jobs"))["jobs"])

        [job] = await wait_until(listed, timeout=10, what="the job in GET /jobs")
        assert job["job_id"] == job_id and job["deadline_ms"] == 15000
        assert job["running_s"] >= 0 and job["tx_hash"].startswith("0x")

        assert daemon.health is not None
        node_health = daemon.health
        await wait_until(lambda: node_health.gas.balance_wei, timeout=10, what="the gas balance")
        async with aiohttp.ClientSession() as session, session.get(daemon.metrics_url) as r:
            samples = parse_exposition(await r.text())
        assert samples[f'oyster_executor_info{{version="{__version__}"}}'] == 1
        assert samples["oyster_executor_jobs_in_flight"] == 1
        assert samples["oyster_executor_gas_balance_wei"] > 0
        assert samples["oyster_executor_healthy"] == 1

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "executor",
            "admin",
            "status",
            "--url",
            daemon.admin_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert f'"job_id": {job_id}' in out.decode() and '"healthy": true' in out.decode()
        await wait_until(lambda: devnet.job_responses(job_id), timeout=20, what="the answer")
        await wait_until(
            lambda: not daemon.service or not daemon.service.running_jobs(),
            timeout=10,
            what="the job to leave GET /jobs",
        )
