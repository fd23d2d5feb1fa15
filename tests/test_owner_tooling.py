"""``oyster-executor owner``, as an operator runs it, on the devnet TeeManager of a real anvil.

The real CLI in a subprocess registers, drains, revives and deregisters a running daemon's node;
the daemon follows each state. Mistakes (a key on the wrong owner, a readable key file, an
address that is no TeeManager) end in one line naming the problem and send nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

import executor
from executor.admin.client import AdminClient
from executor.chain.enclave_key import EnclaveKey
from executor.daemon import Daemon
from executor.node import NodeStatus
from executor.owner.attestation import (
    AttestationError,
    attestation_digest,
    from_verifier_reply,
    parse_pcrs,
    self_sign,
)
from executor.owner.chain import ABI_DIR, load_abi
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet, load_artifact
from oyster_devnet.node_setup import NodeFiles, write_node_files
from tests.eip712_reference import typed_data
from tests.node_helpers import CODE_ECHO, running_daemon, wait_until

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]


@pytest.fixture
async def node(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> AsyncIterator[tuple[Daemon, NodeFiles]]:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    async with running_daemon(files) as daemon:
        await AdminClient(daemon.admin_url).init(
            owner_address=OWNER.address,
            executor_gas_key=GAS.private_key,
            store_gas_key="",
            ws_api_key="",
        )
        yield daemon, files


def key_file(tmp_path: Path, private_key: str, mode: int = 0o600) -> Path:
    path = tmp_path / f"owner-{private_key[2:10]}.key"
    path.write_text(private_key + "\n")
    path.chmod(mode)
    return path


async def owner_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if k != "OYSTER_OWNER_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        "owner",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def status(daemon: Daemon) -> NodeStatus:
    assert daemon.service is not None
    return daemon.service.status


async def test_owner_registers_drains_revives_and_deregisters_on_the_devnet(
    tmp_path: Path, node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    daemon, files = node
    me = files.key.address
    chain = ["--config-file", str(files.config_file)]
    owner_key = ["--owner-key-file", str(key_file(tmp_path, OWNER.private_key))]
    admin = ["--admin-url", daemon.admin_url]

    code, out = await owner_cli("register", *chain, *owner_key, *admin)
    assert code == 0, out
    assert "devnet" in out and f"enclave {me}: registered, active, owner {OWNER.address}" in out
    await wait_until(lambda: status(daemon) is NodeStatus.ACTIVE, timeout=10, what="registered")
    node_info = await devnet.tee_node(me)
    assert node_info is not None and node_info.owner == OWNER.address

    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(USER, codehash=codehash, code_inputs=b"hi", deadline_ms=3000)
    responses = await wait_until(
        lambda: devnet.job_responses(job_id), timeout=20, what="the registered node's answer"
    )
    assert responses[0].output == b"echo:hi"

    code, out = await owner_cli("drain", *chain, *owner_key, "--enclave", me)
    assert code == 0 and "registered, draining" in out, out
    await wait_until(lambda: status(daemon) is NodeStatus.DRAINED, timeout=10, what="drain seen")

    # the key from the environment this time, the enclave address from the admin API
    code, out = await owner_cli(
        "revive", *chain, *admin, env={"OYSTER_OWNER_KEY": OWNER.private_key}
    )
    assert code == 0 and "registered, active" in out, out
    await wait_until(lambda: status(daemon) is NodeStatus.ACTIVE, timeout=10, what="revive seen")

    code, out = await owner_cli("deregister", *chain, *owner_key, "--enclave", me)
    assert code == 0 and f"enclave {me}: not registered" in out, out
    await wait_until(lambda: status(daemon) is NodeStatus.IDLE, timeout=10, what="deregister seen")
    assert await devnet.tee_node(me) is None

    code, out = await owner_cli("status", *chain, *owner_key, "--enclave", me)
    assert code == 1 and "not registered" in out, out


async def test_register_from_a_saved_init_output(
    tmp_path: Path, node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    """The owner without access to the admin API registers with what `admin init` printed."""
    daemon, files = node
    client = AdminClient(daemon.admin_url)
    saved = {
        "tee_details": (await client.expect_ok("GET", "/tee-details")).json(),
        "registration_message": (
            await client.expect_ok("GET", "/signed-registration-message")
        ).json(),
    }
    assert saved["registration_message"]["enclave_public_key"] == "0x" + files.key.public_key.hex()
    message_file = tmp_path / "init.json"
    message_file.write_text(json.dumps(saved))
    register = (
        "register",
        "--config-file",
        str(files.config_file),
        "--owner-key-file",
        str(key_file(tmp_path, OWNER.private_key)),
        "--message-file",
        str(message_file),
    )
    code, out = await owner_cli(*register)
    assert code == 0, out
    await wait_until(lambda: status(daemon) is NodeStatus.ACTIVE, timeout=10, what="registered")

    code, out = await owner_cli(*register)
    assert code == 2 and "already registered" in out and "Traceback" not in out, out


async def test_mistakes_are_one_line_and_send_nothing(
    tmp_path: Path, node: tuple[Daemon, NodeFiles], devnet: Devnet
) -> None:
    daemon, files = node
    chain = ["--config-file", str(files.config_file)]
    admin = ["--admin-url", daemon.admin_url]

    stranger = Account.create().key.to_0x_hex()
    code, out = await owner_cli(
        "register", *chain, "--owner-key-file", str(key_file(tmp_path, stranger)), *admin
    )
    assert code == 2 and f"initialized with owner {OWNER.address}" in out, out

    readable = key_file(tmp_path, OWNER.private_key, mode=0o644)
    code, out = await owner_cli("register", *chain, "--owner-key-file", str(readable), *admin)
    assert code == 2 and f"chmod 600 {readable}" in out, out

    code, out = await owner_cli("register", *chain, *admin)
    assert code == 2 and "OYSTER_OWNER_KEY" in out, out

    code, out = await owner_cli(
        "register",
        "--rpc-url",
        json.loads(files.config_file.read_text())["http_rpc_url"],
        "--tee-manager",
        devnet.jobs_address,
        "--owner-key-file",
        str(key_file(tmp_path, OWNER.private_key)),
        *admin,
    )
    assert code == 2 and "is not a TeeManager" in out, out

    code, out = await owner_cli(
        "drain", *chain, "--owner-key-file", str(key_file(tmp_path, OWNER.private_key)),
        "--enclave", files.key.address,
    )  # fmt: skip
    assert code == 2 and "would revert: TeeManagerNodeNotFound" in out, out
    assert "Traceback" not in out
    assert await devnet.tee_node(files.key.address) is None
    assert status(daemon) is NodeStatus.AWAITING_REGISTRATION


def test_owner_abis_match_the_devnet_contract() -> None:
    """Every member of the devnet owner ABI is one the devnet TeeManager has."""
    devnet_abi, _ = load_artifact("TeeManager")
    owner_abi = load_abi("DevnetTeeManager")
    assert {e.get("name") for e in owner_abi} >= {
        "registerTeeNode",
        "drainTeeNode",
        "reviveTeeNode",
        "deregisterTeeNode",
    }
    assert all(entry in devnet_abi for entry in owner_abi)
    production = {e["name"] for e in load_abi("OysterTeeManager") if e["type"] == "function"}
    assert {"registerTeeNode", "removeTeeNodeStake", "STAKING_TOKEN"} <= production


def test_attestation_digest_is_the_eip712_reference() -> None:
    key = EnclaveKey.generate()
    pcrs = parse_pcrs(",".join(bytes([i]).hex() * 48 for i in (1, 2, 3)))
    reference = typed_data(
        "marlin.oyster.AttestationVerifier",
        "Attestation",
        [
            {"name": "enclavePubKey", "type": "bytes"},
            {"name": "PCR0", "type": "bytes"},
            {"name": "PCR1", "type": "bytes"},
            {"name": "PCR2", "type": "bytes"},
            {"name": "timestampInMilliseconds", "type": "uint256"},
        ],
        {
            "enclavePubKey": key.public_key,
            "PCR0": pcrs[0],
            "PCR1": pcrs[1],
            "PCR2": pcrs[2],
            "timestampInMilliseconds": 1_700_000_000_123,
        },
    )
    expected = keccak(b"\x19" + reference.version + reference.header + reference.body)
    assert attestation_digest(key.public_key, *pcrs, 1_700_000_000_123) == expected
    verifier = EnclaveKey.generate()
    signed = self_sign(verifier, key.public_key, pcrs, 1_700_000_000_123)
    assert signed.verifier_address() == verifier.address


def test_verifier_replies_are_read_or_refused_clearly() -> None:
    key = EnclaveKey.generate()
    pcr = "ab" * 48
    reply = {
        "signature": "11" * 65,
        "public_key": key.public_key.hex(),
        "pcr0": pcr,
        "pcr1": pcr,
        "pcr2": pcr,
        "timestamp": 1_700_000_000_000,
        "verifier_secp256k1_public": "22" * 64,
    }
    attestation = from_verifier_reply(reply, "reply")
    assert attestation.enclave_public_key == key.public_key and attestation.pcr0 == bytes(
        48 * [0xAB]
    )
    image_id_format = {"signature": "11" * 65, "image_id": "33" * 32, "timestamp_ms": 1}
    with pytest.raises(AttestationError, match="image-id format"):
        from_verifier_reply(image_id_format, "reply")
    with pytest.raises(AttestationError, match="pcr1"):
        from_verifier_reply({**reply, "pcr1": "ab"}, "reply")


async def test_the_attestation_goes_from_the_enclave_server_to_the_verifier() -> None:
    """The HTTP flow `owner register` follows on production: GET the raw document from the
    enclave's attestation server, POST it as is to the verifier, read the verifier's JSON."""
    from aiohttp import web

    from executor.owner.attestation import fetch_and_verify

    enclave, verifier_key = EnclaveKey.generate(), EnclaveKey.generate()
    pcrs = (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48)
    document = b"\xd2\x84raw-cose-sign1-document"
    received: list[tuple[str, bytes]] = []

    async def attestation_raw(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/octet-stream")

    async def verify_raw(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        signed = self_sign(verifier_key, enclave.public_key, pcrs, 1_700_000_000_000)
        return web.json_response(
            {
                "signature": signed.signature.hex(),
                "public_key": enclave.public_key.hex(),
                "pcr0": pcrs[0].hex(),
                "pcr1": pcrs[1].hex(),
                "pcr2": pcrs[2].hex(),
                "timestamp": signed.timestamp_ms,
                "verifier_secp256k1_public": verifier_key.public_key.hex(),
            }
        )

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="error while verifying attestation")

    app = web.Application()
    app.router.add_get("/attestation/raw", attestation_raw)
    app.router.add_post("/verify/raw", verify_raw)
    app.router.add_post("/refuse", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        attestation = await fetch_and_verify(f"{base}/attestation/raw", f"{base}/verify/raw")
        assert received == [("application/octet-stream", document)]
        assert attestation.enclave_public_key == enclave.public_key and attestation.pcr2 == pcrs[2]
        assert attestation.verifier_address() == verifier_key.address
        with pytest.raises(AttestationError, match="refused the attestation \\(401\\)"):
            await fetch_and_verify(f"{base}/attestation/raw", f"{base}/refuse")
        with pytest.raises(AttestationError, match="answered 404"):
            await fetch_and_verify(f"{base}/nothing", f"{base}/verify/raw")
    finally:
        await runner.cleanup()


def test_the_owner_abis_ship_in_the_package() -> None:
    # An operator who installed the wheel (no checkout) runs the same owner commands.
    assert ABI_DIR.is_relative_to(Path(executor.__file__).parent)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["executor.abi"] == ["*.json"]
    for name in ("OysterTeeManager", "DevnetTeeManager", "StakingToken", "Jobs", "TeeManager"):
        assert load_abi(name), name
