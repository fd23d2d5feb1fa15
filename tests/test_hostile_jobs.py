"""Jobs written to exhaust the host, on real workerd in real cgroup slices, on both paths.

A job that exhausts its memory gets the original executor's deterministic answer (errorCode 0,
``Internal Server Error``) decided from evidence the job cannot fake; a workerd that dies without
such evidence is a host fault (``WorkerdCrashError``, nothing submitted); workerd runs at a lower
scheduling priority than the daemon. Memory is sampled from ``/proc`` while the jobs run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from executor.errors import SandboxError, WorkerdCrashError
from executor.outcome import ErrorCode
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.core import LONG_JOB_NICE
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.warm import WarmWorker
from executor.sandbox.workerd import ARM_NICE, job_nice
from tests.sandbox_helpers import (
    ECHO_JS,
    HANG_JS,
    eventually,
    slice_parent,
    workerd_bin_or_skip,
    workerd_pids_referencing,
)

HEAP_BLOAT_JS = b"""
export default {
  async fetch() {
    const keep = [];
    for (;;) keep.push(new Array(1 << 16).fill(keep.length));
  }
};
"""
BUFFER_BLOAT_JS = b"""
export default {
  async fetch() {
    const keep = [];
    for (;;) { const a = new Uint8Array(1 << 20); a.fill(1); keep.push(a); }
  }
};
"""
TOP_LEVEL_BLOAT_JS = b"""
const keep = [];
for (;;) keep.push(new Array(1 << 16).fill(keep.length));
export default {};
"""
TOP_LEVEL_BUFFER_BLOAT_JS = b"""
const keep = [];
for (;;) { const a = new Uint8Array(1 << 20); a.fill(1); keep.push(a); }
export default {};
"""
# Prints what a dying workerd prints, then answers: its own words decide nothing.
FAKE_REPORT_JS = b"""
export default {
  async fetch() {
    console.error("workerd/jsg/setup.c++:44: fatal: V8 fatal error; location = Reached heap " +
      "limit; message = : allocation failed: JavaScript heap out of memory\\n" +
      "*** Received signal #6: Aborted\\nstack: ");
    console.error("\\n#\\n# Fatal process out of memory: fake\\n#\\n");
    return new Response("still here");
  }
};
"""
# Prints all three reports a dying workerd prints, then hangs until something kills it.
FAKE_REPORT_THEN_HANG_JS = b"""
export default {
  async fetch() {
    console.error("Unable to allocate 4096 (new failed)");
    console.error("workerd/jsg/setup.c++:44: fatal: V8 fatal error; location = Reached heap " +
      "limit; message = : allocation failed: JavaScript heap out of memory\\n" +
      "*** Received signal #6: Aborted\\nstack: ");
    console.error("\\n#\\n# Fatal process out of memory: fake\\n#\\n");
    await new Promise(() => setInterval(() => {}, 1000));
    return new Response("unreachable");
  }
};
"""
PEAK_RSS_LIMIT_KB = 300 * 1024


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=3) as path:
        yield path


@pytest.fixture(params=["cold", "warm"])
async def sandbox(
    parent: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Sandbox]:
    runtime, store = tmp_path / "runtime", tmp_path / "secrets"
    runtime.mkdir()
    store.mkdir()
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=runtime,
        secret_store_path=store,
        pool=SlicePool.discover(parent),
        warm_workers=None if request.param == "warm" else 0,
    )
    sandbox.start()
    if sandbox.warm is not None:
        await eventually(lambda: sandbox.warm is not None and sandbox.warm.ready_count == 3)
    try:
        yield sandbox
    finally:
        await sandbox.close()
    assert workerd_pids_referencing(runtime) == []


class PeakRss:
    """Samples the peak RSS (``VmHWM``) of every workerd running in ``runtime`` from a thread."""

    def __init__(self, runtime: Path) -> None:
        self._runtime = runtime
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in workerd_pids_referencing(self._runtime):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))
            self._stop.wait(0.002)


def _thread_nices(pid: int) -> dict[str, int]:
    """The nice value of every thread of ``pid`` (field 19 of its ``stat``)."""
    nices = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            nices[task.name] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return nices


def _runtime(sandbox: Sandbox) -> Path:
    return sandbox._runtime_path


@pytest.mark.parametrize("code", [HEAP_BLOAT_JS, BUFFER_BLOAT_JS, TOP_LEVEL_BLOAT_JS])
async def test_two_memory_bloating_jobs_at_once_answer_internal_server_error(
    sandbox: Sandbox, code: bytes
) -> None:
    with PeakRss(_runtime(sandbox)) as rss:
        outcomes = await asyncio.gather(
            *(sandbox.execute(code, b"", deadline_ms=10_000, label=str(i)) for i in range(2))
        )
    for outcome in outcomes:
        assert (outcome.error_code, outcome.output) == (ErrorCode.OK, b"Internal Server Error")
        assert outcome.total_time_ms < 10_000
    # What the processes of the two jobs held at most, each sampled at its peak.
    assert rss.peaks, "no workerd was sampled"
    assert sum(sorted(rss.peaks.values())[-2:]) < PEAK_RSS_LIMIT_KB, rss.peaks
    following = await sandbox.execute(ECHO_JS, b"next", deadline_ms=5000)
    assert (following.error_code, following.output) == (ErrorCode.OK, b"echo:next")


async def test_top_level_buffers_are_bounded_too(sandbox: Sandbox) -> None:
    # Refused by RLIMIT_DATA, the allocation throws a RangeError at the top level: a start
    # failure like any top-level throw (no submission), as a cold workerd has it; where the slice
    # has a memory controller its OOM kill comes first (answered Internal Server Error).
    with PeakRss(_runtime(sandbox)) as rss:
        outcomes = await asyncio.gather(
            *(sandbox.execute(TOP_LEVEL_BUFFER_BLOAT_JS, b"", deadline_ms=10_000) for _ in "ab"),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, SandboxError), outcome
            # a start failure: workerd's report is the RangeError, or (seen under load) a fatal
            # allocator error whose stack trace ends stderr
            assert "before listening" in str(outcome), outcome
        else:
            assert (outcome.error_code, outcome.output) == (ErrorCode.OK, b"Internal Server Error")
    assert sum(sorted(rss.peaks.values())[-2:]) < PEAK_RSS_LIMIT_KB, rss.peaks
    following = await sandbox.execute(ECHO_JS, b"next", deadline_ms=5000)
    assert following.output == b"echo:next"


async def test_a_job_printing_an_out_of_memory_report_is_answered_as_it_answers(
    sandbox: Sandbox,
) -> None:
    outcome = await sandbox.execute(FAKE_REPORT_JS, b"", deadline_ms=5000)
    assert (outcome.error_code, outcome.output) == (ErrorCode.OK, b"still here")


async def test_workerd_dying_without_evidence_is_a_crash_not_an_answer(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job prints every out-of-memory report and hangs; something outside (a host fault)
    # kills its workerd: the reports were the job's words, not the way workerd ended.
    started: list[int] = []
    if sandbox.warm is not None:
        take = sandbox.warm.take

        def spy(key: bytes | None = None) -> WarmWorker | None:
            worker = take(key)
            if worker is not None:
                started.append(worker.proc.pid)
            return worker

        monkeypatch.setattr(sandbox.warm, "take", spy)
    job = asyncio.ensure_future(sandbox.execute(FAKE_REPORT_THEN_HANG_JS, b"", deadline_ms=10_000))
    runtime = _runtime(sandbox)
    if sandbox.warm is None:
        await eventually(lambda: workerd_pids_referencing(runtime))
        started = workerd_pids_referencing(runtime)
    await eventually(lambda: started)
    await asyncio.sleep(0.3)  # the job's request is under way (a quiet period is the point here)
    assert len(started) == 1 and not job.done()
    os.kill(started[0], signal.SIGKILL)
    with pytest.raises(WorkerdCrashError, match="no evidence the job exhausted its memory") as e:
        await job
    assert e.value.reason == "workerd_crashed"


async def test_workerd_runs_at_a_lower_priority_than_the_daemon(sandbox: Sandbox) -> None:
    job = asyncio.ensure_future(sandbox.execute(HANG_JS, b"", deadline_ms=3000))
    runtime = _runtime(sandbox)
    await eventually(lambda: workerd_pids_referencing(runtime))
    assert job_nice() > os.getpriority(os.PRIO_PROCESS, 0) or job_nice() == 19

    def every_thread_nice() -> bool:
        # A warm slice's process waits (and starts) at the lowest priority, a job's at job_nice
        # (set on the process group right after its exec: a start-up instant runs before it).
        waiting = set(sandbox.warm.ready_pids()) if sandbox.warm is not None else set()
        pids = workerd_pids_referencing(runtime)
        return bool(pids) and all(
            set(_thread_nices(pid).values()) == {ARM_NICE if pid in waiting else job_nice()}
            for pid in pids
        )

    await eventually(every_thread_nice, within_s=2)

    def running_long_at_the_lowest() -> bool:
        # Still running after LONG_JOB_S: the job's process drops to LONG_JOB_NICE (19), so a
        # spinner gives way to the short jobs that arrive beside it.
        waiting = set(sandbox.warm.ready_pids()) if sandbox.warm is not None else set()
        busy = [p for p in workerd_pids_referencing(runtime) if p not in waiting]
        return bool(busy) and all(set(_thread_nices(p).values()) == {LONG_JOB_NICE} for p in busy)

    await eventually(running_long_at_the_lowest, within_s=2)
    assert (await job).error_code == ErrorCode.DEADLINE_EXCEEDED


COUNTED_FETCHES_JS = b"""
export default {
  async fetch() {
    const out = [];
    for (let i = 0; i < 3; i++) {
      try { await fetch("http://127.0.0.1:1/"); out.push("ok"); }
      catch (e) { out.push(e.message.startsWith("outbound budget") ? "budget" : "refused"); }
    }
    return new Response(out.join(","));
  }
};
"""


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("binary", [True, False])
async def test_an_outbound_budget_fails_the_fetches_past_it(
    parent: Path, tmp_path: Path, warm: bool, binary: bool
) -> None:
    # Loopback stays refused by workerd's network rules; the third call is past the budget.
    sandbox = Sandbox(
        workerd_bin=workerd_bin_or_skip(),
        runtime_path=tmp_path,
        secret_store_path=tmp_path,
        pool=SlicePool.discover(parent),
        warm_workers=None if warm else 0,
        binary_configs=binary,
        outbound=OutboundBudget(fetches=2),
    )
    sandbox.start()
    try:
        if sandbox.warm is not None:
            await eventually(lambda: sandbox.warm is not None and sandbox.warm.ready_count == 3)
        outcome = await sandbox.execute(COUNTED_FETCHES_JS, b"", deadline_ms=10_000)
        assert outcome.output == b"refused,refused,budget"
        assert sandbox.runs["warm" if warm else "cold"] == 1
    finally:
        await sandbox.close()
