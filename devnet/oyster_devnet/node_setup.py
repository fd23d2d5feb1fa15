"""Bring up an executor node on the devnet: its files, its admin init and its registration.

Shared by ``make demo`` and the end-to-end tests so both exercise the operator's real path:
a fresh enclave key and config file, ``admin init`` through the admin API, and the signed
registration message sent to the devnet TeeManager by the owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.admin.client import AdminClient
from executor.chain.enclave_key import EnclaveKey
from executor.config import Settings
from oyster_devnet.accounts import DevAccount
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.tools import workerd_binary


@dataclass(frozen=True)
class NodeFiles:
    folder: Path
    config_file: Path
    settings: Settings
    key: EnclaveKey


def write_node_files(
    folder: Path,
    anvil: AnvilNode,
    devnet: Devnet,
    *,
    secret_store_port: int | None = None,
    ws_url: str | None = None,
    http_url: str | list[str] | None = None,
) -> NodeFiles:
    """A fresh enclave key, runtime folder (holding workerd), secret store folder and config.

    ``ws_url`` / ``http_url`` replace the anvil's own URLs (e.g. a proxy in front of it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = EnclaveKey.generate()
    key.write_secret(folder / "id.sec")
    runtime = folder / "runtime"
    runtime.mkdir()
    (runtime / "workerd").symlink_to(workerd_binary())
    (folder / "store").mkdir()
    config: dict[str, Any] = {
        "secret_store_config_port": secret_store_port,
        "workerd_runtime_path": str(runtime),
        "secret_store_path": str(folder / "store"),
        "common_chain_id": anvil.chain_id,
        "http_rpc_url": http_url or anvil.http_url,
        "web_socket_url": ws_url or anvil.ws_url,
        "tee_manager_contract_addr": devnet.tee_manager_address,
        "jobs_contract_addr": devnet.jobs_address,
        "code_contract_addr": devnet.user_code_address,
        "enclave_signer_file": str(folder / "id.sec"),
        "execution_buffer_time": devnet.execution_buffer_time,
        "num_selected_executors": devnet.num_selected_executors,
    }
    config_file = folder / "oyster_serverless_executor_config.json"
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return NodeFiles(folder, config_file, Settings.load(config_file), key)


async def init_and_register(
    admin_url: str, devnet: Devnet, *, owner: DevAccount, gas: DevAccount, ws_api_key: str = ""
) -> dict[str, Any]:
    """``admin init`` the executor, then register it on chain with the signed message."""
    result = await AdminClient(admin_url).init(
        owner_address=owner.address,
        executor_gas_key=gas.private_key,
        store_gas_key=gas.private_key,
        ws_api_key=ws_api_key,
    )
    await register_on_chain(devnet, owner, result["tee_details"], result["registration_message"])
    return result


async def register_on_chain(
    devnet: Devnet, owner: DevAccount, details: dict[str, Any], message: dict[str, Any]
) -> None:
    """Send the executor's signed registration message to the TeeManager as ``owner``."""
    await devnet.register_node(
        owner,
        bytes.fromhex(details["enclave_public_key"][2:]),
        message["job_capacity"],
        message["storage_capacity"],
        message["env"],
        message["sign_timestamp"],
        bytes.fromhex(message["signature"][2:]),
    )
