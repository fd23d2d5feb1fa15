"""The supervisor: failures logged and counted, loops restarted within an error budget, parts
that stay down reported with their reason (``parts_down``), and the part metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from executor.admin.client import AdminClient
from executor.chain.transactions import manager as txs
from executor.metrics import Metrics
from executor.supervisor import Supervisor
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.endpoint_proxy import running_http_proxy
from tests.node_helpers import running_daemon, wait_registered, wait_until
from tests.sandbox_helpers import eventually

OWNER, GAS = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2]


def samples(metrics: Metrics) -> dict[str, float]:
    lines = metrics.exposition().decode().splitlines()
    return {
        key: float(value)
        for line in lines
        if line and not line.startswith("#")
        for key, _, value in [line.rpartition(" ")]
    }


async def test_a_loop_that_keeps_failing_is_restarted_then_stays_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    supervisor = Supervisor(metrics=metrics, max_failures=3, backoff_s=0.01)
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"bug {calls}")

    with caplog.at_level(logging.ERROR, logger="executor.supervisor"):
        task = supervisor.run("looper", broken)
        await task
    assert calls == 3
    assert supervisor.parts_down() == {
        "looper": "stopped after 3 failure(s) in 60s: RuntimeError: bug 3"
    }
    state = supervisor.parts()["looper"]
    assert (state["up"], state["failures"], state["restarts"]) == (False, 3, 2)
    assert [r.message for r in caplog.records].count("part looper failed: RuntimeError: bug 1") == 1
    got = samples(metrics)
    assert got['oyster_executor_part_up{part="looper"}'] == 0.0
    assert got['oyster_executor_part_failures_total{part="looper"}'] == 3.0
    assert got['oyster_executor_part_restarts_total{part="looper"}'] == 2.0


async def test_a_loop_that_failed_once_runs_again_and_is_up() -> None:
    supervisor = Supervisor(backoff_s=0.01)
    running = asyncio.Event()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("once")
        running.set()
        await asyncio.Event().wait()

    task = supervisor.run("flaky", flaky)
    await running.wait()
    assert supervisor.parts_down() == {}
    assert supervisor.parts()["flaky"]["restarts"] == 1
    await supervisor.close()
    assert task.cancelled()


async def test_a_part_that_cannot_be_restarted_is_down_at_once_and_one_that_returns_is_not() -> (
    None
):
    supervisor = Supervisor(backoff_s=0.01)

    async def dies() -> None:
        raise ValueError("lost its place")

    async def ends() -> None:
        return

    await supervisor.run("once", dies, restart=False)
    await supervisor.run("done", ends)
    assert supervisor.parts_down() == {"once": "stopped: ValueError: lost its place"}


async def test_failing_background_tasks_and_health_checks_are_reported() -> None:
    supervisor = Supervisor(max_failures=2)
    trouble: str | None = None
    supervisor.watch("stream", lambda: trouble)
    tasks = supervisor.tasks("helpers")

    async def fails() -> None:
        raise RuntimeError("arming broke")

    tasks.spawn(fails(), name="one")
    await eventually(lambda: supervisor.parts()["helpers"]["failures"] == 1)
    assert supervisor.parts_down() == {}  # one failure is within the budget
    tasks.spawn(fails(), name="two")
    trouble = "10 connections in a row failed"
    await eventually(lambda: supervisor.parts()["helpers"]["failures"] == 2)
    assert supervisor.parts_down() == {
        "helpers": "2 failures in 60s: RuntimeError: arming broke",
        "stream": "10 connections in a row failed",
    }


async def test_the_admin_index_reports_the_parts_and_a_failing_transaction_loop(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(txs, "LOOP_ERROR_BUDGET", 3)
    async with running_http_proxy(anvil.http_url) as http:
        files = write_node_files(tmp_path / "node", anvil, devnet, http_url=http.url)
        async with running_daemon(files) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            admin = AdminClient(daemon.admin_url)
            body = (await admin.expect_ok("GET", "/")).json()
            assert body["status"] == "active"  # the fields operator tools read are still there
            assert {"tx-manager", "event-stream", "follower"} <= set(body["parts"])
            assert all(p["up"] for p in body["parts"].values()), body["parts"]
            assert daemon.supervisor.parts_down() == {}

            http.mode = "error500"  # every read of the transaction loop fails from now on
            await wait_until(
                lambda: "tx-manager" in daemon.supervisor.parts_down(),
                timeout=20,
                what="the failing loop to be reported",
            )
            response = await admin.request("GET", "/")
            http.mode = "ok"
    assert response.status == 200
    state = response.json()["parts"]["tx-manager"]
    assert state["up"] is False and "consecutive failed ticks" in state["reason"], state
