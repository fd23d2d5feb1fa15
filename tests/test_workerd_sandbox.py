"""The Sandbox with real workerd in real cgroup slices: every error code it produces, secrets,
confinement, concurrency, cancellation, and that nothing is left behind.

Every test taking ``env`` runs twice: on the cold path (one workerd spawned per job) and on the warm
path (warm single-use slices, the code loaded by workerd's Worker Loader): the semantics are the
same."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from executor.errors import SandboxError
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.workerd import render_config
from tests.sandbox_helpers import (
    ECHO_JS,
    HANG_JS,
    SECRET_JS,
    STACK_OVERFLOW_JS,
    SYNTAX_ERROR_JS,
    THROW_JS,
    TOP_LEVEL_THROW_JS,
    cgroup2_mount_or_skip,
    eventually,
    files_in,
    first_slice,
    pid_alive,
    proc_file,
    sized_js,
    slice_parent,
    workerd_bin_or_skip,
    workerd_pids_referencing,
)

pytestmark = pytest.mark.workerd


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=3) as path:
        yield path


@dataclass
class Env:
    sandbox: Sandbox
    pool: SlicePool
    runtime: Path
    secrets: Path
    path: str  # "cold" or "warm"

    @property
    def warm_workers(self) -> int | None:
        return None if self.path == "warm" else 0

    def assert_clean(self) -> None:
        """Every slice free and empty, no workerd left, no job file left."""
        assert self.pool.free_count == self.pool.capacity == len(self.pool.slices)
        assert all(s.pids() == [] for s in self.pool.slices)
        assert workerd_pids_referencing(self.runtime) == []
        assert files_in(self.runtime) == []


@pytest.fixture(params=["cold", "cold-text-config", "warm"])
async def env(parent: Path, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Each semantics test runs on the warm path, and on the cold path with workerd started from
    a binary config (the default) and from a text config (the fallback)."""
    runtime, store = tmp_path / "runtime", tmp_path / "secrets"
    runtime.mkdir()
    store.mkdir()
    pool = SlicePool.discover(parent)
    path = "warm" if request.param == "warm" else "cold"
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=runtime,
        secret_store_path=store,
        pool=pool,
        warm_workers=None if path == "warm" else 0,
        binary_configs=request.param != "cold-text-config",
    )
    assert sandbox.binary_configs == (request.param != "cold-text-config")
    sandbox.start()
    if sandbox.warm is not None:  # jobs arriving before arming would start cold
        await eventually(lambda: sandbox.warm is not None and sandbox.warm.ready_count == 3)
    env = Env(sandbox, pool, runtime, store, path)
    try:
        yield env
    finally:
        await sandbox.close()
    env.assert_clean()
    if request.node.get_closest_marker("mixed_paths") is None:
        other = "cold" if path == "warm" else "warm"
        assert sandbox.runs[other] == 0, f"a job took the {other} path: {sandbox.runs}"


# --- config rendering (pure) ----------------------------------------------------------------


def test_render_config_matches_the_protocol() -> None:
    config = render_config(code_file="job.js", port=11007)
    assert 'import "/workerd/workerd.capnp"' in config
    assert '(name = "main", worker = .mainWorker)' in config
    assert 'address = "127.0.0.1:11007"' in config
    assert '(name = "main", esModule = embed "job.js")' in config
    assert 'compatibilityDate = "2023-03-07"' in config
    assert "secret" not in config

    with_secret = render_config(code_file="job.js", port=0, secret_file='../we"ird\\/7.bin')
    assert '(name = "secret", data = embed "../we\\"ird\\\\/7.bin")' in with_secret
    with pytest.raises(ValueError, match="control character"):
        render_config(code_file="job.js\n", port=1)


# --- error codes ----------------------------------------------------------------------------


