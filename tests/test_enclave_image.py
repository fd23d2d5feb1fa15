"""The enclave image: what can be checked without Docker, then (``make image-test``) the image.

Without Docker: every file the Dockerfile copies exists, the entrypoint is valid ``sh``, the
commands its supervisor starts parse with the real CLIs, and the pinned dependencies are the
product's own.

With ``OYSTER_IMAGE_TEST=1`` (``make image-test``), on a private Docker engine: the image is built
from a base made here with debootstrap and the machine's CA bundle as build argument, booted with
``--network=none`` (loopback only, as in an enclave), initialized and registered on a devnet on the
host, and real jobs are answered on chain, one of them fetching a server on the host through the
image's outbound path (iptables DNAT -> transparent proxy -> "vsock" -> the host-side proxy). vsock
cannot cross a container's boundary, so unix sockets in a bind-mounted folder stand in for it
(``OYSTER_VSOCK_STANDIN``), carrying the same proxy protocol. A second build from the same sources
without cache must give the same file tree (``make image-manifest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from executor.admin.client import AdminClient
from executor.cli import build_parser
from executor.config import Settings
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import init_and_register
from tests.node_helpers import CODE_ECHO, wait_until
from tests.test_enclave_services import a_answer

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.nitro"
ENTRYPOINT = ROOT / "enclave" / "entrypoint.sh"


def copied_sources() -> list[str]:
    """The build-context sources of every COPY (those of ``COPY --from=stage`` are not files)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_every_file_the_dockerfile_copies_exists() -> None:
    sources = copied_sources()
    assert {"requirements.lock", "executor", "cgroup_setup.sh", "enclave/entrypoint.sh"} <= set(
        sources
    )
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"Dockerfile.nitro copies files that do not exist: {missing}"
    text = DOCKERFILE.read_text()
    assert "oyster_devnet" not in text and "devnet" not in re.sub(r"#.*", "", text)
    assert 'ENTRYPOINT ["/app/enclave/entrypoint.sh"]' in text
    assert "ARG BASE=debian:bookworm-slim" in text
    final = text[text.rindex("\nFROM ") :]
    assert "BUILD_CA" not in final and "build-ca" not in final  # the CA stays in the build stage


def test_entrypoint_is_valid_sh() -> None:
    checked = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert os.access(ENTRYPOINT, os.X_OK)


def dry_run(*args: str, **env: str) -> list[str]:
    bindir = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "enclave"),
            "OYSTER_ENTRYPOINT_DRY_RUN": "1",
            **env,
        },
        check=True,
    )
    return result.stdout.splitlines()


def executor_argv(steps: list[str]) -> list[str]:
    [line] = [s for s in steps if s.startswith("oyster-executor ") and " serve " in s]
    return shlex.split(line)


def test_entrypoint_sets_up_the_enclave_then_starts_the_daemon_on_vsock() -> None:
    steps = dry_run()
    assert "mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup" in steps
    assert "/app/cgroup_setup.sh" in steps
    assert "ip link set lo up" in steps
    assert "ip route replace default dev lo src 127.0.0.1" in steps
    dnat = "iptables -A OUTPUT -t nat -p tcp --dport 1:65535 ! -d 127.0.0.1 -j DNAT"
    assert any(s.startswith(dnat) and s.endswith("127.0.0.1:1200") for s in steps)
    args = build_parser().parse_args(executor_argv(steps)[1:])
    assert args.command == "serve"
    assert args.vsock_addr == "88:6000"
    assert args.cgroup_parent == Path("/sys/fs/cgroup")
    assert args.config_file == Path("/app/oyster_serverless_executor_config.json")
    assert args.log_format == "json"
    assert args.metrics_addr is None


def test_entrypoint_settings_and_extra_arguments_reach_the_daemon() -> None:
    steps = dry_run(
        "--shutdown-grace",
        "20",
        OYSTER_VSOCK_ADDR="16:7000",
        OYSTER_METRICS_ADDR="127.0.0.1:9102",
        OYSTER_LOG_FORMAT="text",
    )
    args = build_parser().parse_args(executor_argv(steps)[1:])
    assert (args.vsock_addr, args.metrics_addr, args.log_format) == (
        "16:7000",
        "127.0.0.1:9102",
        "text",
    )
    assert args.shutdown_grace == 20.0


def test_the_keygen_step_parses_with_the_cli() -> None:
    [keygen] = [s for s in dry_run() if " keygen " in s]
    args = build_parser().parse_args(shlex.split(keygen)[1:])
    assert args.command == "keygen" and args.secret == Path("/app/id.sec")


