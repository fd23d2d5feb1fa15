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
    assert len(verdict(lines, "contract")) == 3
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
