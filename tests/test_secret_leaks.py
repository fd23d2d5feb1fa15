"""No key and no secret reaches a log line or an API answer, at DEBUG, from any library.

A full run (registration, a job reading its secret file, an RPC failure whose exception text
quotes the RPC URL, admin requests) with every logger at DEBUG; the captured log and the admin
answers are then searched for every secret in every spelling: hex with and without ``0x``, in
any letter case, the websocket and HTTP API keys, and the secret file's content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from pathlib import Path

import pytest
from eth_account import Account

from executor.admin.client import AdminClient
from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import register_on_chain, write_node_files
from tests.chain_helpers import ROLES
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.node_helpers import running_daemon, wait_registered, wait_until
from tests.relay import running_relay
from tests.ws_proxy import running_ws_proxy

OWNER, USER = ROLES.owner, ROLES.user
LOGGERS = ("", "executor", "web3", "aiohttp", "websockets", "asyncio", "urllib3")

SECRET_JS = """
export default {
  async fetch(request, env) {
    const secret = new Uint8Array(env.secret);
    console.log("the secret is " + new TextDecoder().decode(secret));
    const digest = await crypto.subtle.digest("SHA-256", secret);
    return new Response(new Uint8Array(digest));
  }
};
"""


def spellings(secret: str) -> set[str]:
    core = secret[2:] if secret.lower().startswith("0x") else secret
    return {core, core.lower(), core.upper(), "0x" + core.lower(), "0X" + core.upper()}


def assert_absent(text: str, secret_values: dict[str, str], where: str) -> None:
    lowered = text.lower()
    for name, value in secret_values.items():
        for spelling in spellings(value):
            assert spelling.lower() not in lowered, f"{name} found in {where}"


async def test_no_secret_in_debug_logs_or_admin_answers(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    gas = Account.create()
    store_gas = Account.create()
    ws_key = "Ws-" + secrets.token_hex(12) + "_Key"
    http_key = secrets.token_hex(20)
    file_secret = "file-secret-" + secrets.token_urlsafe(24)
    await devnet.send_eth(DEV_ACCOUNTS[0], gas.address, 10**20)
    answers: list[str] = []

    async with (
        running_secret_store(FakeSecretStore()) as store,
        running_relay(anvil.http_url) as rpc,
        running_ws_proxy(anvil.ws_url, keys={ws_key}) as ws,
    ):
        files = write_node_files(
            tmp_path / "node",
            anvil,
            devnet,
            secret_store_port=store.port,
            ws_url=ws.url,
            http_url=f"{rpc.url}v3/{http_key}",
        )
        (files.settings.secret_store_path / "7.bin").write_text(file_secret)
        enclave_secret = (files.folder / "id.sec").read_bytes().hex()
        async with running_daemon(files) as daemon:
            client = AdminClient(daemon.admin_url, timeout_s=10)
            result = await client.init(
                owner_address=OWNER.address,
                executor_gas_key=gas.key.to_0x_hex(),
                store_gas_key=store_gas.key.hex(),
                ws_api_key=ws_key,
            )
            answers.append(repr(result))
            await register_on_chain(
                devnet, OWNER, result["tee_details"], result["registration_message"]
            )
            await wait_registered(daemon)

            codehash = await devnet.save_code(USER, SECRET_JS)
            job_id = await devnet.create_job(
                USER, codehash=codehash, code_inputs=b"", secret_id=7, deadline_ms=5000
            )
            (response,) = await wait_until(
                lambda: devnet.job_responses(job_id), timeout=30, what="the secret job's output"
            )
            assert response.error_code == ErrorCode.OK
            assert response.output == hashlib.sha256(file_secret.encode()).digest()

            # An RPC failure: aiohttp's exception text quotes the URL, API key included.
            rpc.fail_status = 500
            failing = await devnet.save_code(USER, SECRET_JS)
            await devnet.create_job(USER, codehash=failing, code_inputs=b"", deadline_ms=3000)
            await wait_until(
                lambda: any("every RPC failed" in r.getMessage() for r in caplog.records),
                timeout=30,
                what="the failed code fetch",
            )
            rpc.fail_status = None

            # Admin answers, good and bad, including one quoting the store's reply.
            for path in ("/tee-details", "/signed-registration-message"):
                answers.append((await client.expect_ok("GET", path)).text)
            bad = await client.request(
                "POST",
                "/mutable-config",
                {
                    "executor_gas_key": gas.key.hex()[:-2],
                    "secret_store_gas_key": store_gas.key.hex(),
                    "ws_api_key": ws_key,
                },
            )
            assert bad.status == 400
            answers.append(bad.text)
            await asyncio.sleep(
                0.5
            )  # a short quiet period: the loops' later lines must be clean too

    assert any(r.levelno == logging.DEBUG and r.name.startswith("web3") for r in caplog.records)
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    secret_values = {
        "enclave key": enclave_secret,
        "executor gas key": gas.key.hex(),
        "secret store gas key": store_gas.key.hex(),
        "ws API key": ws_key,
        "HTTP RPC API key": http_key,
        "secret file content": file_secret,
    }
    assert_absent(logged, secret_values, "the log")
    assert_absent("\n".join(answers), secret_values, "an admin answer")
    assert DevAccount.from_key(gas.key).address in caplog.text  # the log is not simply empty
