"""``oyster-executor replay JOB_ID``: run a job again, as an enclave ran it, and compare.

It reads the job's ``JobCreated`` from the chain, fetches and verifies its code exactly as the
daemon does (``executor.chain.code``: bytes that do not hash to the codehash are discarded, so a
lying RPC ends in error code 1 just as it would for the daemon), runs it in the same sandbox with
the same inputs and deadline (``run``'s sandbox, production limits by default), prints what an
enclave would sign, then says for every ``JobResponded`` whether it matches (error code and
output; ``totalTime`` is each enclave's own measurement and is not compared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_utils import keccak

from executor.chain.code import CodeFetcher, FetchedCode
from executor.chain.follow import JobRecord, JobResponded, read_job
from executor.chain.rpc import RpcEndpoints
from executor.commands.common import ChainTarget, add_chain_options, chain_target, job_id_arg
from executor.commands.run import (
    MeasuredRun,
    Report,
    add_sandbox_options,
    execute_measured,
    job_sandbox,
)
from executor.outcome import JobOutcome
from executor.sandbox.usage import ProcessUsage

EXECUTOR_ENV = 1
SHOWN_OUTPUT_CHARS = 300

EPILOG = """\
The chain and contracts come from --rpc/--jobs/--code-contract, or from the operator config file
for what those leave out. A job with a secret (secretId != 0) needs --secret-file PATH: the secret
is never fetched from anywhere. A function that reads the clock, randomness or the network may
answer differently on every run: a mismatch then says so about the function, not the enclave.

exit status:
  0  every output on chain matches the replay (or nobody has answered yet)
  1  at least one output on chain differs from the replay
  2  bad usage, unknown job, a secret needed, the chain unreachable, or the sandbox failed
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="run an on-chain job again in the job sandbox and compare it with its outputs",
        description="Read job JOB_ID from the chain, run its verified code in the same sandbox "
        "with the same inputs and deadline, and say whether each output on chain matches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job_id", type=job_id_arg, metavar="JOB_ID", help="the job's id")
    add_chain_options(parser, tee_manager=False)
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="PATH",
        help="the job's secret (offered to the code as env.secret, as an enclave would)",
    )
    add_sandbox_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=replay_command)


@dataclass(frozen=True)
class Comparison:
    response: JobResponded
    problems: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return not self.problems


def replay_command(args: argparse.Namespace) -> int:
    target = chain_target(args, tee_manager=False)
    record, fetched, warnings = asyncio.run(read_and_fetch(target, args.job_id, args.from_block))
    job = record.created
    if job.secret_id != 0 and args.secret_file is None:
        print(
            f"oyster-executor: job {job.job_id} uses secret {job.secret_id}: pass its bytes with "
            "--secret-file PATH to replay it (a secret is never fetched from anywhere)",
            file=sys.stderr,
        )
        return 2
    if job.secret_id == 0 and args.secret_file is not None:
        print("note: this job has no secret: --secret-file is not used", file=sys.stderr)
    run: MeasuredRun | None = None
    limits = None
    if fetched.error is not None:  # what the daemon submits: the error code, no execution
        outcome = JobOutcome.failed(fetched.error, 0)
    else:
        secret = args.secret_file if job.secret_id != 0 else None
        with job_sandbox(args, secret_file=secret) as (sandbox, secret_id, limits):
            run = asyncio.run(
                execute_measured(
                    sandbox,
                    fetched.code,
                    job.code_inputs,
                    job.deadline_ms,
                    secret_id,
                    f"{job.job_id} (replay)",
                )
            )
        outcome = run.outcome
    comparisons = [compare(response, outcome) for response in record.responses]
    if args.json:
        print(json.dumps(_as_json(record, fetched, warnings, outcome, run, comparisons)))
    else:
        print(_as_text(record, fetched, warnings, outcome, run, limits, comparisons))
    return 0 if all(c.matches for c in comparisons) else 1


async def read_and_fetch(
    target: ChainTarget, job_id: int, from_block: int
) -> tuple[JobRecord, FetchedCode, list[str]]:
    """The job's record and its verified code, with what the code fetch warned about."""
    endpoints = RpcEndpoints(target.rpc_urls)
    try:
        record = await read_job(endpoints.w3, target.jobs, job_id, from_block=from_block)
        fetcher = CodeFetcher(endpoints.clients, target.code_contract)
        with _warnings_of("executor.chain.code") as warnings:
            fetched = await fetcher.fetch(record.created.codehash)
        return record, fetched, warnings
    finally:
        await endpoints.close()


