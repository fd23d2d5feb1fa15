"""``oyster-executor doctor``'s checks: is this machine and config ready to run the executor?

Each check returns ``Check``s: a verdict (ok, warn, fail, skip), what was found and, when
something is wrong, a hint naming the fix. Every check runs, whatever the others found, so one run
reports every problem. The checks open no admin socket, create no cgroup and send no transaction;
the canary runs one known-good job through the sandbox exactly as a real job runs (warm and cold,
in a free slice), and chain checks use plain JSON-RPC with short timeouts, so a dead endpoint
fails fast.

Adding a check: write ``async def check_x(ctx: Context) -> Check | list[Check]`` and put a
``DoctorCheck`` for it in :data:`CHECKS`, where an operator would fix it in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from eth_utils import function_signature_to_4byte_selector

from executor import redact
from executor.admin.secret_store import SecretStoreClient
from executor.canary import run_canary
from executor.chain import rpc
from executor.chain.code import SAVE_CODE_SELECTOR
from executor.chain.enclave_key import EnclaveKey
from executor.chain.follow import JOB_EVENTS, NODE_EVENTS, ChainEvent
from executor.chain.jobs_contract import SLASH_SELECTOR, SUBMIT_OUTPUT_SELECTOR
from executor.chain.requirements import min_storage_capacity, storage_capacity_problem
from executor.chain.rpc import RpcCallError
from executor.config import Settings, ws_url_with_key
from executor.errors import ExecutorError, NoFreeSliceError, SecretStoreError
from executor.sandbox import Sandbox
from executor.sandbox.capnp_config import SCHEMA_ENV, BinaryConfigs, find_schema
from executor.sandbox.cgroups import SlicePool, find_cgroup2_mount
from executor.sandbox.warm import ARM_TIMEOUT_S

RPC_TIMEOUT_S = 5.0
WORKERD_VERSION_TIMEOUT_S = 10.0
SETUP_SLICES = "run ./cgroup_setup.sh as root (or pass --cgroup-parent)"


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
    canary: bool = True


@dataclass
class Context:
    """What the checks share: the options, the settings (when valid) and what earlier checks
    found (the first working HTTP endpoint)."""

    options: DoctorOptions
    settings: Settings | None = None
    config_error: str = ""
    live_rpc: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Settings:
        assert self.settings is not None  # checks with needs_config run only with settings
        return self.settings


CheckFn = Callable[[Context], Awaitable["Check | list[Check]"]]


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    run: CheckFn
    needs_config: bool = True


async def run_checks(options: DoctorOptions) -> list[Check]:
    """Every check of :data:`CHECKS`, in order; a check that crashes is reported as failed."""
    ctx = Context(options)
    results: list[Check] = []
    for check in CHECKS:
        if check.needs_config and ctx.settings is None:
            results.append(Check(check.name, Verdict.SKIP, "needs a valid config"))
            continue
        try:
            found = await check.run(ctx)
        except Exception as e:  # one broken check must not hide the others' findings
            found = fail(check.name, f"the check itself failed: {type(e).__name__}: {e}", "")
        results += found if isinstance(found, list) else [found]
    return results


async def check_config(ctx: Context) -> Check:
    options = ctx.options
    try:
        settings = Settings.load(options.config_file)
    except ExecutorError as e:
        return fail(
            "config", str(e), f"fix {options.config_file} (see docs/operator.md, Configuration)"
        )
    for url in (*settings.http_rpc_urls, *settings.web_socket_urls):
        redact.register_url_credentials(url)  # the lines below quote the URLs
    ctx.settings = settings
    return ok(
        "config",
        f"{options.config_file} valid (chain {settings.common_chain_id}, "
        f"{len(settings.http_rpc_urls)} http + {len(settings.web_socket_urls)} ws endpoint(s))",
    )


# --- local files ---------------------------------------------------------------------------------


async def check_key_file(ctx: Context) -> Check:
    name = "key file"
    path = ctx.config.enclave_signer_file
    try:
        info = path.stat()
    except FileNotFoundError:
        return fail(
            name,
            f"{path}: No such file or directory",
            "create it with `oyster-executor keygen --secret <path>` or fix enclave_signer_file",
        )
    except OSError as e:
        return fail(
            name,
            f"{path}: {e.strerror}",
            "let the daemon's user reach the key file's folder, or fix enclave_signer_file",
        )
    if stat.S_ISDIR(info.st_mode):
        return fail(
            name,
            f"{path} is a folder",
            "point enclave_signer_file at the key file itself (e.g. <folder>/id.sec)",
        )
    if not stat.S_ISREG(info.st_mode):
        return fail(name, f"{path} is not a regular file", "point enclave_signer_file at the key")
    mode = info.st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return fail(
            name,
            f"{path} is readable or writable by group/others (mode {stat.S_IMODE(mode):04o})",
            f"chmod 600 {path}",
        )
    if not os.access(path, os.R_OK):
        return fail(
            name,
            f"{path} is not readable by this user (uid {os.getuid()}, file owner {info.st_uid})",
            "run as the key file's owner (or chown it to the daemon's user); keep mode 0600",
        )
    try:
        key = EnclaveKey.load(path)
    except ExecutorError as e:
        return fail(
            name,
            str(e),
            "it must hold exactly 32 raw bytes; `oyster-executor keygen` makes a new key "
            "(a new enclave address, to register again)",
        )
    return ok(name, f"{path} private, well-formed; enclave address {key.address}")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


async def check_workerd(ctx: Context) -> Check:
    name = "workerd"
    binary = ctx.config.workerd_binary
    if not _executable(binary):
        return fail(
            name,
            f"no executable workerd at {binary}",
            "put the workerd binary (npm package `workerd`), or a symlink to it, at "
            f"{binary} (workerd_runtime_path/workerd)",
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


async def check_workerd_config(ctx: Context) -> Check:
    """Whether workerd will start from binary configs (cheaper start-ups: capnp_config.py)."""
    name = "workerd config"
    binary = ctx.config.workerd_binary
    if not _executable(binary):
        return Check(name, Verdict.SKIP, "no workerd binary")
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


async def check_runtime_folders(ctx: Context) -> list[Check]:
    """Both folders, each reported (one run shows every problem)."""
    config = ctx.config
    return [
        _folder_check("workerd_runtime_path", config.workerd_runtime_path, os.W_OK, "writable"),
        _folder_check(
            "secret_store_path", config.secret_store_path, os.R_OK, "readable", "present"
        ),
    ]


def _folder_check(key: str, path: Path, access: int, able: str, good: str = "") -> Check:
    """Config key ``key`` names a folder this user may enter and use with ``access`` (``able``
    says it in words; ``good``, default ``able``, words the check that passed)."""
    name = "folders"
    if not path.exists():
        return fail(name, f"{key} {path} does not exist", f"mkdir -p {path}")
    if not path.is_dir():
        return fail(name, f"{key} {path} is not a folder", "point it at a folder")
    if not os.access(path, access | os.X_OK):
        return fail(
            name,
            f"{key} {path} is not {able} by this user",
            "run as the folder's owner or chown it to the daemon's user",
        )
    return ok(name, f"{key} {path} {good or able}")


# --- cgroups, the sandbox and vsock -------------------------------------------------------------


async def check_cgroup2(ctx: Context) -> Check:
    try:
        mount = find_cgroup2_mount()
    except ExecutorError as e:
        return fail("cgroup v2", str(e), "mount it (as root): mount -t cgroup2 none /sys/fs/cgroup")
    return ok("cgroup v2", f"mounted at {mount}")


def _discover_slices(ctx: Context) -> SlicePool:
    if "pool" not in ctx.extra:
        try:
            ctx.extra["pool"] = SlicePool.discover(ctx.options.cgroup_parent)
        except ExecutorError as e:
            ctx.extra["pool"] = e
    found = ctx.extra["pool"]
    if isinstance(found, ExecutorError):
        raise found
    assert isinstance(found, SlicePool)
    return found


async def check_slices(ctx: Context) -> Check:
    name = "slices"
    try:
        pool = _discover_slices(ctx)
    except ExecutorError as e:
        return fail(name, str(e), SETUP_SLICES)
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


@contextlib.contextmanager
def _captured_logs(name: str) -> Iterator[list[str]]:
    """What ``name``'s loggers say meanwhile (warnings and worse), kept off the terminal: the
    sandbox explains its failures in log lines, which doctor quotes in its own."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(name)
    handler = Keep(logging.WARNING)
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