async def test_ok_returns_the_body_and_the_logs(env: Env) -> None:
    outcome = await env.sandbox.execute(ECHO_JS, b'{"x": 1}', deadline_ms=5000, label="t1")
    assert outcome.error_code == ErrorCode.OK
    assert outcome.output == b'echo:{"x": 1}'
    assert 0 < outcome.total_time_ms < 5000
    assert "echo got 8 bytes" in outcome.logs
    assert "to stderr" in outcome.logs


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (sized_js(MAX_OUTPUT_BYTES), JobOutcome(b"a" * MAX_OUTPUT_BYTES, ErrorCode.OK, 0)),
        (sized_js(MAX_OUTPUT_BYTES + 1), JobOutcome.failed(ErrorCode.OUTPUT_TOO_LARGE, 0)),
        (SYNTAX_ERROR_JS, JobOutcome.failed(ErrorCode.SYNTAX_ERROR, 0)),
        # Uncaught exceptions, a stack overflow included, answer workerd's 500 body: code 0.
        (STACK_OVERFLOW_JS, JobOutcome(b"Internal Server Error", ErrorCode.OK, 0)),
        (THROW_JS, JobOutcome(b"Internal Server Error", ErrorCode.OK, 0)),
    ],
    ids=["exactly-20480", "20481-too-large", "syntax-error", "stack-overflow", "throws"],
)
async def test_error_codes(env: Env, code: bytes, expected: JobOutcome) -> None:
    outcome = await env.sandbox.execute(code, b"", deadline_ms=5000)
    assert (outcome.error_code, outcome.output) == (expected.error_code, expected.output)
    assert 0 < outcome.total_time_ms < 5000
    if expected.error_code == ErrorCode.SYNTAX_ERROR:
        assert "SyntaxError" in outcome.logs


async def test_a_job_that_never_answers_ends_at_the_deadline(env: Env) -> None:
    outcome = await env.sandbox.execute(HANG_JS, b"", deadline_ms=600)
    assert outcome == JobOutcome.failed(ErrorCode.DEADLINE_EXCEEDED, 600)


async def test_deadline_includes_start_up(env: Env) -> None:
    # workerd cannot even start in 1 ms: the deadline bounds start-up too.
    outcome = await env.sandbox.execute(ECHO_JS, b"", deadline_ms=1)
    expected = JobOutcome.failed(ErrorCode.DEADLINE_EXCEEDED, 1)
    # what a pre-loaded worker printed before the deadline may be in its logs
    assert (outcome.error_code, outcome.output, outcome.total_time_ms) == (
        expected.error_code,
        expected.output,
        expected.total_time_ms,
    )


async def test_start_failure_other_than_syntax_raises(env: Env) -> None:
    with pytest.raises(SandboxError, match=r"before listening.*: .*not a syntax error"):
        await env.sandbox.execute(TOP_LEVEL_THROW_JS, b"", deadline_ms=5000, label="t2")


@pytest.mark.parametrize(
    "code",
    [b"const handler = { fetch() { return new Response('x'); } };", b"export const x = 1;"],
    ids=["no-exports", "no-default-export"],
)
async def test_a_module_without_a_default_fetch_handler_is_a_clear_error(
    env: Env, code: bytes
) -> None:
    """Not `connecting to 127.0.0.1:... is not allowed`, not an `Internal Server Error` output:
    no submission, and the message says what the code lacks, on every path. (With an EMPTY body a
    cold workerd answers such a module 500 `Internal Server Error` instead of dropping it.)"""
    with pytest.raises(SandboxError, match=r"(?i)handler.*export default \{ async fetch"):
        await env.sandbox.execute(code, b"input", deadline_ms=5000, label="nd")


async def test_a_handler_that_throws_is_not_taken_for_a_missing_one(env: Env) -> None:
    outcome = await env.sandbox.execute(THROW_JS, b"", deadline_ms=5000)
    assert (outcome.error_code, outcome.output) == (ErrorCode.OK, b"Internal Server Error")


# --- what the code sees: the same on both paths -----------------------------------------

REQUEST_SHAPE_JS = b"""
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return new Response(JSON.stringify({
      method: request.method,
      host: url.hostname,
      path: url.pathname,
      port: url.port === request.headers.get("host").split(":")[1],
      headers: [...request.headers.keys()].sort(),
      env: Object.keys(env).sort(),
      globals: ["LOADER", "secret"].filter((name) => name in globalThis),
      cf: typeof request.cf,
      body: await request.text(),
    }));
  }
};
"""
OUTBOUND_JS = b"""
export default {
  async fetch(request) {
    const results = [];
    for (const target of (await request.text()).split(" ")) {
      try {
        await fetch(target);
        results.push("reached");
      } catch (e) {
        results.push(String(e.message).split(";")[0]);
      }
    }
    return new Response(results.join("|"));
  }
};
"""


