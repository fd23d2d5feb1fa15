"""No registration that cannot work: the chain's required storage capacity, read before signing.

The production SecretStore subtracts the SecretManager's ``GLOBAL_MAX_SECRET_SIZE`` from a node's
storage capacity on every output: a node registered below it reverts every output. The chain
(TeeManager -> SECRET_STORE() -> SECRET_MANAGER() -> GLOBAL_MAX_SECRET_SIZE()) is stood up on a real
anvil with ``anvil_setCode``: each address holds a few bytes of EVM code that return one word (the
next address, or the size), which is all the executor reads of those contracts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError

from executor.admin.client import AdminClient
from executor.chain.requirements import min_storage_capacity, storage_capacity_problem
from executor.errors import AdminRefused
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import write_node_files
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.node_helpers import running_daemon
from tests.test_admin_api import OWNER, mutable

REQUIRED = 1_000_000
STORE = "0x" + "5e" * 20
MANAGER = "0x" + "3a" * 20


def returning(word: int) -> str:
    """EVM code that returns ``word`` whatever it is called with."""
    return "0x7f" + word.to_bytes(32, "big").hex() + "600052" + "60206000f3"


async def stand_up_chain(w3: AsyncWeb3[Any], tee_manager: str) -> None:
    for address, word in (
        (tee_manager, int(STORE, 16)),
        (STORE, int(MANAGER, 16)),
        (MANAGER, REQUIRED),
    ):
        response = await w3.provider.make_request("anvil_setCode", [address, returning(word)])  # type: ignore[arg-type]
        assert "error" not in response, response


def eth_call_on(w3: AsyncWeb3[Any]) -> Any:
    async def eth_call(to: str, data: bytes) -> bytes | None:
        try:
            return bytes(await w3.eth.call({"to": to, "data": data}))  # type: ignore[typeddict-item]
        except ContractLogicError:
            return None

    return eth_call


async def test_the_required_capacity_is_read_through_the_contracts(
    w3: AsyncWeb3[Any], devnet: Devnet
) -> None:
    # The devnet TeeManager has no SECRET_STORE(): nothing is required.
    assert await min_storage_capacity(eth_call_on(w3), devnet.tee_manager_address) is None
    tee = to_checksum_address("0x" + "7e" * 20)
    await stand_up_chain(w3, tee)
    assert await min_storage_capacity(eth_call_on(w3), tee) == REQUIRED


def test_the_refusal_names_the_requirement_and_the_fix() -> None:
    assert storage_capacity_problem(REQUIRED, REQUIRED) is None
    assert storage_capacity_problem(0, None) is None
    problem = storage_capacity_problem(0, REQUIRED)
    assert problem is not None
    assert "no secret store" in problem and f"GLOBAL_MAX_SECRET_SIZE {REQUIRED}" in problem
    assert "secret_store_config_port" in problem


@pytest.mark.parametrize("capacity", [None, REQUIRED - 1, REQUIRED])
async def test_the_registration_message_is_refused_below_the_required_capacity(
    tmp_path: Path, anvil: AnvilNode, w3: AsyncWeb3[Any], devnet: Devnet, capacity: int | None
) -> None:
    await stand_up_chain(w3, devnet.tee_manager_address)
    if capacity is None:
        files = write_node_files(tmp_path / "node", anvil, devnet)
        await check_registration(files, None)
        return
    async with running_secret_store(FakeSecretStore(storage_capacity=capacity)) as store:
        files = write_node_files(tmp_path / "node", anvil, devnet, secret_store_port=store.port)
        await check_registration(files, capacity)


async def check_registration(files: Any, capacity: int | None) -> None:
    async with running_daemon(files) as daemon:
        client = AdminClient(daemon.admin_url, timeout_s=10)
        await client.expect_ok("POST", "/immutable-config", {"owner_address_hex": OWNER})
        await client.expect_ok("POST", "/mutable-config", mutable())
        if capacity is not None and capacity >= REQUIRED:
            message = (await client.expect_ok("GET", "/signed-registration-message")).json()
            assert message["storage_capacity"] == capacity
            return
        with pytest.raises(AdminRefused) as refused:
            await client.expect_ok("GET", "/signed-registration-message")
        text = str(refused.value)
        assert f"storage capacity {capacity or 0}" in text
        assert f"GLOBAL_MAX_SECRET_SIZE {REQUIRED}" in text


@pytest.mark.parametrize("capacity", [None, REQUIRED])
async def test_doctor_checks_the_storage_capacity_against_the_contracts(
    tmp_path: Path, anvil: AnvilNode, w3: AsyncWeb3[Any], devnet: Devnet, capacity: int | None
) -> None:
    from tests.test_doctor import doctor, rewrite, verdict

    files = write_node_files(tmp_path / "node", anvil, devnet)
    status, lines = await doctor(files.config_file)
    [line] = verdict(lines, "storage capacity")
    assert line.startswith("ok") and "require no storage capacity" in line  # the devnet
    await stand_up_chain(w3, devnet.tee_manager_address)
    if capacity is None:
        status, lines = await doctor(files.config_file)
        [line] = verdict(lines, "storage capacity")
        assert line.startswith("FAIL") and f"GLOBAL_MAX_SECRET_SIZE {REQUIRED}" in line, line
        assert status == 1
        return
    async with running_secret_store(FakeSecretStore(storage_capacity=capacity)) as store:
        config = rewrite(files, secret_store_config_port=store.port)
        status, lines = await doctor(config)
        [line] = verdict(lines, "storage capacity")  # before its init the store does not say
        assert line.startswith("warn") and f"require {REQUIRED}" in line, line
        store.owner = OWNER  # configured, as the admin API's init does
        status, lines = await doctor(config)
    [line] = verdict(lines, "storage capacity")
    assert line.startswith("ok") and f"{capacity} >= GLOBAL_MAX_SECRET_SIZE" in line, line