async def check_canary(ctx: Context) -> list[Check]:
    """A known-good job through the sandbox as the daemon builds it: warm, then cold, in a slice
    (unconfined where there are none: the daemon would not start, but workerd is still tested)."""
    name = "canary"
    if not ctx.options.canary:
        return [Check(name, Verdict.SKIP, "--no-canary")]
    s = ctx.config
    if not _executable(s.workerd_binary) or not s.workerd_runtime_path.is_dir():
        return [Check(name, Verdict.SKIP, "no workerd binary or runtime folder")]
    try:
        pool: SlicePool | None = _discover_slices(ctx)
    except ExecutorError:
        pool = None
    if pool is not None:
        try:
            probe = pool.reserve()
        except NoFreeSliceError:
            return [Check(name, Verdict.SKIP, "every slice is busy (is a daemon running here?)")]
        await pool.release(probe)
    where = "in a slice" if pool is not None else "UNCONFINED (no slices)"
    paths = [("warm", s.warm_workers != 0 and pool is not None), ("cold", True)]
    checks = []
    for path, wanted in paths:
        if not wanted:
            reason = "warm_workers is 0" if s.warm_workers == 0 else "no slices, no warm path"
            checks.append(Check(f"{name} {path}", Verdict.SKIP, reason))
            continue
        with _captured_logs("executor.sandbox") as said:
            checks.append(await _canary_on(f"{name} {path}", path, s, pool, where, said))
    return checks