async def test_the_code_sees_a_plain_post_and_only_its_own_env(env: Env) -> None:
    (env.secrets / "3.bin").write_bytes(b"s")
    outcome = await env.sandbox.execute(REQUEST_SHAPE_JS, b"in", deadline_ms=5000, secret_id=3)
    assert json.loads(outcome.output) == {
        "method": "POST",
        "host": "127.0.0.1",
        "path": "/",
        "port": True,
        "headers": ["connection", "content-length", "host"],
        "env": ["secret"],  # never the loader's LOADER binding
        "globals": [],
        "cf": "object",
        "body": "in",
    }


async def test_outbound_fetch_to_loopback_and_private_addresses_is_refused(env: Env) -> None:
    # Includes the warm processes' ports: a job cannot reach one waiting in another slice.
    ports = env.sandbox.warm.ready_ports() if env.sandbox.warm is not None else []
    targets = [f"http://127.0.0.1:{port}/" for port in ports]
    targets += ["http://localhost:1/", "http://[::1]:1/", "http://10.0.0.1:1/"]
    outcome = await env.sandbox.execute(OUTBOUND_JS, " ".join(targets).encode(), deadline_ms=10_000)
    assert outcome.error_code == ErrorCode.OK
    assert outcome.output.decode().split("|") == ["internal error"] * len(targets)


async def test_binary_output_passes_through_byte_for_byte(env: Env) -> None:
    every_byte = (
        b"export default { async fetch() { const a = new Uint8Array(512); "
        b"for (let i = 0; i < 512; i++) a[i] = i % 256; return new Response(a); } };"
    )
    outcome = await env.sandbox.execute(every_byte, b"", deadline_ms=5000)
    assert outcome.output == bytes(range(256)) * 2


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("new Response('not found', {status: 404})", b"not found"),
        ("new Response(null, {status: 204})", b""),
        (
            "new Response('x', {status: 503, headers: {'X-Oyster-Loader-Verdict': 'exception'}})",
            b"x",
        ),
    ],
    ids=["404", "204", "forged-verdict-header"],
)
async def test_the_status_and_headers_are_not_part_of_the_output(
    env: Env, response: str, expected: bytes
) -> None:
    code = b"export default { async fetch() { return %s; } };" % response.encode()
    outcome = await env.sandbox.execute(code, b"", deadline_ms=5000)
    assert (outcome.error_code, outcome.output) == (ErrorCode.OK, expected)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            b'export default { async fetch() { return new Response("a\xffb"); } };',
            b"a\xef\xbf\xbdb",
        ),
        (b"// \xc3\x28\nexport default { async fetch() { return new Response('ok'); } };", b"ok"),
        (b"\xef\xbb\xbfexport default { async fetch() { return new Response('bom'); } };", b"bom"),
        (b'export default { async fetch() { return new Response("x\x00y"); } };', b"x\x00y"),
        (
            'export default { async fetch() { return new Response("h\u00e9"); } };'.encode(),
            b"h\xc3\xa9",
        ),
    ],
    ids=["invalid-utf8-in-string", "invalid-utf8-in-comment", "bom", "nul", "utf8"],
)
async def test_code_bytes_are_decoded_as_workerd_decodes_a_module_file(
    env: Env, code: bytes, expected: bytes
) -> None:
    # The warm path hands the code over as bytes; the loader must read them as a module file is.
    outcome = await env.sandbox.execute(code, b"", deadline_ms=5000)
    assert (outcome.error_code, outcome.output) == (ErrorCode.OK, expected)


async def test_a_content_encoding_the_code_sets_is_applied_as_workerd_does(env: Env) -> None:
    code = b"""export default { async fetch() {
      return new Response("hello hello hello", {headers: {"content-encoding": "gzip"}});
    } };"""
    outcome = await env.sandbox.execute(code, b"", deadline_ms=5000)
    assert outcome.output[:2] == b"\x1f\x8b"  # workerd compressed it, on both paths
    assert gzip.decompress(outcome.output) == b"hello hello hello"


# --- secrets --------------------------------------------------------------------------------


