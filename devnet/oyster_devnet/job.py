"""``oyster-devnet job``: one job on a running ``oyster-devnet up`` network, answers as they come.

Stores the code on chain (a UserCode transaction), creates the job as the devnet user account and
prints every selected executor's ``JobResponded`` as it arrives, what the job's code printed, and,
as soon as an executor's log says it will not answer, why. It returns when every selected executor
answered or gave up, or when the job's window (deadline + execution buffer) closed.

Several ``job`` commands may run at once: they send the user's transactions one at a time, under
a lock file beside the state file, so each takes the next nonce.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from eth_utils import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.commands.run import read_input
from executor.outcome import ErrorCode
from oyster_devnet.contracts import Devnet, JobResponse
from oyster_devnet.network import ExecutorInfo, NetworkState, user_account

POLL_S = 0.25
LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+)\s+(?P<logger>\S+): (?P<message>.*)$")
GIVES_UP = ("NOT executed", "not executed:", "output NOT accepted", "output not delivered")
"""What a daemon logs about a job it will not answer (executor.jobs)."""


def show(response: JobResponse) -> str:
    try:
        output = response.output.decode()
    except UnicodeDecodeError:
        output = "0x" + response.output.hex()
    try:
        code = ErrorCode(response.error_code)
        meaning = f" ({code.name}: {code.meaning})" if code else ""
    except ValueError:
        meaning = " (not a protocol error code)"
    return (
        f"JobResponded job {response.job_id} executor {response.executor} "
        f"error_code {response.error_code}{meaning} total_time {response.total_time}ms "
        f"output_count {response.output_count} tx {response.tx_hash}\n  output: {output}"
    )


@dataclass
class LogFollower:
    """The new lines of one executor's log that concern one job."""

    executor: ExecutorInfo
    offset: int
    pending: bytes = b""
    gave_up: str | None = None
    seen: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, executor: ExecutorInfo) -> LogFollower:
        try:
            offset = Path(executor.log_file).stat().st_size
        except OSError:
            offset = 0
        return cls(executor, offset)

    def lines_about(self, job_id: int) -> Iterator[tuple[str, str]]:
        """(level, message) of every complete new line about ``job_id``."""
        try:
            with open(self.executor.log_file, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except OSError:
            return
        self.offset += len(data)
        *complete, self.pending = (self.pending + data).split(b"\n")
        marker, suffix = f"job {job_id}:", f" [job {job_id}]"  # how executor.logs labels a line
        for raw in complete:
            match = LOG_LINE.match(raw.decode("utf-8", errors="replace"))
            if match is None:
                continue
            message = match["message"]
            if message.endswith(suffix):
                yield match["level"], message.removesuffix(suffix)
            elif marker in message:
                yield match["level"], message


@asynccontextmanager
async def user_nonce_lock(state_file: Path) -> AsyncIterator[None]:
    """One ``job`` command at a time sends the user's transactions (the nonce's one owner)."""
    lock_path = state_file.with_name(state_file.name + ".lock")
    with lock_path.open("a") as lock:
        await asyncio.to_thread(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


async def run_job(args: argparse.Namespace) -> int:
    state = NetworkState.read(args.state_file)
    inputs = read_input(args.input)
    w3 = AsyncWeb3(AsyncHTTPProvider(state.http_url))
    executors = [*state.executors, *(_own_node(i, p) for i, p in enumerate(args.follow_log))]
    followers = {e.enclave_address: LogFollower.start(e) for e in executors}
    try:
        devnet = await Devnet.attach(
            w3,
            jobs_address=state.jobs_address,
            tee_manager_address=state.tee_manager_address,
            user_code_address=state.user_code_address,
        )
        user = user_account(state)
        async with user_nonce_lock(args.state_file):
            codehash = await devnet.save_code(user, args.code.read_text())
            print(f"code stored in tx {codehash}", flush=True)
            job_id = await devnet.create_job(
                user,
                secret_id=args.secret_id,
                codehash=codehash,
                code_inputs=inputs,
                deadline_ms=args.deadline_ms,
            )
        job = await devnet.job(job_id)
        selected = list(job.selected_executors) if job is not None else []
        print(f"job {job_id} created; selected executors: {', '.join(selected)}", flush=True)
        answered: set[str] = set()
        seen_tx: set[str] = set()
        give_up = time.monotonic() + args.deadline_ms / 1000 + state.execution_buffer_time + 5
        while time.monotonic() < give_up:
            for response in await devnet.job_responses(job_id):
                if response.tx_hash not in seen_tx:
                    seen_tx.add(response.tx_hash)
                    answered.add(response.executor)
                    print(show(response), flush=True)
            for follower in followers.values():
                for level, message in follower.lines_about(job_id):
                    print(_explain(follower.executor, level, message), flush=True)
                    if follower.gave_up is None and any(g in message for g in GIVES_UP):
                        follower.gave_up = message
            gave_up = {a for a, f in followers.items() if f.gave_up is not None}
            if all(s in answered or s in gave_up for s in selected):
                break
            await asyncio.sleep(POLL_S)
    finally:
        await w3.provider.disconnect()
    missing = [s for s in selected if s not in answered]
    if missing:
        reasons = [
            f"  executor {s}: {followers[s].gave_up}"
            for s in missing
            if s in followers and followers[s].gave_up
        ]
        silent = len(missing) - len(reasons)
        print(f"!! {len(missing)} selected executor(s) did not answer:")
        for line in reasons:
            print(line)
        if silent:
            print(
                f"  {silent} of them said nothing in time (see their logs; a node of your own: "
                "--follow-log ITS_LOG)"
            )
        return 1
    return 0


ENCLAVE_LINE = re.compile(rb"enclave address (0x[0-9a-fA-F]{40})")


def _own_node(number: int, log_file: Path) -> ExecutorInfo:
    """An executor not started by ``up`` (``--follow-log``): its enclave address from its log."""
    try:
        with log_file.open("rb") as log:
            match = ENCLAVE_LINE.search(log.read(64 * 1024))
    except OSError as e:
        message = f"oyster-devnet job: cannot read --follow-log {log_file}: {e.strerror}"
        raise SystemExit(message) from None
    address = to_checksum_address(match[1].decode()) if match else f"(unknown: {log_file})"
    return ExecutorInfo(
        index=100 + number,
        enclave_address=address,
        admin_url="",
        folder=str(log_file.parent),
        log_file=str(log_file),
        secret_store_path="",
        cgroup_parent=None,
    )


def _explain(executor: ExecutorInfo, level: str, message: str) -> str:
    """One line of an executor's log about the job, as the job's author reads it."""
    who = (
        f"executor #{executor.index}"
        if executor.index < 100
        else f"node {Path(executor.log_file).name}"
    )
    if "console: " in message:
        return f"  {who} console: {message.split('console: ', 1)[1]}"
    if level in ("WARNING", "ERROR", "CRITICAL"):
        return f"!! {who} {level.lower()}: {message}"
    return f"  {who}: {message}"