async def _canary_on(
    name: str, path: str, s: Settings, pool: SlicePool | None, where: str, said: list[str]
) -> Check:
    try:
        sandbox = Sandbox(
            workerd_bin=s.workerd_binary,
            runtime_path=s.workerd_runtime_path,
            secret_store_path=s.secret_store_path,
            pool=pool,
            warm_workers=1 if path == "warm" else 0,
        )
    except ExecutorError as e:
        return fail(name, str(e), "fix workerd_runtime_path")
    try:
        sandbox.start()
        if path == "warm":
            assert sandbox.warm is not None
            if not await sandbox.warm.settle(ARM_TIMEOUT_S):
                why = said[-1] if said else f"no warm slice armed within {ARM_TIMEOUT_S:.0f} s"
                return fail(
                    name,
                    f"warm path broken: {why}",
                    "jobs would run cold (slower) or not at all: run `oyster-executor doctor` "
                    "--log-level DEBUG, check workerd (Worker Loader needs a 2025+ workerd)",
                )
        result = await run_canary(sandbox, label=name)
        took = sandbox.runs.get(path, 0)
    finally:
        await sandbox.close()
    if not result.ok:
        return fail(
            name,
            f"a known-good job failed on the {path} path {where}: {result.detail}",
            "every job would fail (and be slashed): fix what the message names, then re-run",
        )
    if not took:
        return fail(name, f"the job did not take the {path} path", "")
    return ok(name, f"a known-good job {result.detail} on the {path} path {where}")


async def check_vsock(ctx: Context) -> Check:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return fail("vsock", "this Python has no AF_VSOCK", "use a Linux build of Python")
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as e:
        return fail(
            "vsock",
            f"cannot create an AF_VSOCK socket: {e.strerror or e}",
            "serve --vsock-addr needs vsock: run in a Nitro enclave (or, on a host, load the "
            "vsock_loopback or vhost_vsock kernel module); use --tcp-addr for development",
        )
    return ok("vsock", "AF_VSOCK sockets can be created")


# --- the chain -----------------------------------------------------------------------------------


async def _http_rpc(
    session: aiohttp.ClientSession, url: str, method: str, params: list[Any]
) -> Any:
    async with session.post(url, json=rpc.request(method, params)) as response:
        return rpc.result_of(method, await response.json(content_type=None))


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT_S))


_RPC_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError, RpcCallError)