def test_the_image_config_needs_only_the_contract_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = ROOT / "enclave" / "oyster_serverless_executor_config.json"
    data = json.loads(config.read_text())
    assert data["workerd_runtime_path"] == "/app/runtime/"
    for n, key in enumerate(("tee_manager", "jobs", "code"), start=1):
        monkeypatch.setenv(f"OYSTER_EXECUTOR_{key.upper()}_CONTRACT_ADDR", f"0x{n:040x}")
    settings = Settings.load(config)
    assert settings.enclave_signer_file == Path("/app/id.sec")


def test_locked_dependencies_are_the_products_runtime_ones() -> None:
    pinned = {
        re.split(r"[=<>]", line)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[=<>\[ ]", d)[0].lower() for d in project["dependencies"]}
    dev = {re.split(r"[=<>\[ ]", d)[0].lower() for d in project["optional-dependencies"]["dev"]}
    assert runtime <= pinned, runtime - pinned
    assert not dev & pinned, dev & pinned
    assert not {"oyster-devnet", "oyster-executor"} & pinned


def test_the_supervisor_starts_every_enclave_process_with_commands_that_parse() -> None:
    sys.path.insert(0, str(ROOT / "enclave"))
    try:
        from oyster_enclave import attestation, dns, proxy, supervise
    finally:
        sys.path.remove(str(ROOT / "enclave"))
    env = {"OYSTER_METRICS_ADDR": "127.0.0.1:9102"}
    programs = {p.name: p.argv for p in supervise.plan(env, ["--shutdown-grace", "5"])}
    assert set(programs) == {
        "outbound",
        "dns",
        "attestation",
        "attestation-vsock",
        "metrics-vsock",
        "executor",
    }
    parsers = {
        "oyster_enclave.proxy": proxy,
        "oyster_enclave.dns": dns,
        "oyster_enclave.attestation": attestation,
    }
    for name, argv in programs.items():
        if argv[0] == "oyster-executor":
            continue
        module = parsers[argv[2]]
        assert argv[1] == "-m", name
        # every command's options are its module's own: --help of the same argv exits 0
        with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(io.StringIO()):
            module.main([*argv[3:], "--help"])
        assert done.value.code == 0, name
    assert programs["outbound"][-1] == "vsock:3:1200"
    assert programs["attestation-vsock"][-3:] == ["vsock:88:1300", "--target", "tcp:127.0.0.1:1300"]
    assert programs["metrics-vsock"][-3:] == ["vsock:88:9102", "--target", "tcp:127.0.0.1:9102"]
    args = build_parser().parse_args(programs["executor"][1:])
    assert args.vsock_addr == "88:6000" and args.shutdown_grace == 5.0
    # The test stand-in: the admin API on loopback TCP, exposed at the stand-in of 88:6000.
    standin = {p.name: p.argv for p in supervise.plan({"OYSTER_VSOCK_STANDIN": "unix:/run/h"})}
    args = build_parser().parse_args(standin["executor"][1:])
    assert args.vsock_addr is None and args.tcp_addr == "127.0.0.1:6000"
    assert standin["admin-vsock"][-3:] == ["vsock:88:6000", "--target", "tcp:127.0.0.1:6000"]


def test_a_missing_enclave_device_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oyster_enclave.supervise", "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "enclave")},
    )
    if Path("/dev/nsm").exists():
        pytest.skip("this machine has /dev/nsm")
    assert result.returncode == 1
    assert "missing /dev/nsm (the Nitro Secure Module: attestation)" in result.stdout


# --- the real image (make image-test) ---------------------------------------------------------

IMAGE = "oyster-executor:enclave-test"
PUBLIC_STANDIN = "203.0.113.10"
"""An address of the TEST-NET-3 documentation range: what the enclave's daemon and jobs connect
to. Nothing is ever sent to it: the container has no interface but loopback, its DNAT hands the
connection to the transparent proxy, and the test's host-side proxy maps it to 127.0.0.1 and
refuses every other destination."""
CONTAINER_CAPS = [
    # What the entrypoint needs (mount cgroup2, iptables and routes in its own namespace);
    # --privileged asks for capabilities this machine's root lacks (CAP_SYS_RESOURCE).
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
]  # fmt: skip
FETCH_CODE = """
export default {
  async fetch(request) {
    const url = await request.text();
    try {
      const response = await fetch(url);
      return new Response("host said: " + (await response.text()));
    } catch (e) {
      return new Response("fetch failed: " + e.message);
    }
  }
};
"""


def _image_tool():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "enclave"))
    try:
        import image_tool  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "enclave"))
    return image_tool


def figure(line: str) -> None:
    """A measured figure, printed in the test's output (make image-test runs pytest -s)."""
    print(f"\nimage-test figure: {line}", flush=True)