async def test_concurrent_jobs_each_see_only_their_own_secret(env: Env) -> None:
    (env.secrets / "1.bin").write_bytes(b"secret-of-one")
    (env.secrets / "2.bin").write_bytes(b"\x00\xffsecret-of-two")
    one, two, none = await asyncio.gather(
        env.sandbox.execute(SECRET_JS, b"", deadline_ms=5000, secret_id=1),
        env.sandbox.execute(SECRET_JS, b"", deadline_ms=5000, secret_id=2),
        env.sandbox.execute(ECHO_JS, b"", deadline_ms=5000, secret_id=0),
    )
    assert one.output == b"secret-of-one"
    assert two.output == b"\x00\xffsecret-of-two"
    assert none.output == b"echo:"


async def test_missing_secret_raises_naming_the_id_and_path(env: Env) -> None:
    with pytest.raises(SandboxError) as raised:
        await env.sandbox.execute(SECRET_JS, b"", deadline_ms=5000, secret_id=42)
    assert "secret 42" in str(raised.value)
    assert str(env.secrets / "42.bin") in str(raised.value)


# --- confinement, concurrency, cancellation -------------------------------------------------


async def test_workerd_runs_inside_its_slice_and_cancel_cleans_up(env: Env) -> None:
    mount = cgroup2_mount_or_skip()
    warm = env.sandbox.warm
    if warm is not None:  # every slice holds an armed workerd: wait for them
        await eventually(lambda: warm.ready_count == len(env.pool.slices))
        idle = set(warm.ready_pids())
    else:
        idle = set()
    job = asyncio.ensure_future(env.sandbox.execute(HANG_JS, b"", deadline_ms=20_000))
    pids: list[tuple[int, int]] = []
    for _ in range(400):
        pids = [(s.index, pid) for s in env.pool.slices for pid in s.pids()]
        busy = [(index, pid) for index, pid in pids if warm is None or pid not in warm.ready_pids()]
        if busy:
            break
        await asyncio.sleep(0.005)
    assert len(busy) == 1, "workerd never showed up in a slice"
    index, pid = busy[0]
    assert warm is None or pid in idle  # the job got an already armed process
    slice_path = next(s.path for s in env.pool.slices if s.index == index)
    cgroup = proc_file(pid, "cgroup").decode()
    assert f"0::/{slice_path.relative_to(mount)}\n" in cgroup
    # Cold, the process enters its slice before it execs workerd (its cmdline reads empty
    # while the exec replaces it): the slice holds it from its first instruction.
    await eventually(lambda: b"workerd" in proc_file(pid, "cmdline"), within_s=5)
    assert pid in workerd_pids_referencing(env.runtime)

    await asyncio.sleep(0.2)  # let it start listening and hang on the request
    job.cancel()  # a forced daemon shutdown
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not pid_alive(pid)
    # env's teardown checks: slice free and empty, no workerd, no files


@pytest.mark.mixed_paths  # more jobs than slices: some may start cold
async def test_burst_larger_than_the_pool_queues_and_leaves_nothing_behind(env: Env) -> None:
    # 8 jobs on 3 slices: the ones that find every slice busy wait for one instead of failing
    # (no submission at all would get the operator slashed).
    jobs = [
        env.sandbox.execute(
            HANG_JS if i % 2 else ECHO_JS, b"%d" % i, deadline_ms=600 if i % 2 else 10_000
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*jobs)
    for i, r in enumerate(results):
        if i % 2:
            assert (r.error_code, r.total_time_ms) == (ErrorCode.DEADLINE_EXCEEDED, 600)
        else:
            assert (r.error_code, r.output) == (ErrorCode.OK, b"echo:%d" % i)
    # The pool is whole again: the next three jobs all get a slice.
    again = await asyncio.gather(
        *(env.sandbox.execute(ECHO_JS, b"", deadline_ms=5000) for _ in range(3))
    )
    assert [r.output for r in again] == [b"echo:"] * 3


@pytest.mark.mixed_paths  # more jobs than slices: some may start cold
async def test_deadline_can_expire_while_waiting_for_a_slice(env: Env) -> None:
    hangers = [env.sandbox.execute(HANG_JS, b"", deadline_ms=1500) for _ in range(3)]
    waiting = env.sandbox.execute(ECHO_JS, b"late", deadline_ms=300)
    *hung, late = await asyncio.gather(*hangers, waiting)
    assert (late.error_code, late.total_time_ms, late.output) == (
        ErrorCode.DEADLINE_EXCEEDED,
        300,
        b"",
    )
    assert all(r.error_code == ErrorCode.DEADLINE_EXCEEDED for r in hung)


async def test_unconfined_runs_without_a_slice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="executor.sandbox.core"):
        sandbox = Sandbox(
            workerd_bin=workerd_bin_or_skip(),
            runtime_path=tmp_path,
            secret_store_path=tmp_path,
            pool=None,
        )
    assert "UNCONFINED" in caplog.text
    outcome = await sandbox.execute(ECHO_JS, b"free", deadline_ms=5000)
    assert outcome.output == b"echo:free"
    assert files_in(tmp_path) == []
    assert workerd_pids_referencing(tmp_path) == []


