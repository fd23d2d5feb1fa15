"""``oyster-executor doctor``'s checks: is this machine and config ready to run the executor?

Each check returns one ``Check``: a verdict (ok, warn, fail, skip), what was found and, when
something is wrong, a hint naming the fix. The checks only read: they open no admin socket,
create no cgroup and send no transaction. Checks that need the config are skipped when it is
invalid; chain checks use plain JSON-RPC with short timeouts, so a dead endpoint fails fast.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from executor import redact
from executor.chain import rpc
from executor.chain.enclave_key import EnclaveKey
from executor.chain.rpc import RpcCallError
from executor.config import Settings, ws_url_with_key
from executor.errors import ExecutorError
from executor.sandbox.capnp_config import SCHEMA_ENV, BinaryConfigs, find_schema
from executor.sandbox.cgroups import SlicePool, find_cgroup2_mount

RPC_TIMEOUT_S = 5.0
WORKERD_VERSION_TIMEOUT_S = 10.0


class Verdict(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.verdict.value:<4}  {self.name:<16} {self.detail}"
        return f"{text}  -> {self.hint}" if self.hint else text


def ok(name: str, detail: str) -> Check:
    return Check(name, Verdict.OK, detail)


def fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, Verdict.FAIL, detail, hint)


@dataclass(frozen=True)
class DoctorOptions:
    config_file: Path
    cgroup_parent: Path | None = None
    ws_api_key: str = ""


async def run_checks(options: DoctorOptions) -> list[Check]:
    """Every check, in the order an operator would fix things."""
    try:
        settings = Settings.load(options.config_file)
    except ExecutorError as e:
        config = fail(
            "config", str(e), f"fix {options.config_file} (see docs/operator.md, Configuration)"
        )
        rest = ["key file", "workerd", "workerd config", "folders", "cgroup v2", "slices"]
        rest += ["http rpc"]
        rest += ["websocket", "contract", "secret store"]
        skipped = [Check(name, Verdict.SKIP, "needs a valid config") for name in rest]
        return [config, *skipped, check_vsock()]
    for url in (*settings.http_rpc_urls, *settings.web_socket_urls):
        redact.register_url_credentials(url)  # the lines below quote the URLs
    checks = [
        ok(
            "config",
            f"{options.config_file} valid (chain {settings.common_chain_id}, "
            f"{len(settings.http_rpc_urls)} http + {len(settings.web_socket_urls)} ws endpoint(s))",
        ),
        check_key_file(settings.enclave_signer_file),
        await check_workerd(settings.workerd_binary),
        check_workerd_config(settings.workerd_binary),
        check_runtime_folders(settings),
        check_cgroup2(),
        check_slices(options.cgroup_parent),
    ]
    rpc_checks, live_url = await check_http_rpcs(settings)
    checks += rpc_checks
    checks += [await check_ws(url, options.ws_api_key) for url in settings.web_socket_urls]
    checks += await check_contracts(settings, live_url)
    checks.append(await check_secret_store(settings.secret_store_config_port))
    checks.append(check_vsock())
    return checks


# --- local files ---------------------------------------------------------------------------------


def check_key_file(path: Path) -> Check:
    name = "key file"
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return fail(
            name,
            f"{path}: {e.strerror}",
            "create it with `oyster-executor keygen` or fix enclave_signer_file",
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return fail(
            name,
            f"{path} is readable or writable by group/others (mode {stat.S_IMODE(mode):04o})",
            f"chmod 600 {path}",
        )
    try:
        key = EnclaveKey.load(path)
    except ExecutorError as e:
        return fail(name, str(e), "it must hold exactly 32 raw bytes (`oyster-executor keygen`)")
    return ok(name, f"{path} private, well-formed; enclave address {key.address}")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


async def check_workerd(binary: Path) -> Check:
    name = "workerd"
    if not _executable(binary):
        return fail(
            name,
            f"no executable workerd at {binary}",
            "put the workerd binary (npm package `workerd`) in workerd_runtime_path",
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(WORKERD_VERSION_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return fail(name, f"{binary} --version did not answer", "reinstall workerd")
    except OSError as e:
        return fail(name, f"cannot run {binary}: {e.strerror or e}", "reinstall workerd")
    version = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not version:
        return fail(name, f"{binary} --version exited with {proc.returncode}", "reinstall workerd")
    return ok(name, f"{binary}: {version[0]}")


def check_workerd_config(binary: Path) -> Check:
    """Whether workerd will start from binary configs (cheaper start-ups: capnp_config.py)."""
    name = "workerd config"
    schema = find_schema(binary)
    if schema is not None and BinaryConfigs.load(binary) is not None:
        return ok(name, f"binary configs, schema {schema}")
    return Check(
        name,
        Verdict.WARN,
        "text configs: no usable workerd.capnp for this workerd (jobs run the same, start-ups "
        "cost about a tenth more CPU)",
        f"copy the workerd npm package's workerd.capnp to <prefix>/share/workerd/ or set "
        f"${SCHEMA_ENV}",
    )


def check_runtime_folders(settings: Settings) -> Check:
    name = "folders"
    runtime, store = settings.workerd_runtime_path, settings.secret_store_path
    if not (runtime.is_dir() and os.access(runtime, os.W_OK)):
        return fail(name, f"workerd_runtime_path {runtime} is not a writable folder", "create it")
    if not store.is_dir():
        return fail(name, f"secret_store_path {store} is not a folder", "create it")
    return ok(name, f"workerd_runtime_path {runtime} writable; secret_store_path {store} present")


# --- cgroups and vsock ---------------------------------------------------------------------------


def check_cgroup2() -> Check:
    try:
        mount = find_cgroup2_mount()
    except ExecutorError as e:
        return fail("cgroup v2", str(e), "mount it: mount -t cgroup2 none /sys/fs/cgroup")
    return ok("cgroup v2", f"mounted at {mount}")


def check_slices(parent: Path | None) -> Check:
    name = "slices"
    try:
        pool = SlicePool.discover(parent)
    except ExecutorError as e:
        return fail(name, str(e), "run `sudo ./cgroup_setup.sh` (or pass --cgroup-parent)")
    limits = pool.limits()
    detail = f"{pool.capacity} slices in {pool.parent} (job capacity); {limits.describe()}"
    if not limits.enforced:
        return Check(
            name,
            Verdict.WARN,
            detail,
            "enable the memory and cpu controllers (cgroup.subtree_control), then re-run "
            "cgroup_setup.sh",
        )
    return ok(name, detail)


def check_vsock() -> Check:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return fail("vsock", "this Python has no AF_VSOCK", "use a Linux build of Python")
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as e:
        return fail(
            "vsock",
            f"cannot create an AF_VSOCK socket: {e.strerror or e}",
            "serve --vsock-addr needs vsock: run in a Nitro enclave (or load vhost_vsock)",
        )
    return ok("vsock", "AF_VSOCK sockets can be created")


# --- the chain -----------------------------------------------------------------------------------


async def _http_rpc(
    session: aiohttp.ClientSession, url: str, method: str, params: list[Any]
) -> Any:
    async with session.post(url, json=rpc.request(method, params)) as response:
        return rpc.result_of(method, await response.json(content_type=None))


async def check_http_rpcs(settings: Settings) -> tuple[list[Check], str | None]:
    """One check per HTTP endpoint; returns the first endpoint that works for the next checks."""
    checks: list[Check] = []
    live: str | None = None
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in settings.http_rpc_urls:
            name = "http rpc"
            try:
                chain_id = int(await _http_rpc(session, url, "eth_chainId", []), 16)
                block = int(await _http_rpc(session, url, "eth_blockNumber", []), 16)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RpcCallError) as e:
                checks.append(
                    fail(name, f"{url}: unreachable ({e or type(e).__name__})", "check the URL")
                )
                continue
            if chain_id != settings.common_chain_id:
                checks.append(
                    fail(
                        name,
                        f"{url} is on chain id {chain_id}, config says common_chain_id "
                        f"{settings.common_chain_id}",
                        "point http_rpc_url at the common chain or fix common_chain_id",
                    )
                )
                continue
            checks.append(ok(name, f"{url}: chain id {chain_id}, block {block}"))
            live = live or url
    return checks, live


async def check_ws(url: str, api_key: str) -> Check:
    name = "websocket"
    full = ws_url_with_key(url, api_key)
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(full) as ws,
        ):
            await ws.send_str(json.dumps(rpc.request("eth_chainId", [])))
            async with asyncio.timeout(RPC_TIMEOUT_S):
                reply = json.loads((await ws.receive()).data)
        chain_id = int(rpc.result_of("eth_chainId", reply), 16)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError, RpcCallError) as e:
        hint = "check web_socket_url" + ("" if api_key else " (pass --ws-api-key if it needs one)")
        return fail(name, f"{url}: unreachable ({e or type(e).__name__})", hint)
    return ok(name, f"{url}: answers (chain id {chain_id})")


async def check_contracts(settings: Settings, url: str | None) -> list[Check]:
    keys = ("tee_manager_contract_addr", "jobs_contract_addr", "code_contract_addr")
    if url is None:
        return [Check("contracts", Verdict.SKIP, "no working HTTP RPC endpoint")]
    checks = []
    timeout = aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for key in keys:
            address = getattr(settings, key)
            try:
                code = await _http_rpc(session, url, "eth_getCode", [address, "latest"])
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RpcCallError) as e:
                checks.append(fail("contract", f"{key} {address}: cannot read ({e})", ""))
                continue
            size = (len(code) - 2) // 2 if isinstance(code, str) else 0
            if size <= 0:
                checks.append(
                    fail(
                        "contract",
                        f"no contract code at {key} {address} on chain {settings.common_chain_id}",
                        f"fix {key} (wrong address, or a different chain)",
                    )
                )
            else:
                checks.append(ok("contract", f"{key} {address}: {size} bytes of code"))
    return checks


async def check_secret_store(port: int | None) -> Check:
    name = "secret store"
    if port is None:
        return Check(name, Verdict.SKIP, "secret_store_config_port not set: no secret store")
    url = f"http://127.0.0.1:{port}/store-details"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT_S)) as session,
            session.get(url) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        return fail(
            name,
            f"127.0.0.1:{port} unreachable ({e or type(e).__name__})",
            "start the secret store or fix secret_store_config_port",
        )
    return ok(name, f"127.0.0.1:{port} answers (GET /store-details: HTTP {status})")


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0
