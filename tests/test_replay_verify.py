"""``oyster-executor replay`` and ``verify`` against a real anvil, the devnet contracts, a real
daemon answering jobs in real workerd, and RPC proxies of the tests that lie.

The commands run as a dApp author runs them: a subprocess given ``--rpc/--jobs/--code-contract``
(no config file). A second enclave key, registered by the test, plays a forger: it submits a
different output for a job that selected it too. Job ids are always read from the JobCreated the
test made, never assumed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_utils import keccak

from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow.events import JobResponded
from executor.chain.jobs_contract import SUBMIT_OUTPUT_SELECTOR, sign_output
from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered, wait_until
from tests.rpc_proxy import running_rpc_proxy
from tests.sandbox_helpers import PYTHON, REPO_ROOT, slice_parent, workerd_bin_or_skip

OWNER, GAS, USER, FORGER_GAS = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3], DEV_ACCOUNTS[4]
SECRET_ID = 7
SECRET = b"the job's secret \x00\xff"
CODE_SECRET = """
export default {
  async fetch(request, env) {
    const secret = new Uint8Array(env.secret);
    return new Response("secret bytes: " + secret.length + " first " + secret[0]);
  }
};
"""


@dataclass
class Node:
    daemon: Daemon
    files: NodeFiles
    forger: EnclaveKey
    """A second registered enclave key, held by the test."""


async def register_key(devnet: Devnet, key: EnclaveKey) -> None:
    now = await devnet.chain_time()
    signature = key.sign_registration(OWNER.address, 20, 1000, 1, now)
    await devnet.register_node(OWNER, key.public_key, 20, 1000, 1, now, signature)


@pytest.fixture
async def node(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> AsyncIterator[Node]:
    workerd_bin_or_skip()
    files = write_node_files(tmp_path / "node", anvil, devnet)
    (files.settings.secret_store_path / f"{SECRET_ID}.bin").write_bytes(SECRET)
    async with running_daemon(files) as daemon:
        await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
        await wait_registered(daemon)
        forger = EnclaveKey.generate()
        await register_key(devnet, forger)
        yield Node(daemon, files, forger)


def chain_flags(anvil_url: str, devnet: Devnet, *, tee: bool = False) -> list[str]:
    flags = ["--rpc", anvil_url, "--jobs", devnet.jobs_address]
    flags += ["--code-contract", devnet.user_code_address]
    if tee:
        flags += ["--tee-manager", devnet.tee_manager_address]
    return flags


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def cli(*args: str | Path, cwd: Path = REPO_ROOT) -> Result:
    """The command in a subprocess, without blocking the loop the daemon runs on."""
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON),
        "-m",
        "executor",
        *map(str, args),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def replay(url: str, devnet: Devnet, job_id: int, *extra: str | Path) -> Result:
    """``replay`` unconfined (the daemon here runs unconfined too), unless ``extra`` says."""
    limits = () if "--limits" in extra else ("--limits", "none")
    return await cli("replay", str(job_id), *chain_flags(url, devnet), *limits, *extra)


async def verify(url: str, devnet: Devnet, job_id: int, *extra: str | Path) -> Result:
    return await cli("verify", str(job_id), *chain_flags(url, devnet, tee=True), *extra)


async def answered_job(
    devnet: Devnet,
    executors: list[str],
    *,
    code: str = CODE_ECHO,
    inputs: bytes = b"hello",
    secret_id: int = 0,
    wait_for: int = 1,
) -> int:
    """A job for ``executors``, once ``wait_for`` of them have answered: its id."""
    codehash = await devnet.save_code(USER, code)
    job_id = await devnet.create_job(
        USER,
        codehash=codehash,
        code_inputs=inputs,
        deadline_ms=5000,
        executors=executors,
        secret_id=secret_id,
    )
    await wait_until(
        lambda: _at_least(devnet, job_id, wait_for), timeout=30, what=f"job {job_id}'s output"
    )
    return job_id


async def _at_least(devnet: Devnet, job_id: int, count: int) -> bool:
    return len(await devnet.job_responses(job_id)) >= count


async def forge(devnet: Devnet, key: EnclaveKey, job_id: int, output: bytes) -> None:
    """A valid submission of ``output`` for ``job_id``, signed by ``key``."""
    now = await devnet.chain_time()
    signature = sign_output(key, job_id, output, 12, 0, now)
    await devnet.submit_output(
        FORGER_GAS,
        signature=signature,
        job_id=job_id,
        output=output,
        total_time=12,
        error_code=0,
        sign_timestamp=now,
    )


# --- replay -------------------------------------------------------------------------------------


async def test_replay_of_a_genuine_answer_matches(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    result = await replay(anvil.http_url, devnet, job_id)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"job {job_id}: JobCreated in block " in out
    assert "verified against its hash" in out
    assert "output: 10 bytes keccak 0x" in out and "echo:hello" in out
    assert f"{node.files.key.address} (block " in out and "MATCH" in out
    assert "verdict: 1 of 1 output(s) on chain match the replay" in out
    assert "peak memory:" in out and "cpu time:" in out

    report = (await replay(anvil.http_url, devnet, job_id, "--json")).json()
    assert report["job_id"] == job_id and report["all_match"] is True
    created = await devnet.w3.eth.get_block(report["created_block"])
    assert report["created_block_hash"] == created["hash"].to_0x_hex()
    assert report["replay"]["output_hex"] == "0x" + b"echo:hello".hex()
    assert [o["matches"] for o in report["outputs"]] == [True]


async def test_replay_under_production_limits_in_a_slice(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    with slice_parent(count=2) as parent:
        result = await replay(
            anvil.http_url, devnet, job_id, "--limits", "production", "--cgroup-parent", parent
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MATCH" in result.stdout and "UNCONFINED" not in result.stderr
    assert "warm slices available" in result.stderr  # the daemon's default path


async def test_replay_names_a_forged_output_as_the_mismatch(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    executors = [node.files.key.address, node.forger.address]
    job_id = await answered_job(devnet, executors)
    await forge(devnet, node.forger, job_id, b"echo:forged")
    result = await replay(anvil.http_url, devnet, job_id, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    outputs = {o["executor"]: o for o in result.json()["outputs"]}
    assert outputs[node.files.key.address]["matches"] is True
    forged = outputs[node.forger.address]
    assert forged["matches"] is False
    assert forged["problems"] == [
        f"output differs: on chain 11 bytes keccak 0x{keccak(b'echo:forged').hex()[:16]}…, "
        f"replay 10 bytes keccak 0x{keccak(b'echo:hello').hex()[:16]}… "
        "(first difference at byte 5)"
    ]
    text = (await replay(anvil.http_url, devnet, job_id)).stdout
    assert "MISMATCH" in text and "verdict: 1 of 2 output(s)" in text


async def test_replay_of_a_job_with_a_secret_needs_the_secret_file(
    node: Node, anvil: AnvilNode, devnet: Devnet, tmp_path: Path
) -> None:
    job_id = await answered_job(
        devnet, [node.files.key.address], code=CODE_SECRET, secret_id=SECRET_ID
    )
    (response,) = await devnet.job_responses(job_id)
    assert response.output == f"secret bytes: {len(SECRET)} first {SECRET[0]}".encode()

    without = await replay(anvil.http_url, devnet, job_id)
    assert without.returncode == 2, without.stdout + without.stderr
    assert f"uses secret {SECRET_ID}" in without.stderr and "--secret-file" in without.stderr
    assert without.stdout == ""  # it stopped: nothing ran

    secret_file = tmp_path / "job.secret"
    secret_file.write_bytes(SECRET)
    with_secret = await replay(anvil.http_url, devnet, job_id, "--secret-file", secret_file)
    assert with_secret.returncode == 0, with_secret.stdout + with_secret.stderr
    assert "MATCH" in with_secret.stdout

    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(b"X" + SECRET)
    mismatch = await replay(anvil.http_url, devnet, job_id, "--secret-file", wrong)
    assert mismatch.returncode == 1 and "MISMATCH" in mismatch.stdout


async def test_replay_through_an_rpc_lying_about_the_code_is_caught(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(
        USER,
        codehash=codehash,
        code_inputs=b"x",
        deadline_ms=5000,
        executors=[node.files.key.address],
    )
    await wait_until(lambda: _at_least(devnet, job_id, 1), timeout=30, what="the output")

    async def lie(method: str, params: list[Any], result: Any) -> Any:
        if params and params[0] == codehash and method == "eth_getRawTransactionByHash":
            raw = bytearray(bytes.fromhex(result[2:]))
            raw[-100] ^= 0x01  # a byte of the code in the calldata
            return "0x" + raw.hex()
        return result

    async with running_rpc_proxy(anvil.http_url) as proxy:
        proxy.rewrite = lie
        result = await replay(proxy.url, devnet, job_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error code 1" in result.stdout  # what the daemon would submit too: never the lie
    assert "POSSIBLE ATTACK" in result.stdout and "not the one named by the job" in result.stdout
    assert "MISMATCH" in result.stdout


async def test_replay_of_an_unknown_job_and_bad_usage_exit_2(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    unknown = job_id + 1000
    result = await replay(anvil.http_url, devnet, unknown)
    assert result.returncode == 2
    assert f"job {unknown}: no JobCreated on the Jobs contract" in result.stderr
    assert "Traceback" not in result.stderr

    result = await cli("replay", str(job_id), "--rpc", anvil.http_url, cwd=Path("/"))
    assert result.returncode == 2 and "missing --jobs, --code-contract" in result.stderr

    result = await cli("replay", "seven", *chain_flags(anvil.http_url, devnet))
    assert result.returncode == 2 and "not a job id" in result.stderr

    result = await replay("http://127.0.0.1:9", devnet, job_id)  # nothing listens there
    assert result.returncode == 2 and "eth_getLogs" in result.stderr
    assert "Traceback" not in result.stderr


# --- verify -------------------------------------------------------------------------------------


async def test_verify_a_genuine_output(node: Node, anvil: AnvilNode, devnet: Devnet) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    result = await verify(anvil.http_url, devnet, job_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"output of {node.files.key.address} (block " in result.stdout
    assert ": GENUINE" in result.stdout and "FAIL" not in result.stdout
    assert f"owned by {OWNER.address}" in result.stdout

    report = (await verify(anvil.http_url, devnet, job_id, "--json")).json()
    assert report["ok"] is True
    (output,) = report["outputs"]
    assert output["verdict"] == "genuine" and output["signer"] == node.files.key.address
    assert {c["name"] for c in output["checks"]} >= {
        "transaction",
        "signer",
        "output",
        "error code",
        "total time",
        "selected",
        "registered",
        "signature age",
        "window",
    }
    assert all(c["verdict"] == "pass" for c in output["checks"])

    # An operator needs no flags: the chain and the contracts come from the config file.
    result = await cli("verify", str(job_id), "--config-file", node.files.config_file)
    assert result.returncode == 0 and ": GENUINE" in result.stdout, result.stdout + result.stderr


async def test_verify_catches_an_rpc_rewriting_the_logged_output(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    topic0 = "0x" + JobResponded.topic0().hex()

    async def rewrite_log(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs":
            for log in result:
                if log["topics"][0] == topic0:
                    _, total, code, count = decode(
                        list(JobResponded.DATA), bytes.fromhex(log["data"][2:])
                    )
                    forged = encode(list(JobResponded.DATA), [b"echo:LIES!", total, code, count])
                    log["data"] = "0x" + forged.hex()
        return result

    async with running_rpc_proxy(anvil.http_url) as proxy:
        proxy.rewrite = rewrite_log
        result = await verify(proxy.url, devnet, job_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ": NOT GENUINE" in result.stdout
    assert "[FAIL] output: the log shows 10 bytes, the enclave signed 10 different bytes" in (
        result.stdout
    )


async def test_verify_catches_an_rpc_rewriting_the_submit_output_calldata(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    (response,) = await devnet.job_responses(job_id)
    submitted = b"echo:hello".hex()

    async def rewrite_tx(method: str, params: list[Any], result: Any) -> Any:
        if (
            method == "eth_getTransactionByHash"
            and result
            and result["input"][2:10] == (SUBMIT_OUTPUT_SELECTOR.hex())
        ):
            result["input"] = result["input"].replace(submitted, b"echo:LIES!".hex())
        return result

    async with running_rpc_proxy(anvil.http_url) as proxy:
        proxy.rewrite = rewrite_tx
        proxy.hide = {"eth_getRawTransactionByHash"}  # the JSON view, rebuilt and hash-checked
        result = await verify(proxy.url, devnet, job_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ": NOT GENUINE" in result.stdout
    assert "[FAIL] transaction: the RPC served a transaction that is not" in result.stdout
    assert response.output == b"echo:hello"


async def test_verify_reports_an_enclave_deregistered_after_answering(
    node: Node, anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, CODE_ECHO)
    job_id = await devnet.create_job(
        USER,
        codehash=codehash,
        code_inputs=b"hello",
        deadline_ms=5000,
        executors=[node.forger.address],
    )
    await forge(devnet, node.forger, job_id, b"echo:hello")
    await devnet.deregister_node(OWNER, node.forger.address)
    result = await verify(anvil.http_url, devnet, job_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": GENUINE" in result.stdout
    assert "DEREGISTERED since it answered" in result.stdout


async def test_verify_code_with_the_right_and_a_wrong_file(
    node: Node, anvil: AnvilNode, devnet: Devnet, tmp_path: Path
) -> None:
    job_id = await answered_job(devnet, [node.files.key.address])
    right = tmp_path / "echo.js"
    right.write_text(CODE_ECHO)
    result = await verify(anvil.http_url, devnet, job_id, "--code", right)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[  ok] code: codehash 0x" in result.stdout

    wrong = tmp_path / "other.js"
    wrong.write_text(CODE_ECHO.replace("echo:", "ECHO:"))
    result = await verify(anvil.http_url, devnet, job_id, "--code", wrong)
    assert result.returncode == 1
    assert "[FAIL] code:" in result.stdout and "first difference at byte" in result.stdout