async def check_http_rpcs(ctx: Context) -> list[Check]:
    """One check per HTTP endpoint; the first that works serves the contract checks."""
    settings = ctx.config
    checks: list[Check] = []
    async with _session() as session:
        for url in settings.http_rpc_urls:
            name = "http rpc"
            try:
                chain_id = int(await _http_rpc(session, url, "eth_chainId", []), 16)
                block = int(await _http_rpc(session, url, "eth_blockNumber", []), 16)
            except _RPC_ERRORS as e:
                checks.append(
                    fail(
                        name,
                        f"{url}: unreachable ({e or type(e).__name__})",
                        "check http_rpc_url (and that the node is up)",
                    )
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
            ctx.live_rpc = ctx.live_rpc or url
    return checks


async def check_websockets(ctx: Context) -> list[Check]:
    return [await check_ws(url, ctx.options.ws_api_key) for url in ctx.config.web_socket_urls]


async def check_ws(url: str, api_key: str) -> Check:
    name = "websocket"
    full = ws_url_with_key(url, api_key)
    try:
        async with _session() as session, session.ws_connect(full) as ws:
            await ws.send_str(json.dumps(rpc.request("eth_chainId", [])))
            async with asyncio.timeout(RPC_TIMEOUT_S):
                reply = json.loads((await ws.receive()).data)
        chain_id = int(rpc.result_of("eth_chainId", reply), 16)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError, RpcCallError) as e:
        hint = "check web_socket_url" + ("" if api_key else " (pass --ws-api-key if it needs one)")
        return fail(name, f"{url}: unreachable ({e or type(e).__name__})", hint)
    return ok(name, f"{url}: answers (chain id {chain_id})")


# --- the contracts -------------------------------------------------------------------------------

EIP1967_IMPLEMENTATION_SLOT = "0x360894a13ba1a3210667c828492db98dca3e2076cc3735a920a3ca505d382bbc"
"""Where an ERC-1967 (UUPS or transparent) proxy keeps its implementation's address: the
production contracts are such proxies."""


@dataclass(frozen=True)
class ContractRole:
    """What the executor relies on in a contract: the events it follows and the functions it
    calls. A contract of that role has each of them in its code (the dispatcher pushes every
    selector, an ``emit`` pushes its topic), the devnet's and the production one alike."""

    key: str
    title: str
    events: tuple[type[ChainEvent], ...] = ()
    functions: tuple[tuple[str, bytes], ...] = ()

    def missing(self, code: str) -> list[str]:
        wanted = [(e.SIGNATURE.split("(")[0] + " event", e.topic0()) for e in self.events]
        wanted += [(f"{name} function", selector) for name, selector in self.functions]
        return [what for what, marker in wanted if marker.lstrip(b"\0").hex() not in code]


def _selector(signature: str) -> tuple[str, bytes]:
    return signature.split("(")[0], function_signature_to_4byte_selector(signature)


CONTRACT_ROLES = (
    ContractRole(
        "tee_manager_contract_addr",
        "TeeManager",
        NODE_EVENTS,
        (
            _selector("drainTeeNode(address)"),
            _selector("reviveTeeNode(address)"),
            _selector("deregisterTeeNode(address)"),
        ),
    ),
    ContractRole(
        "jobs_contract_addr",
        "Jobs",
        JOB_EVENTS,
        (("submitOutput", SUBMIT_OUTPUT_SELECTOR), ("slashOnExecutionTimeout", SLASH_SELECTOR)),
    ),
    ContractRole(
        "code_contract_addr", "UserCode", (), (("saveCodeInCallData", SAVE_CODE_SELECTOR),)
    ),
)


async def _contract_code(session: aiohttp.ClientSession, url: str, address: str) -> tuple[str, str]:
    """(code as lower-case hex without 0x, where it came from): a proxy's implementation code."""
    code = str(await _http_rpc(session, url, "eth_getCode", [address, "latest"]))[2:].lower()
    if not code:
        return "", ""
    slot = await _http_rpc(
        session, url, "eth_getStorageAt", [address, EIP1967_IMPLEMENTATION_SLOT, "latest"]
    )
    implementation = "0x" + str(slot)[-40:]
    if int(str(slot), 16) == 0:
        return code, ""
    behind = str(await _http_rpc(session, url, "eth_getCode", [implementation, "latest"]))[2:]
    return behind.lower(), f" (proxy of {implementation})"


