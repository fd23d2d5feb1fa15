"""``admin init`` cannot half-configure a node: a real daemon (admin API on a real socket) with the
fake secret store, driven by the real client and the real CLI.

Every input is checked before anything is sent; a node that already has this owner goes on with
the mutable part (key rotation); a node owned by another address is refused, unchanged.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor.admin.client import AdminClient, AdminClientError
from oyster_devnet.accounts import DEV_ACCOUNTS
from tests.admin_node import AdminNode, admin_node

OWNER, OTHER, GAS, GAS2 = DEV_ACCOUNTS[1], DEV_ACCOUNTS[4], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
ZERO = "0x" + "00" * 20


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[AdminNode]:
    async with admin_node(tmp_path / "node") as node:
        yield node


def good(**changes: str) -> dict[str, str]:
    return {
        "owner_address": OWNER.address,
        "executor_gas_key": GAS.private_key,
        "store_gas_key": GAS.private_key,
        "ws_api_key": "key_1",
        **changes,
    }


def assert_untouched(node: AdminNode) -> None:
    service = node.daemon.service
    assert service is not None
    assert service.owner is None and service.gas_account is None
    assert node.store.calls == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"executor_gas_key": GAS.private_key[:-2] + "zz"},
            "--executor-gas-key: is not a valid hex",
        ),
        ({"executor_gas_key": GAS.private_key[:-2]}, "--executor-gas-key: must be 32 bytes"),
        ({"executor_gas_key": "0x" + "00" * 32}, "--executor-gas-key: is not a valid secp256k1"),
        ({"store_gas_key": "0x1234"}, "--store-gas-key: must be 32 bytes"),
        ({"store_gas_key": ""}, "--store-gas-key: required, this executor runs with a secret"),
        ({"owner_address": "0x1234"}, "--owner-address: must be 20 bytes"),
        ({"owner_address": ZERO}, "--owner-address: the zero address cannot own"),
        ({"ws_api_key": "has space"}, "--ws-api-key: API key contains invalid characters"),
    ],
)
async def test_a_bad_input_changes_nothing(
    node: AdminNode, changes: dict[str, str], message: str
) -> None:
    with pytest.raises(AdminClientError, match="nothing was sent") as caught:
        await node.client.init(**good(**changes))
    assert message in str(caught.value)
    assert GAS.private_key[4:] not in str(caught.value)  # never quotes a key
    assert_untouched(node)
    # and the node can still be initialised normally afterwards
    result = await node.client.init(**good())
    assert result["tee_details"]["owner_address"] == OWNER.address


async def test_init_again_with_the_same_owner_rotates_the_keys(node: AdminNode) -> None:
    first = await node.client.init(**good())
    assert first["tee_details"]["executor_gas_address"] == GAS.address
    node.store.calls.clear()
    second = await node.client.init(
        **good(executor_gas_key=GAS2.private_key, store_gas_key=GAS2.private_key, ws_api_key="k2")
    )
    assert second["tee_details"]["executor_gas_address"] == GAS2.address
    assert second["tee_details"]["owner_address"] == OWNER.address
    assert [name for name, _ in node.store.calls] == ["mutable"]  # no second immutable attempt
    assert node.store.ws_api_key == "k2"


async def test_init_with_another_owner_is_refused_and_changes_nothing(node: AdminNode) -> None:
    await node.client.init(**good())
    node.store.calls.clear()
    with pytest.raises(AdminClientError) as caught:
        await node.client.init(
            **good(owner_address=OTHER.address, executor_gas_key=GAS2.private_key)
        )
    text = str(caught.value)
    assert f"already owned by {OWNER.address}, not {OTHER.address}" in text
    assert "nothing was sent" in text
    service = node.daemon.service
    assert service is not None and service.gas_account is not None
    assert service.owner == OWNER.address and service.gas_account.address == GAS.address
    assert node.store.calls == []


async def test_a_half_configured_node_is_finished_by_running_init_again(node: AdminNode) -> None:
    # The owner got set (say by an older client) but the mutable part never arrived.
    await node.client.expect_ok("POST", "/immutable-config", {"owner_address_hex": OWNER.address})
    result = await node.client.init(**good())
    assert result["tee_details"]["executor_gas_address"] == GAS.address
    assert result["registration_message"]["owner"] == OWNER.address


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_reports_a_bad_gas_key_in_one_line(node: AdminNode) -> None:
    status, out, err = await run_cli(
        "admin",
        "init",
        "--url",
        node.daemon.admin_url,
        "--owner-address",
        OWNER.address,
        "--executor-gas-key",
        "0xnot-a-key",
        "--store-gas-key",
        GAS.private_key,
    )
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [
        "oyster-executor: error: --executor-gas-key: is not a valid hex string (nothing was sent)"
    ]
    assert_untouched(node)


async def test_the_cli_reports_an_unreachable_executor_in_one_line(tmp_path: Path) -> None:
    status, _, err = await run_cli(
        "admin", "status", "--url", "http://127.0.0.1:9/", "--timeout", "1"
    )
    assert status == 2
    [line] = err.strip().splitlines()
    assert "did not answer within 1s" in line and "cannot connect" in line


async def test_malformed_urls_are_refused_before_anything() -> None:
    for url in ("vsock://x:1/", "http://127.0.0.1:99999/", "ftp://a:1/", "http://nohost/"):
        with pytest.raises(AdminClientError, match="--url"):
            AdminClient(url)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",  # a status that is no number
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",  # a length that is no number
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
        b"garbage\r\n\r\n",
    ],
)
async def test_a_malformed_reply_is_an_error_not_a_traceback(reply: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AdminClientError, match=r"talking to the executor at .* failed"):
            await AdminClient(f"http://127.0.0.1:{port}/", timeout_s=5).request("GET", "/")
    finally:
        server.close()
        await server.wait_closed()
