"""A local Oyster network: anvil, the devnet contracts and N registered executors.

Shared by ``oyster-devnet up`` (runs until Ctrl-C), ``make demo`` (one executor, a few jobs) and
the tests. Each executor is the real ``oyster-executor serve`` command in its own subprocess, with
its own enclave key, config, gas key and cgroup slices (a parent group of its own). Where slices
cannot be made (not root, no cgroup v2), that executor runs user code UNCONFINED and says so.

``start_network`` is an async context manager: leaving it stops the daemons, removes the slices
and stops anvil, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount
from oyster_devnet.anvil import AnvilNode, start_anvil
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from oyster_devnet.tools import REPO_ROOT, free_port

DEPLOYER, OWNER, USER = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1], DEV_ACCOUNTS[3]
GAS_ACCOUNTS = (DEV_ACCOUNTS[2], *DEV_ACCOUNTS[4:])
"""One gas key per executor (so their nonces never collide): 8, so at most 8 executors."""
MAX_EXECUTORS = len(GAS_ACCOUNTS)
DEFAULT_STATE_FILE = Path(".oyster-devnet.json")
FIRST_SLICE = 101
"""Devnet slices are numbered from 101, apart from the workerd_1..20 of an executor installed on
the same machine; executors get disjoint ranges (slices own no port: workerd picks a free one)."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class ExecutorInfo:
    index: int
    enclave_address: str
    admin_url: str
    folder: str
    log_file: str
    secret_store_path: str
    cgroup_parent: str | None
    """None: running UNCONFINED (no slices could be made)."""


@dataclass(frozen=True)
class NetworkState:
    """What ``oyster-devnet job`` needs to find a running network (the state file)."""

    http_url: str
    ws_url: str
    chain_id: int
    jobs_address: str
    tee_manager_address: str
    user_code_address: str
    execution_buffer_time: int
    num_selected_executors: int
    user_private_key: str
    executors: list[ExecutorInfo]
    pid: int

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # readers never see a half-written file

    @classmethod
    def read(cls, path: Path) -> NetworkState:
        data: dict[str, Any] = json.loads(path.read_text())
        data["executors"] = [ExecutorInfo(**e) for e in data["executors"]]
        return cls(**data)


@dataclass
class Network:
    anvil: AnvilNode
    devnet: Devnet
    executors: list[ExecutorInfo]

    def state(self) -> NetworkState:
        return NetworkState(
            http_url=self.anvil.http_url,
            ws_url=self.anvil.ws_url,
            chain_id=self.anvil.chain_id,
            jobs_address=self.devnet.jobs_address,
            tee_manager_address=self.devnet.tee_manager_address,
            user_code_address=self.devnet.user_code_address,
            execution_buffer_time=self.devnet.execution_buffer_time,
            num_selected_executors=self.devnet.num_selected_executors,
            user_private_key=USER.private_key,
            executors=self.executors,
            pid=os.getpid(),
        )