# --- resource limits (need the memory / cpu controllers) ------------------------------------


def _require_limit(parent: Path, controller: str) -> None:
    if not (parent / f"workerd_{first_slice()}" / f"{controller}.max").exists():
        controllers = (parent / "cgroup.controllers").read_text().strip() or "none"
        pytest.skip(
            f"{controller} controller not available in {parent}/cgroup.controllers "
            f"(has: {controllers}) on this machine"
        )


ALLOCATE_JS = b"""
export default {
  async fetch() {
    const kept = [];
    for (let i = 0; i < 40; i++) {          // 40 x 8 MiB = 320 MiB, every page touched
      const chunk = new Uint8Array(8 * 1024 * 1024);
      chunk.fill(i + 1);
      kept.push(chunk);
    }
    return new Response("allocated " + kept.length);
  }
};
"""
BUSY_JS = b"""
export default {
  async fetch() {
    let x = 0;
    for (let i = 0; i < 60_000_000; i++) { x = (x + i * 7) % 1000003; }
    return new Response(String(x));
  }
};
"""


async def test_memory_cap_stops_a_greedy_worker(env: Env, parent: Path) -> None:
    _require_limit(parent, "memory")
    # workerd itself fits under the cap...
    assert (await env.sandbox.execute(ECHO_JS, b"", deadline_ms=5000)).output == b"echo:"
    try:  # ...but not a worker holding 320 MiB (which works unconfined)
        outcome = await env.sandbox.execute(ALLOCATE_JS, b"", deadline_ms=10_000)
    except SandboxError:
        return  # OOM-killed mid-request: no output, nothing submitted
    assert outcome.output != b"allocated 40"


async def test_cpu_cap_throttles_a_busy_loop(env: Env, parent: Path, tmp_path: Path) -> None:
    _require_limit(parent, "cpu")
    free = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=env.runtime,
        secret_store_path=env.secrets,
        pool=None,
    )
    unconfined = await free.execute(BUSY_JS, b"", deadline_ms=30_000)
    confined = await env.sandbox.execute(BUSY_JS, b"", deadline_ms=30_000)
    assert confined.output == unconfined.output
    # cpu.max 50000/1000000 is 5% of a CPU: the same work takes many times longer.
    assert confined.total_time_ms > 5 * unconfined.total_time_ms


async def test_clean_up_survives_repeated_cancellation() -> None:
    from executor.sandbox.core import _run_to_completion

    finished = asyncio.Event()

    async def slow_cleanup() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    task = asyncio.ensure_future(_run_to_completion(slow_cleanup()))
    for _ in range(3):  # e.g. a daemon whose shutdown is forced twice
        await asyncio.sleep(0.005)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


@pytest.mark.mixed_paths  # the loader cannot start there: cold
async def test_missing_workerd_binary_raises_and_cleans_up(env: Env, tmp_path: Path) -> None:
    await env.sandbox.close()  # give its slices back: the sandbox below uses the same ones
    missing = tmp_path / "no-such-workerd"
    confined = Sandbox(
        workerd_bin=missing,
        runtime_path=env.runtime,
        secret_store_path=env.secrets,
        pool=env.pool,
        warm_workers=env.warm_workers,
    )
    confined.start()
    try:  # warm: the loader never starts, so the job falls back to the cold path
        with pytest.raises(SandboxError, match="exited with status 127 before listening"):
            await confined.execute(ECHO_JS, b"", deadline_ms=5000)
    finally:
        await confined.close()
    unconfined = Sandbox(
        workerd_bin=missing, runtime_path=env.runtime, secret_store_path=env.secrets, pool=None
    )
    with pytest.raises(SandboxError, match="cannot start workerd"):
        await unconfined.execute(ECHO_JS, b"", deadline_ms=5000)
    # env's teardown checks that nothing is left
