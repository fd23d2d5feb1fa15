"""Warm single-use slices with real workerd in real cgroup slices: what only the warm path has.

The job semantics of both paths are tested together in test_workerd_sandbox.py; here: arming,
re-arming, one process per job, the loader's frame, fallback to cold, clean-up on cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from executor.errors import SandboxError
from executor.outcome import ErrorCode
from executor.sandbox import Sandbox
from executor.sandbox import warm as warm_module
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.loader import NO_SECRET, Verdict, encode_frame
from executor.sandbox.warm import WarmPool, WarmWorker
from tests.sandbox_helpers import (
    ECHO_JS,
    HANG_JS,
    SECRET_JS,
    eventually,
    files_in,
    pid_alive,
    slice_parent,
    workerd_bin_or_skip,
    workerd_pids_referencing,
)

pytestmark = pytest.mark.workerd


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=2) as path:
        yield path


def _sandbox(parent: Path, tmp_path: Path, warm_workers: int | None, workerd: Path) -> Sandbox:
    runtime, store = tmp_path / "runtime", tmp_path / "secrets"
    runtime.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    return Sandbox(
        workerd_bin=workerd,
        runtime_path=runtime,
        secret_store_path=store,
        pool=SlicePool.discover(parent),
        warm_workers=warm_workers,
    )


@pytest.fixture
async def sandbox(parent: Path, tmp_path: Path) -> AsyncIterator[Sandbox]:
    sandbox = _sandbox(parent, tmp_path, None, workerd_bin_or_skip())
    sandbox.start()
    try:
        await eventually(lambda: _warm(sandbox).ready_count == 2)  # else jobs would start cold
        yield sandbox
    finally:
        await sandbox.close()
    assert sandbox.pool is not None
    assert sandbox.pool.free_count == len(sandbox.pool.slices)
    assert all(s.pids() == [] for s in sandbox.pool.slices)
    assert files_in(tmp_path / "runtime") == []
    assert workerd_pids_referencing(tmp_path / "runtime") == []


def _warm(sandbox: Sandbox) -> WarmPool:
    assert sandbox.warm is not None
    return sandbox.warm


def _spy_on_take(warm: WarmPool, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the pid of every process handed to a job (the real ``take`` still does the work)."""
    taken: list[int] = []
    real_take = warm.take

    def take(key: bytes | None = None) -> WarmWorker | None:
        worker = real_take(key)
        if worker is not None:
            taken.append(worker.proc.pid)
        return worker

    monkeypatch.setattr(warm, "take", take)
    return taken


# --- the frame (pure) -----------------------------------------------------------------------


def test_frame_carries_lengths_then_the_bytes_verbatim() -> None:
    code = b'export default {}; // "\x00 \xff'
    frame = encode_frame(code, b"in\x00put", b"\x00sec")
    header = len(code).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert frame == header + code + b"\x00sec" + b"in\x00put"
    no_secret = encode_frame(code, b"", None)
    assert no_secret[4:8] == NO_SECRET.to_bytes(4, "big")
    assert encode_frame(code, b"", b"")[4:8] == bytes(4)  # an empty secret is still a secret


def test_verdict_header_values() -> None:
    assert Verdict.from_header("responded") is Verdict.RESPONDED
    assert Verdict.from_header("start-syntax") is Verdict.START_SYNTAX
    with pytest.raises(SandboxError, match="carries no verdict"):
        Verdict.from_header(None)  # the loader itself failed: workerd's bare 500
    for bad in ("ok", "", "Responded"):
        with pytest.raises(SandboxError, match="unknown loader verdict"):
            Verdict.from_header(bad)


# --- arming, one process per job ------------------------------------------------------------


