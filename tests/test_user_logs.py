"""What a job's code prints reaches the daemon's log only with ``serve --user-logs`` (development):
never by default, which is how production runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from executor.admin.sites import parse_tcp_addr
from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.node_helpers import wait_registered, wait_until

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
PRINTING_CODE = """
export default {
  async fetch(request) {
    console.log("user says " + (await request.text()));
    return new Response("done");
  }
};
"""


@pytest.mark.parametrize("user_logs", [False, True], ids=["production", "user-logs"])
async def test_user_output_is_logged_only_when_asked(
    tmp_path: Path,
    anvil: AnvilNode,
    devnet: Devnet,
    caplog: pytest.LogCaptureFixture,
    user_logs: bool,
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    daemon = Daemon(
        files.settings, parse_tcp_addr("127.0.0.1:0"), unconfined=True, user_logs=user_logs
    )
    caplog.set_level(logging.INFO)
    async with daemon:
        await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
        await wait_registered(daemon)
        codehash = await devnet.save_code(USER, PRINTING_CODE)
        job_id = await devnet.create_job(
            USER, codehash=codehash, code_inputs=b"hello-42", deadline_ms=3000
        )
        responses = await wait_until(
            lambda: devnet.job_responses(job_id), timeout=20, what="the job's answer"
        )
        assert responses[0].output == b"done"
    printed = [r for r in caplog.records if "user says hello-42" in r.getMessage()]
    if user_logs:
        assert [r.name for r in printed] == ["executor.user_code"]
    else:
        assert printed == []
        assert "user says" not in caplog.text
