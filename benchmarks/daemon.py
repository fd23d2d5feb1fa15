"""The daemon under benchmark: a real ``oyster-executor serve`` subprocess, its memory, its log, and
an optional py-spy profile of it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

from oyster_devnet.accounts import DevAccount
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register, write_node_files
from oyster_devnet.tools import free_port


@dataclass
class DaemonProcess:
    pid: int
    files: NodeFiles
    log_file: Path
    metrics_url: str

    async def sandbox_runs(self) -> dict[str, int]:
        """Executions so far by sandbox path (warm, cold), from the daemon's metrics."""
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url) as response:
            text = await response.text()
        found = re.findall(
            r'^oyster_executor_sandbox_runs_total\{path="(\w+)"\} (\S+)$', text, re.M
        )
        return {path: int(float(value)) for path, value in found}

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def wait_for_log(self, needle: str, timeout_s: float = 30) -> None:
        give_up = time.monotonic() + timeout_s
        while needle not in self.log_text():
            if time.monotonic() > give_up:
                tail = "\n".join(self.log_text().splitlines()[-15:])
                raise RuntimeError(f"daemon never logged {needle!r}; log tail:\n{tail}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_daemon(
    folder: Path,
    anvil: AnvilNode,
    devnet: Devnet,
    *,
    cgroup_parent: Path,
    warm_workers: int | None,
    owner: DevAccount,
    gas: DevAccount,
) -> AsyncIterator[DaemonProcess]:
    """A registered daemon (its own fresh enclave key) serving jobs until the block exits."""
    files = write_node_files(folder, anvil, devnet)
    config = json.loads(files.config_file.read_text())
    config["warm_workers"] = warm_workers
    files.config_file.write_text(json.dumps(config, indent=2) + "\n")
    port, metrics_port = free_port(), free_port()
    log_file = folder / "daemon.log"
    cmd = [sys.executable, "-m", "executor", "--log-level", "INFO", "serve"]
    cmd += ["--tcp-addr", f"127.0.0.1:{port}", "--config-file", str(files.config_file)]
    cmd += ["--metrics-addr", f"127.0.0.1:{metrics_port}"]
    cmd += ["--cgroup-parent", str(cgroup_parent), "--shutdown-grace", "5"]
    with log_file.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
    daemon = DaemonProcess(proc.pid, files, log_file, f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        await init_and_register(f"http://127.0.0.1:{port}/", devnet, owner=owner, gas=gas)
        await daemon.wait_for_log("registered on chain")
        if warm_workers != 0:
            await daemon.wait_for_log("warm slices available")
        yield daemon
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def py_spy(pid: int, output: Path) -> AsyncIterator[None]:
    """Sample ``pid`` with py-spy (raw collapsed stacks) for the duration of the block."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable.replace("/python", "/py-spy"),
        "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
        "--output", str(output), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode not in (0, -signal.SIGINT):
            print(f"(py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]})")


def profile_summary(raws: list[Path], top: int = 12) -> list[str]:
    """Markdown: where the daemon's busy samples go, from py-spy's raw (collapsed) outputs: its own
    functions by inclusive share, and every function by self share with the daemon's function it
    mostly ran under."""
    lines_in = [line for raw in raws if raw.exists() for line in raw.read_text().splitlines()]
    if not lines_in:
        return ["(no profile)"]
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    ours_above: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in lines_in:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
            caller = next((f for f in reversed(frames) if "(executor/" in f), "(not ours)")
            ours_above[frames[-1]][caller] += count
    if total == 0:
        return ["(no samples)"]
    ours = [(n, c) for n, c in inclusive.most_common() if "(executor/" in n]
    lines = [f"{total} samples of the daemon's busy threads (py-spy, 250 Hz, idle excluded)", ""]
    lines += ["| the daemon's functions | inclusive |", "|---|---:|"]
    lines += [f"| `{name}` | {100 * n / total:.0f}% |" for name, n in ours[:top]]
    lines += ["", "| any function | self | mostly under (the daemon's nearest function) |"]
    lines += ["|---|---:|---|"]
    for name, n in own.most_common(top):
        caller, _ = ours_above[name].most_common(1)[0]
        lines.append(f"| `{name}` | {100 * n / total:.0f}% | `{caller}` |")
    return lines


def _frame_name(frame: str) -> str:
    # "function (/path/to/file.py:123)" -> "function (executor/x/file.py)" or "(package/file.py)"
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    function, path = m.groups()
    if "/executor/" in "/" + path:
        short = "executor/" + ("/" + path).rsplit("/executor/", 1)[1]
    elif "site-packages/" in path:
        short = path.rsplit("site-packages/", 1)[1]
    else:
        short = Path(path).name
    return f"{function} ({short})"


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+\s+\S+: job (\d+)(.*)$")


_SENT = re.compile(r" output: nonce \d+: sent tx")
_MINED = re.compile(r" output: nonce \d+: tx \S+ mined")


def outcome_times(log_text: str, job_ids: list[int]) -> dict[int, float]:
    """Wall time at which the daemon sent each job's output transaction (its outcome signed)."""
    wanted = set(job_ids)
    found: dict[int, float] = {}
    for line in log_text.splitlines():
        m = _LOG_LINE.match(line)
        if m and int(m.group(2)) in wanted and _SENT.match(m.group(3)):
            found.setdefault(int(m.group(2)), _log_time(m.group(1)))
    return found


def _log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def job_phases(
    log_text: str, sent_wall: dict[int, float], arrived_wall: dict[int, float]
) -> dict[str, float]:
    """Median ms of each phase of the given jobs, from the daemon's INFO log and our clocks."""
    seen: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for line in log_text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        when = _log_time(m.group(1))
        job_id, rest = int(m.group(2)), m.group(3)
        if rest.startswith(": selected"):
            seen[job_id]["selected"] = when
        elif _SENT.match(rest):
            seen[job_id].setdefault("outcome", when)
        elif _MINED.match(rest):
            seen[job_id]["accepted"] = when
        elif rest.startswith(": done in"):
            total = re.search(r"total_time=(\d+)ms", rest)
            if total:
                seen[job_id]["execute_ms"] = float(total.group(1))
    phases: dict[str, list[float]] = collections.defaultdict(list)
    for job_id, sent in sent_wall.items():
        marks = seen.get(job_id, {})
        if not {"selected", "outcome", "accepted", "execute_ms"} <= marks.keys():
            continue
        phases["createJob sent -> daemon selected it"].append(1000 * (marks["selected"] - sent))
        phases["selected -> output tx sent, less total_time (signing, queueing)"].append(
            1000 * (marks["outcome"] - marks["selected"]) - marks["execute_ms"]
        )
        phases["total_time: code fetch + sandbox (job clock)"].append(marks["execute_ms"])
        phases["output tx sent -> seen mined by the daemon"].append(
            1000 * (marks["accepted"] - marks["outcome"])
        )
        if job_id in arrived_wall:
            phases["output tx sent -> JobResponded at the user"].append(
                1000 * (arrived_wall[job_id] - marks["outcome"])
            )
    return {name: statistics.median(values) for name, values in phases.items()}
