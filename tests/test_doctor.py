"""``oyster-executor doctor`` against a good node setup on anvil, then broken ones.

The command runs as the operator would run it (a subprocess of the real CLI) against a real anvil
with the devnet contracts, real cgroup slices and the real workerd.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, write_node_files
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.sandbox_helpers import slice_parent


@pytest.fixture(scope="module")
def slices() -> Iterator[Path]:
    with slice_parent(count=2) as parent:
        yield parent


@pytest.fixture
def files(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> NodeFiles:
    return write_node_files(tmp_path / "node", anvil, devnet)


def vsock_usable() -> bool:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except (OSError, AttributeError):
        return False
    return True


async def doctor(config: Path, *extra: str) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        "doctor",
        "--config-file",
        str(config),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines()


def rewrite(files: NodeFiles, **changes: Any) -> Path:
    data = json.loads(files.config_file.read_text())
    data.update(changes)
    path = files.folder / "changed.json"
    path.write_text(json.dumps(data))
    return path


def verdict(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line[6:].startswith(name)]


async def test_a_good_setup_passes_every_check(files: NodeFiles, slices: Path) -> None:
    if not vsock_usable():
        pytest.skip("this machine cannot create vsock sockets (the vsock check would fail)")
    async with running_secret_store(FakeSecretStore()) as store:
        config = rewrite(files, secret_store_config_port=store.port)
        status, lines = await doctor(config, "--cgroup-parent", str(slices))
    checks = lines[:-1]
    assert status == 0, "\n".join(lines)
    assert lines[-1] == "doctor: all checks passed"
    names = [line[6:].split("  ")[0].strip() for line in checks]
    for expected in ["config", "key file", "workerd", "cgroup v2", "slices", "http rpc"]:
        assert expected in names
    assert {"websocket", "contract", "secret store", "vsock"} <= set(names)
    assert all(line.startswith(("ok", "warn")) for line in checks), "\n".join(checks)
    # three contracts recognised by their interface, then the Jobs parameters against the config
    contracts = verdict(lines, "contract")
    assert len(contracts) == 5, "\n".join(contracts)
    assert "a TeeManager" in contracts[0] and "a Jobs" in contracts[1]
    assert "a UserCode" in contracts[2]
    assert "EXECUTION_BUFFER_TIME" in contracts[3] and "NO_OF_NODES_TO_SELECT" in contracts[4]
    # the canary: a real job through the sandbox, on both paths, in a slice
    [warm] = verdict(lines, "canary warm")
    [cold] = verdict(lines, "canary cold")
    assert warm.startswith("ok") and "warm path in a slice" in warm
    assert cold.startswith("ok") and "cold path in a slice" in cold
    assert "workerd" in verdict(lines, "workerd")[0]  # the --version line names the binary
    assert files.key.address in verdict(lines, "key file")[0]
    assert "2 slices" in verdict(lines, "slices")[0]
    [limits_line] = verdict(lines, "job limits")  # what holds, with or without the controllers
    assert "V8 heap cap" in limits_line and "RLIMIT_DATA" in limits_line and "nice" in limits_line
    if limits_line.startswith("warn"):
        assert "controller" in limits_line
    [config_line] = verdict(lines, "workerd config")
    assert config_line.startswith("ok") and "binary configs, schema" in config_line


async def test_no_workerd_schema_is_a_warning_with_a_hint(
    files: NodeFiles, slices: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OYSTER_WORKERD_SCHEMA", str(tmp_path / "missing.capnp"))
    _, lines = await doctor(files.config_file, "--cgroup-parent", str(slices))
    [line] = verdict(lines, "workerd config")
    assert line.startswith("warn") and "text configs" in line and "OYSTER_WORKERD_SCHEMA" in line


async def test_missing_key_file(files: NodeFiles, slices: Path) -> None:
    (files.folder / "id.sec").unlink()
    status, lines = await doctor(files.config_file, "--cgroup-parent", str(slices))
    assert status == 1
    [line] = verdict(lines, "key file")
    assert line.startswith("FAIL") and "No such file" in line and "keygen" in line


async def test_key_file_readable_by_others(files: NodeFiles, slices: Path) -> None:
    (files.folder / "id.sec").chmod(0o644)
    status, lines = await doctor(files.config_file, "--cgroup-parent", str(slices))
    assert status == 1
    [line] = verdict(lines, "key file")
    assert line.startswith("FAIL") and "group/others (mode 0644)" in line and "chmod 600" in line


async def test_malformed_key_file(files: NodeFiles, slices: Path) -> None:
    (files.folder / "id.sec").write_bytes(b"short")
    status, lines = await doctor(files.config_file, "--cgroup-parent", str(slices))
    assert status == 1
    [line] = verdict(lines, "key file")
    assert line.startswith("FAIL") and "exactly 32 raw bytes" in line


async def test_wrong_chain_id(files: NodeFiles, slices: Path) -> None:
    config = rewrite(files, common_chain_id=1)
    status, lines = await doctor(config, "--cgroup-parent", str(slices))
    assert status == 1
    [line] = verdict(lines, "http rpc")
    assert line.startswith("FAIL") and "common_chain_id 1" in line and "chain id 31337" in line


async def test_no_slices(files: NodeFiles, tmp_path: Path) -> None:
    empty = tmp_path / "no-slices"
    empty.mkdir()
    status, lines = await doctor(files.config_file, "--cgroup-parent", str(empty))
    assert status == 1
    [line] = verdict(lines, "slices")
    assert line.startswith("FAIL") and "no workerd_N cgroup slices" in line
    assert "cgroup_setup.sh" in line


async def test_no_contract_at_an_address(files: NodeFiles, slices: Path) -> None:
    nowhere = "0x" + "12" * 20
    config = rewrite(files, jobs_contract_addr=nowhere)
    status, lines = await doctor(config, "--cgroup-parent", str(slices))
    assert status == 1
    failed = [line for line in verdict(lines, "contract") if line.startswith("FAIL")]
    assert len(failed) == 1
    assert "no contract code at jobs_contract_addr" in failed[0]
    assert nowhere.lower() in failed[0].lower()


async def test_invalid_config_and_unreachable_services(files: NodeFiles, tmp_path: Path) -> None:
    bad = rewrite(files, common_chain_id="31337")
    status, lines = await doctor(bad)
    assert status == 1
    assert lines[0].startswith("FAIL") and "config key 'common_chain_id'" in lines[0]
    assert verdict(lines, "key file")[0].startswith("skip")

    dead = rewrite(files, http_rpc_url="http://127.0.0.1:9/", secret_store_config_port=9)
    status, lines = await doctor(dead, "--cgroup-parent", str(tmp_path))
    assert status == 1
    assert verdict(lines, "http rpc")[0].startswith("FAIL")
    assert verdict(lines, "secret store")[0].startswith("FAIL")
    assert verdict(lines, "contract")[0].startswith("skip")


async def test_usage_error_exits_2() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "executor", "doctor", "--no-such-flag", stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate()
    assert proc.returncode == 2


def workerd_that_cannot_serve(files: NodeFiles) -> None:
    """A workerd that answers ``--version`` but fails every job (as a wrong exec path did)."""
    runtime = files.folder / "runtime"
    real = (runtime / "workerd").resolve()
    (runtime / "workerd").unlink()
    script = runtime / "workerd"
    script.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exec {real} "$@"\necho "exec: nope" >&2\nexit 127\n'
    )
    script.chmod(0o755)


async def test_a_broken_sandbox_fails_the_canary_on_both_paths(
    files: NodeFiles, slices: Path
) -> None:
    workerd_that_cannot_serve(files)
    status, lines = await doctor(files.config_file, "--cgroup-parent", str(slices))
    assert status == 1
    assert verdict(lines, "workerd ")[0].startswith("ok")  # --version alone proves nothing
    [warm] = verdict(lines, "canary warm")
    [cold] = verdict(lines, "canary cold")
    assert warm.startswith("FAIL") and "warm path broken" in warm
    assert cold.startswith("FAIL") and "status 127" in cold and "every job would fail" in cold
    assert lines[-1] == "doctor: 2 check(s) failed", "\n".join(lines)


async def test_no_canary_flag_skips_it(files: NodeFiles, slices: Path) -> None:
    workerd_that_cannot_serve(files)
    _, lines = await doctor(files.config_file, "--cgroup-parent", str(slices), "--no-canary")
    [line] = verdict(lines, "canary")
    assert line.startswith("skip")


async def test_swapped_contract_addresses_are_named(files: NodeFiles, slices: Path) -> None:
    settings = files.settings
    config = rewrite(
        files,
        tee_manager_contract_addr=settings.jobs_contract_addr,
        jobs_contract_addr=settings.tee_manager_contract_addr,
    )
    status, lines = await doctor(config, "--cgroup-parent", str(slices), "--no-canary")
    assert status == 1
    failed = [line for line in verdict(lines, "contract") if line.startswith("FAIL")]
    assert len(failed) == 2, "\n".join(lines)
    assert "tee_manager_contract_addr" in failed[0] and "is not a TeeManager" in failed[0]
    assert "swapped?" in failed[0] and "is the Jobs contract" in failed[0]
    assert "jobs_contract_addr" in failed[1] and "is the TeeManager contract" in failed[1]


async def test_jobs_parameters_must_match_the_config(files: NodeFiles, slices: Path) -> None:
    config = rewrite(files, execution_buffer_time=files.settings.execution_buffer_time + 5)
    status, lines = await doctor(config, "--cgroup-parent", str(slices), "--no-canary")
    assert status == 1
    [line] = [x for x in verdict(lines, "contract") if x.startswith("FAIL")]
    expected = files.settings.execution_buffer_time
    assert f"EXECUTION_BUFFER_TIME is {expected}" in line
    assert f"set execution_buffer_time to {expected}" in line


async def test_every_failing_check_is_reported_in_one_run(files: NodeFiles, slices: Path) -> None:
    (files.folder / "id.sec").unlink()
    config = rewrite(
        files,
        workerd_runtime_path=str(files.folder / "no-runtime"),
        secret_store_path=str(files.folder / "no-store"),
    )
    status, lines = await doctor(config, "--cgroup-parent", str(slices))
    assert status == 1
    assert verdict(lines, "key file")[0].startswith("FAIL")
    folders = verdict(lines, "folders")
    assert [line[:4] for line in folders] == ["FAIL", "FAIL"], "\n".join(lines)
    assert "mkdir -p" in folders[0] and "no-runtime" in folders[0]
    assert "mkdir -p" in folders[1] and "no-store" in folders[1]
    assert verdict(lines, "workerd ")[0].startswith("FAIL")


async def test_key_path_naming_a_folder(files: NodeFiles, slices: Path) -> None:
    config = rewrite(files, enclave_signer_file=str(files.folder / "store"))
    status, lines = await doctor(config, "--cgroup-parent", str(slices), "--no-canary")
    assert status == 1
    [line] = verdict(lines, "key file")
    assert "is a folder" in line and "chmod" not in line and "the key file itself" in line


async def test_relative_paths_resolve_against_the_config_file(
    files: NodeFiles, slices: Path, tmp_path: Path
) -> None:
    config = rewrite(
        files,
        workerd_runtime_path="runtime",
        secret_store_path="./store/",
        enclave_signer_file="id.sec",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        "doctor",
        "--config-file",
        str(config),
        "--cgroup-parent",
        str(slices),
        cwd=elsewhere,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines = out.decode().splitlines()
    for name in ("key file", "workerd ", "folders", "canary cold"):
        assert all(line.startswith("ok") for line in verdict(lines, name)), "\n".join(lines)


SLOT = "360894a13ba1a3210667c828492db98dca3e2076cc3735a920a3ca505d382bbc"
ERC1967_FORWARDER = bytes.fromhex(
    "365f5f37"  # calldatacopy(0, 0, calldatasize)
    "5f5f365f"  # delegatecall(gas, sload(SLOT), 0, calldatasize, 0, 0)
    "7f" + SLOT + "545af4"
    "3d5f5f3e"  # returndatacopy(0, 0, returndatasize)
    "603657"  # success? jump to 0x36
    "3d5ffd"  # revert(0, returndatasize)
    "5b3d5ff3"  # 0x36: return(0, returndatasize)
)
"""The runtime code of a minimal ERC-1967 proxy (the production contracts are UUPS proxies)."""


async def test_contracts_behind_an_erc1967_proxy_are_recognised(
    files: NodeFiles, slices: Path, w3: Any
) -> None:
    proxy = "0x" + "ab" * 20
    implementation = files.settings.jobs_contract_addr
    await w3.provider.make_request("anvil_setCode", [proxy, "0x" + ERC1967_FORWARDER.hex()])
    await w3.provider.make_request(
        "anvil_setStorageAt", [proxy, "0x" + SLOT, "0x" + implementation[2:].lower().rjust(64, "0")]
    )
    config = rewrite(files, jobs_contract_addr=proxy)
    _, lines = await doctor(config, "--cgroup-parent", str(slices), "--no-canary")
    contracts = verdict(lines, "contract")
    assert all(line.startswith("ok") for line in contracts), "\n".join(lines)
    assert f"(proxy of {implementation.lower()}): a jobs" in contracts[1].lower()
    # the parameters are read through the proxy (a delegatecall runs the implementation's code)
    assert "EXECUTION_BUFFER_TIME" in contracts[3] and contracts[3].startswith("ok")
