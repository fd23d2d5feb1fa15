"""The shipped example config, used as an operator would: from another working directory.

Its paths are relative (``./runtime/``, ``./store/``, ``./id.sec``); they resolve against the
config file's folder, so the daemon answers jobs wherever it was started. Only the chain keys are
overridden (by ``OYSTER_EXECUTOR_*`` variables) to point at this test's anvil.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from executor.chain.enclave_key import EnclaveKey
from executor.config import Settings
from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register
from oyster_devnet.tools import workerd_binary
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.sandbox_helpers import slice_parent

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
EXAMPLE = Path(__file__).parents[1] / "config.example.json"


async def test_example_config_from_another_working_directory_answers_jobs(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    config_file = folder / "config.json"
    shutil.copy(EXAMPLE, config_file)
    (folder / "runtime").mkdir()
    (folder / "runtime" / "workerd").symlink_to(workerd_binary())
    (folder / "store").mkdir()
    key = EnclaveKey.generate()
    key.write_secret(folder / "id.sec")
    chain = {
        "HTTP_RPC_URL": anvil.http_url,
        "WEB_SOCKET_URL": anvil.ws_url,
        "COMMON_CHAIN_ID": str(anvil.chain_id),
        "TEE_MANAGER_CONTRACT_ADDR": devnet.tee_manager_address,
        "JOBS_CONTRACT_ADDR": devnet.jobs_address,
        "CODE_CONTRACT_ADDR": devnet.user_code_address,
        "EXECUTION_BUFFER_TIME": str(devnet.execution_buffer_time),
        "NUM_SELECTED_EXECUTORS": str(devnet.num_selected_executors),
    }
    for name, value in chain.items():
        monkeypatch.setenv(f"OYSTER_EXECUTOR_{name}", value)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    settings = Settings.load(config_file)
    assert settings.workerd_binary == folder / "runtime" / "workerd"
    files = NodeFiles(folder, config_file, settings, key)
    with slice_parent(count=2) as parent:
        async with running_daemon(files, cgroup_parent=parent) as daemon:
            await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
            await wait_registered(daemon)
            codehash = await devnet.save_code(USER, CODE_ECHO)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"from elsewhere", deadline_ms=5000
            )
            [response] = await wait_until(
                lambda: devnet.job_responses(job_id), timeout=20, what=f"job {job_id}'s answer"
            )
    assert response.executor == key.address
    assert response.error_code == ErrorCode.OK
    assert response.output == b"echo:from elsewhere"
    assert not list(elsewhere.iterdir())  # nothing was written in the working directory