@contextlib.contextmanager
def _warnings_of(logger_name: str) -> Iterator[list[str]]:
    """The WARNING+ messages ``logger_name`` logs meanwhile (they still reach the log too)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def compare(response: JobResponded, outcome: JobOutcome) -> Comparison:
    problems = []
    if response.error_code != outcome.error_code:
        problems.append(
            f"error code {response.error_code} on chain, {int(outcome.error_code)} in the replay"
        )
    if response.output != outcome.output:
        problems.append(
            f"output differs: on chain {_describe(response.output)}, replay "
            f"{_describe(outcome.output)}{_first_difference(response.output, outcome.output)}"
        )
    return Comparison(response, tuple(problems))


def _describe(output: bytes) -> str:
    return f"{len(output)} bytes keccak 0x{keccak(output).hex()[:16]}…"


def _first_difference(a: bytes, b: bytes) -> str:
    pairs = enumerate(zip(a, b, strict=False))
    at = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
    return f" (first difference at byte {at})"


def _shown(output: bytes) -> str:
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + output[: SHOWN_OUTPUT_CHARS // 2].hex() + ("…" if len(output) > 150 else "")
    text = text.encode("unicode_escape").decode("ascii")  # one line, control characters visible
    return text[:SHOWN_OUTPUT_CHARS] + ("…" if len(text) > SHOWN_OUTPUT_CHARS else "")


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _as_text(
    record: JobRecord,
    fetched: FetchedCode,
    warnings: list[str],
    outcome: JobOutcome,
    run: MeasuredRun | None,
    limits: Any,
    comparisons: list[Comparison],
) -> str:
    job = record.created
    where = job.position
    lines = [
        f"job {job.job_id}: JobCreated in block {where.block_number} (tx {where.tx_hash}, "
        f"{_when(record.created_at)})",
    ]
    for old in record.superseded:
        lines.append(
            f"  note: the id was also created in block {old.position.block_number} "
            "(an earlier contract state); the latest JobCreated is replayed"
        )
    if job.env != EXECUTOR_ENV:
        lines.append(f"  note: env {job.env}: this executor's env is {EXECUTOR_ENV}")
    lines += [
        f"  owner {job.job_owner}, deadline {job.deadline_ms} ms, inputs {len(job.code_inputs)} "
        f"bytes, secret id {job.secret_id}",
        f"  selected executors: {', '.join(job.selected_executors) or '(none)'}",
    ]
    if fetched.error is None:
        lines.append(
            f"  code: transaction {job.codehash} verified against its hash "
            f"({len(fetched.code)} bytes)"
        )
    else:
        lines.append(f"  code: {fetched.error.meaning} (error code {int(fetched.error)})")
    lines += [f"  code fetch warning: {w}" for w in warnings]
    lines += [
        "replay (what an enclave would sign):",
        f"  error code: {int(outcome.error_code)} ({outcome.error_code.meaning})",
        f"  output: {_describe(outcome.output)}"
        + (f": {_shown(outcome.output)}" if outcome.output else ""),
        f"  total time: {outcome.total_time_ms} ms (each enclave measures its own: not compared)",
    ]
    if run is not None:
        lines += ["  " + line for line in Report(run, limits).report_lines()[:3]]
        if outcome.logs:
            logged = outcome.logs.rstrip("\n").splitlines()
            lines += ["  logs:", *("    " + line for line in logged)]
    lines.append("outputs on chain:")
    if not comparisons:
        lines.append("  (none yet)")
    for c in comparisons:
        r = c.response
        head = (
            f"  {r.executor} (block {r.position.block_number}, tx {r.position.tx_hash}): "
            f"error code {r.error_code}, {len(r.output)} bytes, total time {r.total_time_ms} ms: "
        )
        lines.append(head + ("MATCH" if c.matches else "MISMATCH"))
        lines += [f"    {p}" for p in c.problems]
    answered = {c.response.executor for c in comparisons}
    for executor in job.selected_executors:
        if executor not in answered:
            lines.append(f"  {executor}: no output (yet)")
    matched = sum(c.matches for c in comparisons)
    lines.append(f"verdict: {matched} of {len(comparisons)} output(s) on chain match the replay")
    return "\n".join(lines)


def _as_json(
    record: JobRecord,
    fetched: FetchedCode,
    warnings: list[str],
    outcome: JobOutcome,
    run: MeasuredRun | None,
    comparisons: list[Comparison],
) -> dict[str, Any]:
    job = record.created
    usage = run.usage if run is not None else ProcessUsage(None, None)
    return {
        "job_id": job.job_id,
        "created_block": job.position.block_number,
        "created_block_hash": job.position.block_hash,
        "created_tx": job.position.tx_hash,
        "created_at": record.created_at,
        "superseded_blocks": [old.position.block_number for old in record.superseded],
        "env": job.env,
        "owner": job.job_owner,
        "secret_id": job.secret_id,
        "deadline_ms": job.deadline_ms,
        "codehash": job.codehash,
        "code_bytes": len(fetched.code),
        "code_error": None if fetched.error is None else int(fetched.error),
        "code_warnings": warnings,
        "replay": {
            "error_code": int(outcome.error_code),
            "output_hex": "0x" + outcome.output.hex(),
            "output_bytes": len(outcome.output),
            "output_keccak": "0x" + keccak(outcome.output).hex(),
            "total_time_ms": outcome.total_time_ms,
            "wall_time_ms": run.wall_ms if run is not None else None,
            "cpu_time_ms": usage.cpu_ms,
            "peak_memory_bytes": usage.peak_rss_bytes,
        },
        "outputs": [
            {
                "executor": c.response.executor,
                "block": c.response.position.block_number,
                "tx": c.response.position.tx_hash,
                "error_code": c.response.error_code,
                "output_hex": "0x" + c.response.output.hex(),
                "total_time_ms": c.response.total_time_ms,
                "matches": c.matches,
                "problems": list(c.problems),
            }
            for c in comparisons
        ],
        "unanswered": [
            e for e in job.selected_executors if e not in {c.response.executor for c in comparisons}
        ],
        "all_match": all(c.matches for c in comparisons),
    }
