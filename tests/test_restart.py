"""The daemon killed (SIGKILL) and restarted inside the same enclave (same key) while registered:
once the operator re-runs ``admin init``, it resumes from its own record on chain, without a new
registration; jobs it answered before are not executed again; jobs created while it was down are
answered, or slashed as early as the chain allows (docs/restart.md)."""

from __future__ import annotations

import signal
from pathlib import Path

from eth_account import Account

from executor.admin.client import AdminClient
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.chain_helpers import ROLES
from tests.node_helpers import CODE_ECHO, wait_until
from tests.test_serve_command import serving

OWNER, GAS, USER = ROLES.owner, ROLES.gas, ROLES.user
NOBODY = Account.create().address


def executions(log: Path, job_id: int) -> int:
    return sum(line.count(f"job {job_id}: selected") for line in log.read_text().splitlines())


async def test_a_killed_daemon_resumes_after_admin_init_without_running_a_job_twice(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    me = files.key.address
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    codehash = await devnet.save_code(USER, CODE_ECHO)

    async with serving(files, first_log) as (proc, url):
        await AdminClient(url).wait_until_up(20)
        await init_and_register(url, devnet, owner=OWNER, gas=GAS)
        await wait_until(
            lambda: "registered on chain" in first_log.read_text(), timeout=15, what="registration"
        )
        # Answered before the kill, its window still open after the restart.
        answered = await devnet.create_job(
            USER, codehash=codehash, code_inputs=b"before", deadline_ms=60_000
        )
        await wait_until(lambda: devnet.job_responses(answered), timeout=20, what="first output")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    # While the daemon is down: a job for it, and a job nobody will answer.
    while_down = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"while down", deadline_ms=20_000
    )
    unanswered = await devnet.create_job(
        USER, codehash=codehash, code_inputs=b"x", deadline_ms=1000, executors=[NOBODY]
    )

    async with serving(files, second_log) as (proc, url):
        # The operator's step: admin init again (same owner, gas key); no new registration.
        await AdminClient(url).init(
            owner_address=OWNER.address,
            executor_gas_key=GAS.private_key,
            store_gas_key=GAS.private_key,
            ws_api_key="",
        )
        (response,) = await wait_until(
            lambda: devnet.job_responses(while_down), timeout=30, what="the missed job's output"
        )
        assert response.output == b"echo:while down" and response.executor == me
        slashes = await wait_until(
            lambda: devnet.slash_events(unanswered), timeout=30, what="the missed job's slash"
        )
        health = (await AdminClient(url).expect_ok("GET", "/")).json()
    text = second_log.read_text()
    assert "resuming as active" in text, text
    assert health["status"] == "active"
    assert [s.enclave_address for s in slashes] == [NOBODY]
    assert executions(first_log, answered) == 1
    assert executions(second_log, answered) == 0, "a job answered before the kill ran again"
    assert executions(second_log, while_down) == 1
    assert len(await devnet.job_responses(answered)) == 1
    assert len(await devnet.job_responses(while_down)) == 1