async def check_contracts(ctx: Context) -> list[Check]:
    settings, url = ctx.config, ctx.live_rpc
    if url is None:
        return [Check("contracts", Verdict.SKIP, "no working HTTP RPC endpoint")]
    checks = []
    codes: dict[str, str] = {}
    async with _session() as session:
        for role in CONTRACT_ROLES:
            address = getattr(settings, role.key)
            try:
                code, via = await _contract_code(session, url, address)
            except _RPC_ERRORS as e:
                checks.append(fail("contract", f"{role.key} {address}: cannot read ({e})", ""))
                continue
            codes[role.key] = code
            if not code:
                checks.append(
                    fail(
                        "contract",
                        f"no contract code at {role.key} {address} on chain "
                        f"{settings.common_chain_id}",
                        f"fix {role.key} (wrong address, or a different chain)",
                    )
                )
                continue
            missing = role.missing(code)
            if missing:
                checks.append(_wrong_contract(role, address, via, code, missing))
                continue
            checks.append(
                ok(
                    "contract",
                    f"{role.key} {address}{via}: a {role.title} ({len(code) // 2} bytes)",
                )
            )
        if codes.get("jobs_contract_addr") and not CONTRACT_ROLES[1].missing(
            codes["jobs_contract_addr"]
        ):
            checks += await _jobs_parameters(session, url, settings)
    return checks


def _wrong_contract(
    role: ContractRole, address: str, via: str, code: str, missing: list[str]
) -> Check:
    others = [r for r in CONTRACT_ROLES if r is not role and not r.missing(code)]
    if others:
        other = others[0]
        hint = (
            f"{address} is the {other.title} contract: {role.key} and {other.key} swapped? "
            f"put the {role.title} address in {role.key}"
        )
    else:
        hint = f"put the {role.title} contract's address in {role.key} (or check the chain)"
    return fail(
        "contract",
        f"{role.key} {address}{via} is not a {role.title}: its code has no "
        f"{', '.join(missing[:3])}",
        hint,
    )


async def _jobs_parameters(
    session: aiohttp.ClientSession, url: str, settings: Settings
) -> list[Check]:
    """The Jobs contract's own ``EXECUTION_BUFFER_TIME`` and ``NO_OF_NODES_TO_SELECT`` (both the
    devnet and the production contract have them) against the config: a mismatch misplaces every
    slash and every completion."""
    checks = []
    for getter, key in (
        ("EXECUTION_BUFFER_TIME()", "execution_buffer_time"),
        ("NO_OF_NODES_TO_SELECT()", "num_selected_executors"),
    ):
        data = "0x" + function_signature_to_4byte_selector(getter).hex()
        call = {"to": settings.jobs_contract_addr, "data": data}
        try:
            on_chain = int(str(await _http_rpc(session, url, "eth_call", [call, "latest"])), 16)
        except _RPC_ERRORS as e:
            checks.append(Check("contract", Verdict.WARN, f"cannot read Jobs.{getter}: {e}", ""))
            continue
        configured = getattr(settings, key)
        if on_chain != configured:
            checks.append(
                fail(
                    "contract",
                    f"Jobs.{getter[:-2]} is {on_chain}, config says {key} {configured}",
                    f"set {key} to {on_chain}",
                )
            )
        else:
            checks.append(ok("contract", f"Jobs.{getter[:-2]} {on_chain} = {key}"))
    return checks


# --- the secret store ----------------------------------------------------------------------------


async def check_secret_store(ctx: Context) -> Check:
    name = "secret store"
    port = ctx.config.secret_store_config_port
    if port is None:
        return Check(name, Verdict.SKIP, "secret_store_config_port not set: no secret store")
    url = f"http://127.0.0.1:{port}/store-details"
    try:
        async with _session() as session, session.get(url) as response:
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        return fail(
            name,
            f"127.0.0.1:{port} unreachable ({e or type(e).__name__})",
            "start the secret store or fix secret_store_config_port",
        )
    return ok(name, f"127.0.0.1:{port} answers (GET /store-details: HTTP {status})")


