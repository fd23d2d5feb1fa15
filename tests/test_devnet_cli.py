"""``oyster-devnet up`` then ``oyster-devnet job``, as a dApp author runs them, end to end.

Three executors (real daemons in their own cgroup slices, or unconfined where slices cannot be
made), two selected per job: both selected executors answer the job on chain, and Ctrl-C stops
everything ``up`` started.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from oyster_devnet.network import NetworkState
from tests.node_helpers import wait_until

pytestmark = [pytest.mark.chain, pytest.mark.workerd, pytest.mark.xdist_group("devnet")]

CODE = """
export default {
  async fetch(request) {
    const { n } = await request.json();
    return new Response(JSON.stringify({ square: n * n }));
  }
};
"""


async def devnet_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "oyster_devnet.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_up_then_job_is_answered_by_both_selected_executors(tmp_path: Path) -> None:
    state_file = tmp_path / "devnet.json"
    up = await devnet_cli(
        "up", "--executors", "3", "--selected", "2", "--state-file", str(state_file),
        "--logs-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    try:
        await wait_until(state_file.is_file, timeout=90, what="`oyster-devnet up` to be ready")
        state = NetworkState.read(state_file)
        assert len(state.executors) == 3 and state.num_selected_executors == 2

        code = tmp_path / "square.js"
        code.write_text(CODE)
        job = await devnet_cli(
            "job", str(code), "--input", '{"n": 12}', "--state-file", str(state_file)
        )
        out, _ = await asyncio.wait_for(job.communicate(), 60)
        text = out.decode()
        assert job.returncode == 0, text
        answered = r"JobResponded job \d+ executor (0x[0-9a-fA-F]{40}) error_code 0"
        answers = re.findall(answered, text)
        assert len(answers) == 2 and len(set(answers)) == 2, text
        assert set(answers) <= {e.enclave_address for e in state.executors}
        assert text.count('output: {"square":144}') == 2, text
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(up.communicate(), 60)
    text = out.decode()
    assert up.returncode == 0, text
    for expected in ("RPC (HTTP)", "Jobs ", "TeeManager ", "UserCode ", "funded test accounts"):
        assert expected in text
    assert "-- stopped" in text
    assert not state_file.exists()
    parents = [e.cgroup_parent for e in state.executors if e.cgroup_parent]
    assert not any(map(os.path.exists, parents))  # slices removed


LOGGING_CODE = """
export default {
  async fetch(request) {
    const { n } = await request.json();
    console.log("squaring " + n);
    return new Response(String(n * n));
  }
};
"""
THROWING_CODE = "throw new Error('broken at the top level'); export default {};"


async def test_the_devnet_explains_what_happened(tmp_path: Path) -> None:
    """Inputs from a file, concurrent jobs, what the code printed, why a job got no answer (at
    once, not after the window), and logs kept after exit in the folder named at start."""
    state_file, logs = tmp_path / "devnet.json", tmp_path / "logs"
    up = await devnet_cli(
        "up", "--executors", "2", "--state-file", str(state_file), "--logs-dir", str(logs)
    )
    try:
        await wait_until(state_file.is_file, timeout=90, what="`oyster-devnet up` to be ready")
        code, bad, inputs = tmp_path / "log.js", tmp_path / "bad.js", tmp_path / "in.json"
        code.write_text(LOGGING_CODE)
        bad.write_text(THROWING_CODE)
        inputs.write_text('{"n": 7}')

        jobs = [
            await devnet_cli("job", str(code), "--input", f"@{inputs}", "--state-file",
                             str(state_file))
            for _ in range(3)
        ]  # fmt: skip
        results = await asyncio.gather(*(asyncio.wait_for(j.communicate(), 60) for j in jobs))
        for job, (out, _) in zip(jobs, results, strict=True):
            text = out.decode()
            assert job.returncode == 0, text
            # 2 slices per executor: like production's createJob, the devnet selects only
            # executors with a free slot, so the third of three concurrent jobs may get one
            selected = re.search(r"selected executors: (.*)", text)
            assert selected is not None, text
            count = len(selected.group(1).split(","))
            assert text.count("output: 49") == count >= 1, text
            assert "console: squaring 7" in text, text
            assert "Traceback" not in text and "nonce" not in text, text

        started = time.monotonic()
        job = await devnet_cli(
            "job", str(bad), "--deadline-ms", "20000", "--state-file", str(state_file)
        )
        out, _ = await asyncio.wait_for(job.communicate(), 60)
        text = out.decode()
        assert job.returncode == 1, text
        assert "2 selected executor(s) did not answer" in text, text
        assert text.count("broken at the top level") >= 2, text
        # not after the job's window: its deadline (20 s) plus the execution buffer (10 s)
        assert time.monotonic() - started < 20, text
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(up.communicate(), 60)
    text = out.decode()
    assert up.returncode == 0, text
    assert f"logs are kept in {logs}" in text, text
    kept = sorted(p.name for p in logs.iterdir())
    assert kept == ["executor-1.log", "executor-2.log"]
    assert "console: squaring 7" in (logs / "executor-1.log").read_text()


async def test_job_without_a_running_network_says_so(tmp_path: Path) -> None:
    code = tmp_path / "x.js"
    code.write_text(CODE)
    job = await devnet_cli("job", str(code), "--state-file", str(tmp_path / "none.json"))
    out, _ = await job.communicate()
    assert job.returncode == 1
    assert "no running network" in out.decode() and "oyster-devnet up" in out.decode()


async def test_up_rejects_bad_counts() -> None:
    up = await devnet_cli("up", "--executors", "2", "--selected", "3")
    out, _ = await up.communicate()
    assert up.returncode == 2
    assert "--selected must be between 1 and --executors" in out.decode()