@pytest.fixture(scope="module")
def engine() -> Any:
    if os.environ.get("OYSTER_IMAGE_TEST") != "1":
        pytest.skip("builds and boots the image: run by `make image-test` (OYSTER_IMAGE_TEST=1)")
    missing = [tool for tool in ("dockerd", "docker", "debootstrap") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'docker'} (apt-get install docker.io)")
    tool = _image_tool()
    work = Path(os.environ.get("OYSTER_IMAGE_WORKDIR", "/var/tmp/oyster-image-test"))
    with tool.PrivateEngine(work / "engine") as env:
        base = tool.make_local_base(env, work)
        context = tool.stage_context(work / "context", Path("/etc/ssl/certs/ca-certificates.crt"))
        seconds = tool.build(env, IMAGE, context, base=base, ca=True, log=work / "build.log")
        figure(f"build {seconds:.0f} s (layer cache of {work} kept between runs)")
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        figure(f"image size {int(size) / 1e6:.0f} MB")
        yield tool, env, work, context


async def docker_logs(env: dict[str, str], name: str) -> str:
    logs = await asyncio.to_thread(
        subprocess.run, ["docker", "logs", name], env=env, capture_output=True, text=True
    )
    return logs.stdout + logs.stderr


@asynccontextmanager
async def host_side(folder: Path, public: str) -> AsyncIterator[dict[str, str]]:
    """The parent instance's side, on 127.0.0.1: the transparent proxy's host end (at the
    stand-in of vsock 3:1200, mapping ``public`` to 127.0.0.1 only) and TCP ports forwarded to
    the stand-ins of the enclave's vsock 88:6000 (admin) and 88:1300 (attestation)."""
    sys.path.insert(0, str(ROOT / "enclave"))
    try:
        from oyster_enclave import endpoints, proxy
    finally:
        sys.path.remove(str(ROOT / "enclave"))
    servers = [
        await endpoints.serve(
            endpoints.Endpoint("unix", path=str(folder / "3-1200.sock")),
            proxy.host_handler({public: "127.0.0.1"}, mapped_only=True),
        )
    ]
    urls = {}
    for name, port in (("admin", 6000), ("attestation", 1300)):
        target = endpoints.Endpoint("unix", path=str(folder / f"88-{port}.sock"))
        server = await endpoints.serve(
            endpoints.parse("tcp:127.0.0.1:0"), proxy.forward_handler(target)
        )
        servers.append(server)
        urls[name] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield urls
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@pytest.mark.timeout(1200)  # the first build, uncached, on a loaded machine
async def test_the_image_boots_registers_and_answers_jobs_on_chain(
    engine: Any, anvil: AnvilNode, devnet: Devnet, tmp_path: Path
) -> None:
    _, env, _, _ = engine
    host = tmp_path / "host"
    host.mkdir()
    port = anvil.http_url.rsplit(":", 1)[1].strip("/")
    config = {
        "secret_store_config_port": None,
        "workerd_runtime_path": "/app/runtime/",
        "secret_store_path": "/app/store/",
        "common_chain_id": anvil.chain_id,
        "http_rpc_url": f"http://{PUBLIC_STANDIN}:{port}",
        "web_socket_url": f"ws://{PUBLIC_STANDIN}:{port}",
        "tee_manager_contract_addr": devnet.tee_manager_address,
        "jobs_contract_addr": devnet.jobs_address,
        "code_contract_addr": devnet.user_code_address,
        "enclave_signer_file": "/app/id.sec",
        "execution_buffer_time": devnet.execution_buffer_time,
        "num_selected_executors": devnet.num_selected_executors,
    }
    (host / "config.json").write_text(json.dumps(config))
    cgroup_parent = f"oyster-test-image-{os.getpid()}"

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello from the host")

    asked: list[bytes] = []

    async def doh(request: web.Request) -> web.Response:
        """The DNS-over-HTTPS stand-in (plain HTTP): every A query answered PUBLIC_STANDIN."""
        query = await request.read()
        asked.append(query)
        qtype = struct.unpack_from("!H", query, query.index(b"\0", 12) + 1)[0]
        if qtype == 1:
            answer = a_answer(query, PUBLIC_STANDIN, 60)
        else:  # AAAA and the rest: no record (NOERROR, no answer)
            answer = query[:2] + b"\x81\x80" + query[4:6] + b"\0\0\0\0\0\0" + query[12:]
        return web.Response(body=answer, content_type="application/dns-message")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_post("/dns-query", doh)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    name = f"oyster-image-test-{os.getpid()}"
    started = time.monotonic()
    async with host_side(host, PUBLIC_STANDIN) as urls:
        await asyncio.to_thread(
            subprocess.run,
            ["docker", "run", "-d", "--name", name, "--network=none", *CONTAINER_CAPS,
             "-v", f"{host}:/run/oyster-host",
             "-e", "OYSTER_VSOCK_STANDIN=unix:/run/oyster-host", "-e", "OYSTER_NSM_OPTIONAL=1",
             "-e", "OYSTER_CONFIG_FILE=/run/oyster-host/config.json",
             "-e", "OYSTER_CGROUP_ROOT=/run/oyster-cgroup",
             "-e", f"OYSTER_CGROUP_PARENT={cgroup_parent}", "-e", "OYSTER_CGROUP_COUNT=4",
             "-e", "OYSTER_LOG_FORMAT=text",
             "-e", f"OYSTER_DOH_URL=http://{PUBLIC_STANDIN}:{server_port}/dns-query", IMAGE],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        try:
            admin = AdminClient(urls["admin"])
            await admin.wait_until_up(60)
            figure(f"boot to admin API up {time.monotonic() - started:.1f} s")
            await init_and_register(
                urls["admin"], devnet, owner=DEV_ACCOUNTS[1], gas=DEV_ACCOUNTS[2]
            )
            echo = await devnet.save_code(DEV_ACCOUNTS[3], CODE_ECHO)
            first = await devnet.create_job(
                DEV_ACCOUNTS[3], codehash=echo, code_inputs=b"from the chain", deadline_ms=5000
            )
            (answer,) = await wait_until(
                lambda: devnet.job_responses(first), timeout=60, what="the first job's answer"
            )
            figure(f"boot to first answered job {time.monotonic() - started:.1f} s")
            assert (answer.error_code, answer.output) == (0, b"echo:from the chain")

            fetcher = await devnet.save_code(DEV_ACCOUNTS[3], FETCH_CODE)
            url = f"http://{PUBLIC_STANDIN}:{server_port}/hello"
            job = await devnet.create_job(
                DEV_ACCOUNTS[3], codehash=fetcher, code_inputs=url.encode(), deadline_ms=5000
            )
            (answer,) = await wait_until(
                lambda: devnet.job_responses(job), timeout=30, what="the fetching job's answer"
            )
            assert (answer.error_code, answer.output) == (0, b"host said: hello from the host")

            # A name, resolved in the enclave: resolv.conf -> the resolver -> DoH through the proxy.
            url = f"http://host.oyster.test:{server_port}/hello"
            job = await devnet.create_job(
                DEV_ACCOUNTS[3], codehash=fetcher, code_inputs=url.encode(), deadline_ms=5000
            )
            (answer,) = await wait_until(
                lambda: devnet.job_responses(job), timeout=30, what="the DNS job's answer"
            )
            assert (answer.error_code, answer.output) == (0, b"host said: hello from the host")
            assert any(b"\x04host\x06oyster\x04test\x00" in query for query in asked)

            # Loopback stays refused to user code: 127.0.0.1:1200 is the proxy itself.
            job = await devnet.create_job(
                DEV_ACCOUNTS[3],
                codehash=fetcher,
                code_inputs=b"http://127.0.0.1:1200/",
                deadline_ms=5000,
            )
            (answer,) = await wait_until(
                lambda: devnet.job_responses(job), timeout=30, what="the loopback job's answer"
            )
            assert answer.error_code == 0 and answer.output.startswith(b"fetch failed: ")

            # The attestation endpoint answers through its vsock stand-in (no /dev/nsm here).
            async with aiohttp.ClientSession() as session:
                async with session.get(urls["attestation"] + "/attestation/raw") as response:
                    assert response.status == 503
                    assert "cannot open /dev/nsm" in await response.text()
            logs = await docker_logs(env, name)
            assert "supervise: executor started" in logs
            assert not re.search(r"supervise: \S+ exited", logs)  # no process of the image died
        except BaseException:
            print((await docker_logs(env, name))[-8000:])
            raise
        finally:
            await asyncio.to_thread(
                subprocess.run, ["docker", "rm", "-f", name], env=env, capture_output=True
            )
            await asyncio.to_thread(
                subprocess.run,
                [str(ROOT / "cgroup_setup.sh"), "--remove"],
                capture_output=True,
                env={**os.environ, "OYSTER_CGROUP_PARENT": cgroup_parent},
            )
            await runner.cleanup()


@pytest.mark.timeout(1200)
def test_two_builds_from_the_same_sources_have_the_same_files(engine: Any) -> None:
    tool, env, work, context = engine
    first = tool.manifest(env, IMAGE)
    seconds = tool.build(
        env,
        f"{IMAGE}-again",
        context,
        base=tool.LOCAL_BASE,
        ca=True,
        no_cache=True,
        log=work / "build-again.log",
    )
    figure(f"uncached rebuild {seconds:.0f} s")
    second = tool.manifest(env, f"{IMAGE}-again")
    (work / "manifest.txt").write_text("\n".join(first) + "\n")
    differ = sorted(set(first) ^ set(second))
    assert not differ, f"{len(differ)} lines differ, e.g. {differ[:10]}"
    assert any(line.endswith("  usr/local/bin/workerd") for line in first)