async def check_storage_requirement(ctx: Context) -> Check:
    """The storage capacity this node would register with against what the contracts require
    (executor.chain.requirements): below it, every output of the node would revert."""
    name = "storage capacity"
    settings, url = ctx.config, ctx.live_rpc
    if url is None:
        return Check(name, Verdict.SKIP, "no working HTTP RPC endpoint")
    async with _session() as session:

        async def eth_call(to: str, data: bytes) -> bytes | None:
            params = [{"to": to, "data": "0x" + data.hex()}, "latest"]
            try:
                result = await _http_rpc(session, url, "eth_call", params)
            except (RpcCallError, ValueError):
                return None  # a revert (no such function): the contracts say nothing
            return bytes.fromhex(result[2:]) if isinstance(result, str) else None

        try:
            required = await min_storage_capacity(eth_call, settings.tee_manager_contract_addr)
        except _RPC_ERRORS as e:
            return fail(name, f"cannot read the contracts' requirement ({e})", "")
    if required is None:
        return ok(name, "the contracts require no storage capacity (no SecretStore behind them)")
    capacity = 0
    port = settings.secret_store_config_port
    if port is not None:
        try:
            capacity = await SecretStoreClient(port).storage_capacity()
        except (SecretStoreError, aiohttp.ClientError, OSError, TimeoutError) as e:
            # Before its init the store does not say; the admin API checks again before signing.
            return Check(
                name,
                Verdict.WARN,
                f"the contracts require {required}; the secret store's capacity is unknown ({e})",
            )
    problem = storage_capacity_problem(capacity, required)
    if problem is not None:
        return fail(name, problem, "the admin API will refuse to sign the registration message")
    return ok(name, f"{capacity} >= GLOBAL_MAX_SECRET_SIZE {required}")


async def check_job_limits(ctx: Context) -> Check:
    """Which per-job memory and CPU limits hold here: the slices' cgroup limits where the
    controllers exist, and what holds without them (SECURITY.md, "Resource exhaustion")."""
    from executor.sandbox.workerd import JOB_DATA_BUDGET, JOB_HEAP_MB, job_nice

    name = "job limits"
    in_process = (
        f"V8 heap cap {JOB_HEAP_MB} MB + RLIMIT_DATA +{JOB_DATA_BUDGET >> 20} MB per workerd, "
        f"workerd at nice {job_nice()}"
    )
    try:
        limits = _discover_slices(ctx).limits()
    except ExecutorError:
        return Check(name, Verdict.SKIP, f"no slices; everywhere: {in_process}")
    missing = [
        f"no {controller} controller: {instead}"
        for controller, value, instead in (
            ("memory", limits.memory_max, "only the in-process memory caps hold"),
            ("cpu", limits.cpu_max, "a spinning job may take a whole core until its deadline"),
        )
        if value is None
    ]
    if missing:
        return Check(
            name,
            Verdict.WARN,
            f"{'; '.join(missing)} ({in_process})",
            "enable the memory and cpu controllers for the slices' parent, then re-run "
            "cgroup_setup.sh",
        )
    return ok(name, f"memory.max={limits.memory_max} cpu.max={limits.cpu_max}; {in_process}")


CHECKS: list[DoctorCheck] = [
    DoctorCheck("config", check_config, needs_config=False),
    DoctorCheck("key file", check_key_file),
    DoctorCheck("workerd", check_workerd),
    DoctorCheck("workerd config", check_workerd_config),
    DoctorCheck("folders", check_runtime_folders),
    DoctorCheck("cgroup v2", check_cgroup2, needs_config=False),
    DoctorCheck("slices", check_slices, needs_config=False),
    DoctorCheck("job limits", check_job_limits, needs_config=False),
    DoctorCheck("canary", check_canary),
    DoctorCheck("http rpc", check_http_rpcs),
    DoctorCheck("websocket", check_websockets),
    DoctorCheck("contract", check_contracts),
    DoctorCheck("secret store", check_secret_store),
    DoctorCheck("storage capacity", check_storage_requirement),
    DoctorCheck("vsock", check_vsock, needs_config=False),
]
"""Every check, in the order an operator would fix things. One entry per check."""


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0
