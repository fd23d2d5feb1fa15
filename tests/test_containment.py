"""User code is contained: on real workerd in a real cgroup slice, a job's JavaScript cannot reach
the admin API, the secret store, the RPC node or another slice's worker, on 127.0.0.1, localhost or
[::1] (each has a real listener, checked reachable from the test first); the job still completes
with its own output. A job sees only its own secret. No file or config text is built from chain
data other than integers and the code bytes themselves."""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from executor.outcome import ErrorCode
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.workerd import JobFiles, render_config
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import write_node_files
from oyster_devnet.tools import free_port
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.node_helpers import running_daemon
from tests.sandbox_helpers import slice_parent, workerd_bin_or_skip

pytestmark = pytest.mark.workerd

PROBE_JS = b"""
export default {
  async fetch(request, env) {
    const urls = await request.json();
    const results = {};
    for (const url of urls) {
      try {
        const response = await fetch(url, { method: "POST", body: "{}" });
        results[url] = "reached " + response.status;
      } catch (e) {
        results[url] = "refused: " + String((e && e.message) || e).slice(0, 160);
      }
    }
    results["env"] = Object.keys(env).sort().join(",");
    results["secret"] = env.secret ? new TextDecoder().decode(env.secret) : null;
    return new Response(JSON.stringify(results));
  }
};
"""


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=2) as path:
        yield path


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@asynccontextmanager
async def listener(host: str, port: int) -> AsyncIterator[None]:
    """A real HTTP server answering 200 on every path of ``host:port``."""

    async def any_request(request: web.Request) -> web.Response:
        return web.Response(text="reachable")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", any_request)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        # Something already listens there (on this shared machine, another test's server):
        # a live listener all the same, which the positive control checks.
        if e.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        await runner.cleanup()


async def reachable(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(url, data=b"{}") as response,
        ):
            return response.status > 0
    except aiohttp.ClientError:
        return False


async def test_user_code_reaches_no_local_service_and_still_answers(
    parent: Path, tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    pool = SlicePool.discover(parent)
    runtime, store_dir = tmp_path / "runtime", tmp_path / "secrets"
    runtime.mkdir()
    store_dir.mkdir()
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=runtime,
        secret_store_path=store_dir,
        pool=pool,
    )
    has_v6 = ipv6_loopback()
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(running_secret_store(FakeSecretStore()))
        files = write_node_files(tmp_path / "node", anvil, devnet, secret_store_port=store.port)
        daemon = await stack.enter_async_context(running_daemon(files))
        other_slice = await pool.acquire()  # the job gets the other one; this one "runs a job"
        stack.push_async_callback(pool.release, other_slice)
        other_job_port = free_port()  # the loopback port that job's workerd would listen on
        targets = {
            "admin API": int(daemon.admin_url.rstrip("/").rsplit(":", 1)[1]),
            "secret store": store.port,
            "RPC node": int(anvil.http_url.rstrip("/").rsplit(":", 1)[1]),
            "another slice": other_job_port,
        }
        await stack.enter_async_context(listener("127.0.0.1", other_job_port))
        hosts = ["127.0.0.1", "localhost"]
        if has_v6:
            hosts.append("[::1]")
            for port in targets.values():
                await stack.enter_async_context(listener("::1", port))
        urls = [f"http://{host}:{port}/" for port in targets.values() for host in hosts]
        for url in urls:  # positive control: every target really listens
            assert await reachable(url), f"{url} should be reachable from the test itself"
        urls.append("file:///etc/passwd")

        outcome = await sandbox.execute(
            PROBE_JS, json.dumps(urls).encode(), deadline_ms=20_000, label="probe"
        )
        assert outcome.error_code == ErrorCode.OK, outcome
        results = json.loads(outcome.output)
        for url in urls:
            assert results[url].startswith("refused"), (url, results[url])
        if outcome.logs:  # a process of its own: workerd's log names the reason, its policy
            for url in urls[:-1]:
                host_port = url.removeprefix("http://").rstrip("/").replace("[::1]", "::1")
                assert f"connecting to {host_port} is not allowed" in outcome.logs, url
        assert results["env"] == "" and results["secret"] is None
    assert pool.free_count == pool.capacity
    if not has_v6:
        pytest.skip("IPv6 loopback unavailable here: [::1] was not tried (IPv4 checks passed)")


async def test_a_job_sees_only_its_own_secret(parent: Path, tmp_path: Path) -> None:
    pool = SlicePool.discover(parent)
    runtime, store_dir = tmp_path / "runtime", tmp_path / "secrets"
    runtime.mkdir()
    store_dir.mkdir()
    (store_dir / "1.bin").write_bytes(b"secret of job one")
    (store_dir / "2.bin").write_bytes(b"secret of job two")
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=runtime,
        secret_store_path=store_dir,
        pool=pool,
    )
    paths = json.dumps([f"file://{store_dir}/2.bin", f"file://{store_dir}/1.bin"]).encode()
    one, two = await asyncio.gather(
        sandbox.execute(PROBE_JS, paths, deadline_ms=20_000, secret_id=1, label="one"),
        sandbox.execute(PROBE_JS, paths, deadline_ms=20_000, secret_id=2, label="two"),
    )
    for outcome, own in ((one, "secret of job one"), (two, "secret of job two")):
        assert outcome.error_code == ErrorCode.OK
        results = json.loads(outcome.output)
        assert results["env"] == "secret"
        assert results["secret"] == own
        assert all(v.startswith("refused") for k, v in results.items() if k.startswith("file:"))


# --- no config text from chain data ---------------------------------------------------------


def test_config_is_rendered_only_from_a_file_name_a_port_and_a_secret_path() -> None:
    # (and the operator's outbound budget: two integers of its config, never chain data)
    assert list(inspect.signature(render_config).parameters) == [
        "code_file",
        "port",
        "secret_file",
        "outbound",
    ]
    assert "inputs" not in inspect.signature(JobFiles.write).parameters
    assert "12345" in OutboundBudget(fetches=12345).worker_js()


def test_hostile_code_bytes_never_enter_the_config(tmp_path: Path) -> None:
    hostile = b'"), (name = "evil", worker = .x) ]; const x = embed "/etc/shadow"; #\n\x00'
    secret = tmp_path / "store" / "7.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"s")
    files = JobFiles.write(tmp_path, hostile, port=11001, secret_path=secret.resolve())
    try:
        config = files.config.read_text()
        assert files.code.read_bytes() == hostile  # the code is a file of its own, verbatim
        assert b"evil" not in config.encode() and "shadow" not in config
        assert files.code.name.startswith("oyster-job-") and files.code.name in config
        assert '"store/7.bin"' in config.replace(str(tmp_path) + "/", "")
    finally:
        files.remove()


async def test_secret_ids_are_integers_naming_a_file_in_the_store(tmp_path: Path) -> None:
    sandbox = Sandbox(
        workerd_bin=Path("/bin/false"), runtime_path=tmp_path, secret_store_path=tmp_path, pool=None
    )
    (tmp_path / "5.bin").write_bytes(b"x")
    assert sandbox.secret_path(5) == tmp_path / "5.bin"
    assert sandbox.secret_path(0) is None
    with pytest.raises(Exception, match="invalid secret id"):
        sandbox.secret_path(-1)