@contextlib.contextmanager
def cgroup_slices(parent: str, count: int, say: Say, first: int = 1) -> Iterator[Path | None]:
    """Slices ``workerd_<first>``.. under a parent group of our own; None where impossible.

    Executors sharing a host get disjoint numbers, so that each one's slices are told apart in logs.
    """
    script = REPO_ROOT / "cgroup_setup.sh"
    made = subprocess.run(
        [str(script), "--parent", parent, "--count", str(count), "--first", str(first)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        say(f"!! cannot create cgroup slices {parent}; this executor runs user code UNCONFINED:")
        say("   " + (made.stderr.strip() or made.stdout.strip()).replace("\n", "\n   "))
        yield None
        return
    for line in made.stdout.splitlines() + made.stderr.splitlines():
        if "not available" in line or "unavailable" in line:
            say(f"   note: {line.strip()}")
    try:
        from executor.sandbox.cgroups import find_cgroup2_mount

        yield find_cgroup2_mount() / parent
    finally:
        subprocess.run([str(script), "--parent", parent, "--remove"], capture_output=True)


@contextlib.asynccontextmanager
async def daemon_process(
    config_file: Path, cgroup_parent: Path | None, log_file: Path, *extra: str
) -> AsyncIterator[str]:
    """``oyster-executor serve`` on 127.0.0.1:<free port>; yields its admin URL; SIGTERM at exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "executor", "serve", "--tcp-addr", f"127.0.0.1:{port}"]
    cmd += ["--config-file", str(config_file), "--shutdown-grace", "5", *extra]
    cmd += ["--cgroup-parent", str(cgroup_parent)] if cgroup_parent else ["--unconfined-dev"]
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def start_network(
    workdir: Path,
    *,
    executors: int = 1,
    selected: int = 1,
    slices: int = 2,
    execution_buffer_time: int = 10,
    say: Say = print,
    log_dir: Path | None = None,
    port: int | None = None,
) -> AsyncIterator[Network]:
    """anvil + devnet contracts + ``executors`` registered daemons; stops everything on exit.

    ``executors=0``: the chain and the contracts only, for an operator's own node (``selected``
    is then what the Jobs contract selects per job). ``port=None``: anvil on a free port.
    Each daemon logs to ``log_dir/executor-N.log`` (default: its folder in ``workdir``), with what
    the jobs' code prints (``serve --user-logs``: the devnet is for development).
    """
    if not 0 <= executors <= MAX_EXECUTORS:
        raise ValueError(f"executors must be between 0 and {MAX_EXECUTORS}")
    if not 1 <= selected <= max(executors, 1):
        raise ValueError("selected must be between 1 and the number of executors")
    async with contextlib.AsyncExitStack() as stack:
        anvil = await stack.enter_async_context(start_anvil(port=port))
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        stack.push_async_callback(w3.provider.disconnect)
        devnet = await deploy_devnet(
            w3,
            DEPLOYER,
            execution_buffer_time=execution_buffer_time,
            num_selected_executors=selected,
        )
        say(f"-- anvil {anvil.http_url} (chain {anvil.chain_id}); devnet contracts deployed")
        started: list[tuple[int, Any, Path | None, str, Path]] = []
        for i in range(executors):
            files = write_node_files(workdir / f"executor-{i + 1}", anvil, devnet)
            group = f"oyster-devnet-{os.getpid()}-{i + 1}"
            first = FIRST_SLICE + i * slices
            parent = stack.enter_context(cgroup_slices(group, slices, say, first=first))
            log_file = (
                (log_dir / f"executor-{i + 1}.log") if log_dir else files.folder / "daemon.log"
            )
            admin_url = await stack.enter_async_context(
                daemon_process(files.config_file, parent, log_file, "--user-logs")
            )
            started.append((i, files, parent, admin_url, log_file))
        infos = []
        for i, files, parent, admin_url, log_file in started:
            await init_and_register(admin_url, devnet, owner=OWNER, gas=GAS_ACCOUNTS[i])
            infos.append(
                ExecutorInfo(
                    index=i + 1,
                    enclave_address=files.key.address,
                    admin_url=admin_url,
                    folder=str(files.folder),
                    log_file=str(log_file),
                    secret_store_path=str(files.settings.secret_store_path),
                    cgroup_parent=str(parent) if parent else None,
                )
            )
        if executors:
            say(f"-- {executors} executor(s) started and registered; {selected} selected per job")
        else:
            say(
                f"-- no executors: register your own (docs/operator.md); "
                f"{selected} selected per job"
            )
        yield Network(anvil, devnet, infos)


def describe(state: NetworkState) -> list[str]:
    """The lines ``oyster-devnet up`` prints: endpoints, contracts, executors, funded accounts."""
    lines = [
        f"RPC (HTTP)       {state.http_url}",
        f"RPC (websocket)  {state.ws_url}",
        f"chain id         {state.chain_id}",
        f"Jobs             {state.jobs_address}",
        f"TeeManager       {state.tee_manager_address}",
        f"UserCode         {state.user_code_address}",
        f"per job          {state.num_selected_executors} executor(s) selected; "
        f"execution buffer {state.execution_buffer_time}s",
        "executors:",
    ]
    for e in state.executors:
        where = f"slices {e.cgroup_parent}" if e.cgroup_parent else "UNCONFINED (no slices)"
        lines.append(f"  #{e.index} {e.enclave_address}  admin {e.admin_url}  {where}")
        lines.append(f"     log {e.log_file}  secrets {e.secret_store_path}/<id>.bin")
    lines.append("funded test accounts (10000 ETH each; public keys, devnet only):")
    roles = {DEPLOYER.address: "deployer", OWNER.address: "executors' owner", USER.address: "user"}
    for e, gas in zip(state.executors, GAS_ACCOUNTS, strict=False):
        roles[gas.address] = f"gas of executor #{e.index} (do not use)"
    for account in DEV_ACCOUNTS:
        role = roles.get(account.address, "")
        lines.append(f"  {account.address}  {account.private_key}  {role}".rstrip())
    return lines


def user_account(state: NetworkState) -> DevAccount:
    return DevAccount.from_key(state.user_private_key)
