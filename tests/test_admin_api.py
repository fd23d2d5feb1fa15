"""The admin API of docs/protocol.md §6 over a real socket, with and without a secret store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account

from executor.admin.client import AdminClient, AdminClientError
from executor.chain.enclave_key import recover_signer, register_digest
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, write_node_files
from oyster_devnet.tools import free_port
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.node_helpers import running_daemon

OWNER = DEV_ACCOUNTS[1].address
GAS_KEY = DEV_ACCOUNTS[2].private_key
GAS_ADDRESS = DEV_ACCOUNTS[2].address
STORE_GAS_KEY = DEV_ACCOUNTS[4].private_key
ZERO = "0x" + "00" * 20


@pytest.fixture
async def store() -> AsyncIterator[FakeSecretStore]:
    async with running_secret_store(FakeSecretStore(storage_capacity=12345)) as s:
        yield s


@pytest.fixture
async def files(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> NodeFiles:
    return write_node_files(tmp_path / "node", anvil, devnet)


@pytest.fixture
async def client(files: NodeFiles) -> AsyncIterator[AdminClient]:
    async with running_daemon(files) as daemon:
        yield AdminClient(daemon.admin_url, timeout_s=10)


def mutable(**changes: str) -> dict[str, str]:
    body = {
        "executor_gas_key": GAS_KEY,
        "secret_store_gas_key": STORE_GAS_KEY,
        "ws_api_key": "k-1_A",
    }
    return {**body, **changes}


async def test_index_answers_200(client: AdminClient) -> None:
    response = await client.request("GET", "/")
    assert response.status == 200
    health = response.json()
    assert health["status"] == "idle" and health["stream"] is None
    assert health["follower"]["healthy"] is True


async def test_tee_details_before_configuration(client: AdminClient, files: NodeFiles) -> None:
    details = (await client.expect_ok("GET", "/tee-details")).json()
    assert details == {
        "enclave_address": files.key.address,
        "enclave_public_key": "0x" + files.key.public_key.hex(),
        "owner_address": ZERO,
        "executor_gas_address": ZERO,
        "secret_store_gas_address": ZERO,
        "ws_rpc_url": files.settings.ws_url_with_key(""),  # no key yet: ends in "/"
    }
    assert details["ws_rpc_url"].endswith("/")
    assert len(details["enclave_public_key"]) == 2 + 128


@pytest.mark.parametrize(
    ("owner", "message"),
    [
        ("0xzz" + "00" * 19, "not a valid hex string"),
        ("00" * 19, "must be 20 bytes long, got 19"),
        ("0x" + "00" * 21, "must be 20 bytes long, got 21"),
    ],
)
async def test_immutable_config_rejects_bad_owner(
    client: AdminClient, owner: str, message: str
) -> None:
    response = await client.request("POST", "/immutable-config", {"owner_address_hex": owner})
    assert response.status == 400
    assert message in response.text


async def test_immutable_config_only_once(client: AdminClient) -> None:
    ok = await client.request("POST", "/immutable-config", {"owner_address_hex": OWNER[2:]})
    assert (ok.status, ok.text) == (200, "Immutable params configured!\n")
    again = await client.request("POST", "/immutable-config", {"owner_address_hex": OWNER})
    assert again.status == 400 and "already configured" in again.text
    details = (await client.expect_ok("GET", "/tee-details")).json()
    assert details["owner_address"] == OWNER


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ws_api_key": "abc/def"}, "API key contains invalid characters"),
        ({"ws_api_key": "abc def"}, "API key contains invalid characters"),
        ({"ws_api_key": "ключ"}, "API key contains invalid characters"),
        ({"executor_gas_key": "0x1234"}, "must be 32 bytes long, got 2"),
        ({"executor_gas_key": "zz" * 32}, "not a valid hex string"),
        ({"executor_gas_key": "00" * 32}, "not a valid secp256k1 private key"),
        ({"executor_gas_key": "ff" * 32}, "not a valid secp256k1 private key"),
    ],
)
async def test_mutable_config_rejects_bad_values(
    client: AdminClient, changes: dict[str, str], message: str
) -> None:
    response = await client.request("POST", "/mutable-config", mutable(**changes))
    assert response.status == 400
    assert message in response.text


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/immutable-config", b"{not json", "not valid JSON"),
        ("/immutable-config", b"[1]", "must be a JSON object"),
        ("/immutable-config", b"{}", "'owner_address_hex' is required"),
        ("/immutable-config", b'{"owner_address_hex": 5}', "must be a string"),
        ("/mutable-config", b'{"executor_gas_key": "00"}', "'secret_store_gas_key' is required"),
    ],
)
async def test_malformed_bodies_are_rejected_clearly(
    files: NodeFiles, path: str, raw: bytes, message: str
) -> None:
    async with running_daemon(files) as daemon:
        client = AdminClient(daemon.admin_url)
        response = await client.request("POST", path, raw=raw)
        assert response.status == 400
        assert message in response.text
        assert (await client.request("GET", "/")).status == 200  # still serving


async def test_oversized_body_is_refused(client: AdminClient) -> None:
    response = await client.request("POST", "/mutable-config", mutable(ws_api_key="a" * 100_000))
    assert response.status == 413


async def test_registration_message_needs_both_configs(client: AdminClient) -> None:
    first = await client.request("GET", "/signed-registration-message")
    assert first.status == 400 and "Immutable params not configured" in first.text
    await client.expect_ok("POST", "/immutable-config", {"owner_address_hex": OWNER})
    second = await client.request("GET", "/signed-registration-message")
    assert second.status == 400 and "Mutable params not configured" in second.text


async def test_registration_message_is_signed_by_the_enclave(
    client: AdminClient, files: NodeFiles
) -> None:
    await client.expect_ok("POST", "/immutable-config", {"owner_address_hex": OWNER})
    await client.expect_ok("POST", "/mutable-config", mutable())
    message = (await client.expect_ok("GET", "/signed-registration-message")).json()
    assert message["env"] == 1 and isinstance(message["env"], int)
    assert message["owner"] == OWNER
    assert message["storage_capacity"] == 0  # no secret store configured
    assert message["job_capacity"] >= 1
    digest = register_digest(OWNER, message["job_capacity"], 0, 1, message["sign_timestamp"])
    assert recover_signer(digest, bytes.fromhex(message["signature"][2:])) == files.key.address
    details = (await client.expect_ok("GET", "/tee-details")).json()
    assert details["executor_gas_address"] == GAS_ADDRESS
    assert details["ws_rpc_url"].endswith("/***")  # a 5-character key is masked too
    assert "k-1_A" not in details["ws_rpc_url"]


async def test_registration_message_is_timed_by_the_chain(
    client: AdminClient, devnet: Devnet
) -> None:
    # A chain a day ahead of the host's clock: signed with the host's time, the message would be
    # a day old to the contract already (its max age is far less).
    await devnet.increase_time(86_400)
    chain_time = await devnet.chain_time()
    assert chain_time > time.time() + 80_000
    await client.expect_ok("POST", "/immutable-config", {"owner_address_hex": OWNER})
    await client.expect_ok("POST", "/mutable-config", mutable())
    message = (await client.expect_ok("GET", "/signed-registration-message")).json()
    assert chain_time <= message["sign_timestamp"] < chain_time + 60


async def test_gas_key_rotation(client: AdminClient, files: NodeFiles) -> None:
    await client.expect_ok("POST", "/mutable-config", mutable())
    new_key = Account.create()
    await client.expect_ok(
        "POST", "/mutable-config", mutable(executor_gas_key=new_key.key.hex(), ws_api_key="k2")
    )
    details = (await client.expect_ok("GET", "/tee-details")).json()
    assert details["executor_gas_address"] == new_key.address
    assert details["ws_rpc_url"] == files.settings.ws_url_with_key("***")  # even 2 characters


async def test_secret_store_forwarding(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, store: FakeSecretStore
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet, secret_store_port=store.port)
    async with running_daemon(files) as daemon:
        client = AdminClient(daemon.admin_url)
        result = await client.init(
            owner_address=OWNER,
            executor_gas_key=GAS_KEY,
            store_gas_key=STORE_GAS_KEY,
            ws_api_key="key",
        )
    assert store.calls[0] == ("immutable", {"owner_address_hex": OWNER})
    assert store.calls[1] == ("mutable", {"gas_key_hex": STORE_GAS_KEY, "ws_api_key": "key"})
    assert result["tee_details"]["secret_store_gas_address"] == DEV_ACCOUNTS[4].address
    assert result["registration_message"]["storage_capacity"] == 12345


async def test_secret_store_errors_are_reported(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, store: FakeSecretStore
) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet, secret_store_port=store.port)
    async with running_daemon(files) as daemon:
        client = AdminClient(daemon.admin_url)
        rejected = await client.request(
            "POST", "/mutable-config", mutable(secret_store_gas_key="00")
        )
        # Checked locally first: the store never sees a malformed key.
        assert rejected.status == 400 and "'secret_store_gas_key'" in rejected.text
        assert store.calls == []
    # The store goes away: the executor says so instead of failing obscurely.
    files2 = write_node_files(tmp_path / "node2", anvil, devnet, secret_store_port=1)
    async with running_daemon(files2) as daemon:
        client = AdminClient(daemon.admin_url)
        response = await client.request("GET", "/tee-details")
        assert response.status == 502
        assert "secret store /store-details failed" in response.text


async def test_admin_client_errors_are_clear() -> None:
    with pytest.raises(AdminClientError, match="vsock://CID:PORT/ or http://HOST:PORT/"):
        AdminClient("ftp://x:1/")
    with pytest.raises(AdminClientError, match="did not answer"):
        await AdminClient(f"http://127.0.0.1:{free_port()}/").wait_until_up(1.0)