async def test_every_slice_is_armed_and_re_armed_after_each_job(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _warm(sandbox)
    await eventually(lambda: warm.ready_count == 2)
    taken = _spy_on_take(warm, monkeypatch)
    seen: set[int] = set(warm.ready_pids())
    for i in range(5):
        outcome = await sandbox.execute(ECHO_JS, b"%d" % i, deadline_ms=5000, label=f"w{i}")
        assert outcome.output == b"echo:%d" % i
        assert not pid_alive(taken[-1])  # killed as soon as its one job was done
        await eventually(lambda: warm.ready_count == 2)  # and its slice armed again
        seen.update(warm.ready_pids())
    assert len(taken) == 5
    assert len(set(taken)) == 5  # never the same process twice
    assert len(seen) == 2 + 5  # the two first armed, then one new process per job


async def test_concurrent_jobs_never_share_a_process(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _warm(sandbox)
    taken = _spy_on_take(warm, monkeypatch)
    outcomes = await asyncio.gather(
        *(sandbox.execute(ECHO_JS, b"%d" % i, deadline_ms=10_000) for i in range(6))
    )
    assert [o.output for o in outcomes] == [b"echo:%d" % i for i in range(6)]
    assert len(taken) == len(set(taken))
    # The first two took the armed processes; the others took freed slices as they came (a
    # cold start, cheaper than arming then loading while jobs queue).
    assert len(taken) >= 2


async def test_arming_waits_while_jobs_run_and_until_they_pause(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs first: no start-up competes with running jobs for the CPU (a burst would pay for the
    next burst's preparation), and none starts the moment a job ends (the next job of the same
    block is probably on its way)."""
    warm = _warm(sandbox)
    monkeypatch.setattr(warm, "busy_jobs", 1)  # as if this machine had one core
    monkeypatch.setattr(warm, "quiet_s", 0.6)
    taken = _spy_on_take(warm, monkeypatch)
    hanging = asyncio.ensure_future(sandbox.execute(HANG_JS, b"", deadline_ms=30_000))
    await eventually(lambda: len(taken) == 1)
    quick = await sandbox.execute(ECHO_JS, b"q", deadline_ms=5000)  # the other armed slice
    assert quick.output == b"echo:q" and len(taken) == 2
    await asyncio.sleep(1.5)  # well past the pause: still one job running, so nothing is armed
    assert (warm.ready_count, warm.idle_count) == (0, 0)
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    await asyncio.sleep(0.3)  # nothing runs now, but the jobs paused only 0.3 s ago
    assert warm.idle_count == 0
    await eventually(lambda: warm.ready_count == 2)


async def test_the_job_request_reuses_the_warm_up_connection_while_it_is_fresh(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up's connection carries the job's request if it has been idle under REUSE_S (one
    connect less on the job's path); a stale or closed one is never used: a new one is opened."""
    warm = _warm(sandbox)
    await eventually(lambda: warm.ready_count == 2)
    opened: list[int] = []
    real_open = asyncio.open_connection

    async def counting_open(host: str, port: int, **kwargs: object) -> object:
        opened.append(port)
        return await real_open(host, port, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "open_connection", counting_open)
    await asyncio.sleep(0.3)  # no job was started just now: the slices stay armed
    assert (await sandbox.execute(ECHO_JS, b"a", deadline_ms=5000)).output == b"echo:a"
    assert opened == []  # the kept connection carried it
    monkeypatch.setattr(warm_module, "REUSE_S", 0.0)  # every kept connection is stale now
    assert (await sandbox.execute(ECHO_JS, b"b", deadline_ms=5000)).output == b"echo:b"
    assert len(opened) == 1
    monkeypatch.setattr(warm_module, "REUSE_S", 60.0)
    await eventually(lambda: warm.ready_count == 2)
    for worker in list(warm._ready):  # as if the loader had closed them
        assert worker.connection is not None
        worker.connection.writer.close()
    opened.clear()  # (arming opened the warm-ups' connections meanwhile)
    assert (await sandbox.execute(ECHO_JS, b"c", deadline_ms=5000)).output == b"echo:c"
    assert len(opened) == 1


async def test_a_secret_never_outlives_its_job(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "secrets" / "5.bin").write_bytes(b"five")
    with_secret = await sandbox.execute(SECRET_JS, b"", deadline_ms=5000, secret_id=5)
    assert with_secret.output == b"five"
    # The next jobs (on the re-armed slices, whichever they get) see no secret at all.
    probe = b"export default { async fetch(r, env) { return new Response(String(env.secret)); } };"
    for _ in range(3):
        outcome = await sandbox.execute(probe, b"", deadline_ms=5000)
        assert outcome.output == b"undefined"


async def test_cancelled_job_kills_its_process_and_the_slice_is_re_armed(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = _warm(sandbox)
    await eventually(lambda: warm.ready_count == 2)
    taken = _spy_on_take(warm, monkeypatch)
    job = asyncio.ensure_future(sandbox.execute(HANG_JS, b"", deadline_ms=30_000))
    await eventually(lambda: len(taken) == 1)
    await asyncio.sleep(0.2)  # the request is in, hanging
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not pid_alive(taken[0])
    await eventually(lambda: warm.ready_count == 2)
    assert taken[0] not in warm.ready_pids()
    # the fixture's teardown: every slice released and empty after close, no files, no workerd


async def test_deadline_on_the_warm_path_kills_the_process(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _spy_on_take(_warm(sandbox), monkeypatch)
    outcome = await sandbox.execute(HANG_JS, b"", deadline_ms=1500)
    assert (outcome.error_code, outcome.total_time_ms) == (ErrorCode.DEADLINE_EXCEEDED, 1500)
    assert len(taken) == 1 and not pid_alive(taken[0])


async def test_warm_workers_setting_limits_the_armed_slices(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = _sandbox(parent, tmp_path, 1, workerd_bin_or_skip())
    sandbox.start()
    try:
        warm = _warm(sandbox)
        assert warm.target == 1
        await eventually(lambda: warm.ready_count == 1)
        taken = _spy_on_take(warm, monkeypatch)
        # Two at once: one takes the armed slice, the other starts cold in the free one.
        both = await asyncio.gather(
            sandbox.execute(ECHO_JS, b"a", deadline_ms=10_000),
            sandbox.execute(ECHO_JS, b"b", deadline_ms=10_000),
        )
        assert [o.output for o in both] == [b"echo:a", b"echo:b"]
        assert len(taken) == 1
    finally:
        await sandbox.close()
    assert sandbox.pool is not None and sandbox.pool.free_count == 2


def _as_the_daemon_runs_it(parent: Path, tmp_path: Path) -> Sandbox:
    """A started sandbox of warm slices without ``complete_logs``, as the daemon runs it."""
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=tmp_path,
        secret_store_path=tmp_path,
        pool=SlicePool.discover(parent),
        warm_workers=None,
        complete_logs=False,
    )
    sandbox.start()
    return sandbox


async def test_without_complete_logs_the_outcome_comes_before_the_clean_up(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = _as_the_daemon_runs_it(parent, tmp_path)
    try:
        await eventually(lambda: _warm(sandbox).ready_count == 2)
        taken = _spy_on_take(_warm(sandbox), monkeypatch)
        outcome = await sandbox.execute(ECHO_JS, b"quick", deadline_ms=5000)
        assert outcome.output == b"echo:quick"
        assert len(taken) == 1
        await eventually(lambda: not pid_alive(taken[0]))  # killed, then reaped in the background
        await eventually(lambda: _warm(sandbox).ready_count == 2)
    finally:
        await sandbox.close()
    assert files_in(tmp_path) == []


async def test_the_kill_comes_after_the_answer_and_close_does_not_wait_for_it(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the daemon runs it: the used process is killed RETIRE_AFTER_S after the answer (its
    # teardown would compete with the output's sending), never left behind by a close.
    sandbox = _as_the_daemon_runs_it(parent, tmp_path)
    try:
        warm = _warm(sandbox)
        await eventually(lambda: warm.ready_count == 2)
        taken = _spy_on_take(warm, monkeypatch)
        events: list[str] = []
        real_kill = warm.kill

        def kill(worker: WarmWorker) -> None:
            events.append(f"kill {worker.proc.pid}")
            real_kill(worker)

        monkeypatch.setattr(warm, "kill", kill)
        first = await sandbox.execute(ECHO_JS, b"1", deadline_ms=5000)
        events.append("answered")
        assert first.output == b"echo:1"
        await eventually(lambda: not pid_alive(taken[0]), within_s=2)
        assert events[:2] == ["answered", f"kill {taken[0]}"]
        await eventually(lambda: warm.ready_count == 2)
        second = await sandbox.execute(ECHO_JS, b"2", deadline_ms=5000)
        assert second.output == b"echo:2"
        assert f"kill {taken[1]}" not in events  # not yet: close must not leave it behind
    finally:
        await sandbox.close()
    assert f"kill {taken[1]}" in events and not pid_alive(taken[1])
    assert sandbox.pool is not None and sandbox.pool.free_count == 2
    assert workerd_pids_referencing(tmp_path) == [] and files_in(tmp_path) == []


async def test_zero_warm_workers_is_the_cold_path(parent: Path, tmp_path: Path) -> None:
    sandbox = _sandbox(parent, tmp_path, 0, workerd_bin_or_skip())
    sandbox.start()
    assert sandbox.warm is None
    assert (await sandbox.execute(ECHO_JS, b"c", deadline_ms=5000)).output == b"echo:c"
    await sandbox.close()


async def test_two_pools_of_equally_numbered_slices_share_a_host_without_port_clashes(
    parent: Path, tmp_path: Path
) -> None:
    # A daemon and a test suite (or `oyster-executor run`) on one host, each with its workerd_1..2:
    # slices own no port, so both arm every slice and serve jobs at once.
    workerd = workerd_bin_or_skip()
    with slice_parent(count=2) as other_parent:
        first = _sandbox(parent, tmp_path / "a", None, workerd)
        second = _sandbox(other_parent, tmp_path / "b", None, workerd)
        first.start()
        second.start()
        try:
            await eventually(lambda: _warm(first).ready_count == _warm(second).ready_count == 2)
            ports = set(_warm(first).ready_ports()) | set(_warm(second).ready_ports())
            assert len(ports) == 4
            outcomes = await asyncio.gather(
                *(sb.execute(ECHO_JS, b"p", deadline_ms=5000) for sb in (first, second) * 2)
            )
            assert [o.output for o in outcomes] == [b"echo:p"] * 4
            assert first.runs["warm"] == second.runs["warm"] == 2
        finally:
            await first.close()
            await second.close()


# --- fallback -------------------------------------------------------------------------------


async def test_falls_back_to_cold_when_the_loader_cannot_start(
    parent: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A workerd that refuses --experimental, as an older or differently built binary would.
    real = workerd_bin_or_skip()
    fake = tmp_path / "workerd-without-loader"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = --experimental ] && '
        '{ echo "unknown option --experimental" >&2; exit 1; }; done\n'
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    sandbox = _sandbox(parent, tmp_path, None, fake)
    with caplog.at_level(logging.INFO, logger="executor.sandbox.warm"):
        sandbox.start()
        try:
            outcome = await sandbox.execute(ECHO_JS, b"cold", deadline_ms=10_000)
            assert outcome.output == b"echo:cold"
            await eventually(lambda: _warm(sandbox).available is False)
            again = await sandbox.execute(ECHO_JS, b"again", deadline_ms=10_000)
            assert again.output == b"echo:again"
        finally:
            await sandbox.close()
    assert "warm slices UNAVAILABLE, every job runs cold" in caplog.text
    assert "unknown option --experimental" in caplog.text
    assert files_in(tmp_path / "runtime") == []


# Counts how often this module's top level ran in its isolate, and answers with the count and
# the secret: a pre-loaded isolate ran it once, before the job, exactly as a cold start would.
PRELOAD_JS = b"""
globalThis.loads = (globalThis.loads || 0) + 1;
export default {
  async fetch(request, env) {
    const secret = env.secret ? new TextDecoder().decode(env.secret) : "none";
    return new Response("loads=" + globalThis.loads + " secret=" + secret);
  }
};
"""


async def test_the_last_code_is_preloaded_for_its_next_job_and_only_for_it(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "secrets" / "7.bin").write_bytes(b"seven")
    (tmp_path / "secrets" / "8.bin").write_bytes(b"eight")
    warm = _warm(sandbox)
    taken = _spy_on_take(warm, monkeypatch)
    for _ in range(2):  # a code that ran twice in a row is pre-loaded
        first = await sandbox.execute(PRELOAD_JS, b"", deadline_ms=5000, secret_id=7)
        assert first.output == b"loads=1 secret=seven"
    await eventually(lambda: any(w.preloaded is not None for w in warm._ready))
    preloaded = {w.proc.pid for w in warm._ready if w.preloaded is not None}
    # Another secret, then another code: never a process pre-loaded with something else.
    for _ in range(2):
        other_secret = await sandbox.execute(PRELOAD_JS, b"", deadline_ms=5000, secret_id=8)
        assert other_secret.output == b"loads=1 secret=eight"
        assert taken[-1] not in preloaded
    await eventually(lambda: any(w.preloaded is not None for w in warm._ready))
    preloaded = {w.proc.pid for w in warm._ready if w.preloaded is not None}
    other_code = await sandbox.execute(ECHO_JS, b"x", deadline_ms=5000)
    assert other_code.output == b"echo:x" and taken[-1] not in preloaded
    # The same code and secret again: its pre-loaded process, top level run once, before it.
    for _ in range(2):
        await sandbox.execute(PRELOAD_JS, b"", deadline_ms=5000, secret_id=8)
    await eventually(lambda: any(w.preloaded is not None for w in warm._ready))
    hits = sandbox.preloaded_runs
    preloaded = {w.proc.pid for w in warm._ready if w.preloaded is not None}
    again = await sandbox.execute(PRELOAD_JS, b"", deadline_ms=5000, secret_id=8)
    assert again.output == b"loads=1 secret=eight"
    assert taken[-1] in preloaded and sandbox.preloaded_runs == hits + 1


async def test_a_keeper_that_dies_is_restarted_and_arms_again(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the keeper used to end it silently: every later job then ran cold."""
    warm = _warm(sandbox)
    real = warm._should_arm
    broken = [True]

    def should_arm_once_broken() -> bool:
        if broken and broken.pop():
            raise RuntimeError("a bug in the keeper")
        return real()

    monkeypatch.setattr(warm, "_should_arm", should_arm_once_broken)
    with caplog.at_level(logging.ERROR):
        outcome = await sandbox.execute(ECHO_JS, b"k", deadline_ms=5000)
        assert outcome.output == b"echo:k"
        await eventually(lambda: not broken)  # the keeper woke up and failed
        await eventually(lambda: warm.ready_count == 2)  # restarted: the slice armed again
    assert any("a bug in the keeper" in r.getMessage() for r in caplog.records)
