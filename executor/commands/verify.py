"""``oyster-executor verify JOB_ID``: was each output on chain really signed by a registered
enclave, for that job?

For every ``JobResponded`` of the job it fetches the transaction named by the log's
``transactionHash``, holds its bytes to that hash (``executor.chain.code.envelope``: an RPC that
rewrites the calldata is caught there), decodes the ``submitOutput`` call, recovers the EIP-712
``SubmitOutput`` signer (``executor.chain.jobs_contract``, ``signer``) and checks it against the log
and the contracts: the signer is the log's executor and one of the job's selected executors, it was
a registered enclave on the TeeManager at that block (and who owned it; whether it still is), the
signed output, error code and total time are the log's (so an RPC that rewrites the log is caught),
and the signature's timestamp and the transaction's block fit the Jobs contract's windows.

What it cannot prove from RPC answers is inclusion: that the transaction and its log are in the
canonical chain (that would take block headers and receipt proofs). It proves who signed what.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import AsyncWeb3

from executor.chain.code import CodeFetcher, DecodedTx, signed_tx_bytes, verify_raw_tx
from executor.chain.enclave_key import recover_signer
from executor.chain.follow import (
    JobRecord,
    JobResponded,
    block_timestamp,
    enclave_owner,
    jobs_constant,
    read_job,
)
from executor.chain.jobs_contract import SubmitOutputCall, decode_submit_output_calldata
from executor.chain.rpc import RpcEndpoints
from executor.commands.common import ChainTarget, add_chain_options, chain_target, job_id_arg
from executor.errors import ChainError, ExecutorError, RawTxError, TxHashMismatch

EPILOG = """\
The chain and contracts come from --rpc/--jobs/--code-contract/--tee-manager, or from the
operator config file for what those leave out. Registration at the output's block is read with
eth_call at that block: on a public chain that needs an archive RPC for old blocks.

exit status:
  0  every output is genuine (and, with --code, the job's code is that file)
  1  an output is not genuine or could not be checked, no output yet, or --code differs
  2  bad usage, unknown job, or the chain unreachable
"""


class Verdict(enum.Enum):
    PASS = "ok"
    FAIL = "FAIL"
    UNKNOWN = "??"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str

    def line(self) -> str:
        return f"[{self.verdict.value:>4}] {self.name}: {self.detail}"


@dataclass
class OutputReport:
    response: JobResponded
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signer: str | None = None
    owner: str | None = None

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        verdict = Verdict.UNKNOWN if ok is None else Verdict.PASS if ok else Verdict.FAIL
        self.checks.append(Check(name, verdict, detail))

    @property
    def verdict(self) -> str:
        if any(c.verdict is Verdict.FAIL for c in self.checks):
            return "NOT GENUINE"
        if any(c.verdict is Verdict.UNKNOWN for c in self.checks):
            return "UNVERIFIED"
        return "GENUINE"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check that each output of a job was signed by a registered enclave for that job",
        description="For every JobResponded of JOB_ID, check the enclave's EIP-712 signature in "
        "the submitOutput transaction against the log, the job and the TeeManager.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job_id", type=job_id_arg, metavar="JOB_ID", help="the job's id")
    add_chain_options(parser, tee_manager=True)
    parser.add_argument(
        "--code",
        type=Path,
        metavar="FILE",
        help="also check that the job's codehash names a code transaction carrying this file",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    target = chain_target(args, tee_manager=True)
    code_file = None
    if args.code is not None:
        try:
            code_file = args.code.read_bytes()
        except OSError as e:
            raise ExecutorError(f"cannot read code file {args.code}: {e.strerror}") from e
    record, reports, code_check = asyncio.run(
        verify_job(target, args.job_id, args.from_block, code_file)
    )
    genuine = bool(reports) and all(r.verdict == "GENUINE" for r in reports)
    ok = genuine and (code_check is None or code_check.verdict is Verdict.PASS)
    if args.json:
        print(json.dumps(_as_json(record, reports, code_check, ok)))
    else:
        print(_as_text(record, reports, code_check))
    return 0 if ok else 1


async def verify_job(
    target: ChainTarget, job_id: int, from_block: int, code_file: bytes | None
) -> tuple[JobRecord, list[OutputReport], Check | None]:
    assert target.tee_manager is not None
    endpoints = RpcEndpoints(target.rpc_urls)
    try:
        w3 = endpoints.w3
        record = await read_job(w3, target.jobs, job_id, from_block=from_block)
        constants = {
            name: await jobs_constant(w3, target.jobs, name)
            for name in ("SIGN_MAX_AGE", "EXECUTION_BUFFER_TIME")
        }
        reports = [
            await verify_output(endpoints, target, record, response, constants)
            for response in record.responses
        ]
        code_check = None
        if code_file is not None:
            code_check = await check_code(endpoints, target, record, code_file)
        return record, reports, code_check
    finally:
        await endpoints.close()


async def fetch_verified_tx(endpoints: RpcEndpoints, tx_hash: str) -> tuple[DecodedTx | None, str]:
    """The transaction ``tx_hash`` from the first endpoint whose bytes hash to it; else why not."""
    problems = []
    for client in endpoints.clients:
        try:
            raw = await signed_tx_bytes(client, tx_hash)
            if raw is None:
                problems.append("not found")
                continue
            return verify_raw_tx(raw, bytes.fromhex(tx_hash[2:])), ""
        except TxHashMismatch as e:
            problems.append(
                f"the RPC served a transaction that is not {tx_hash} ({e}): it rewrote the "
                "transaction, so what it shows is not what was signed and mined"
            )
        except (RawTxError, ChainError) as e:
            problems.append(str(e))
    return None, "; ".join(problems)


async def verify_output(
    endpoints: RpcEndpoints,
    target: ChainTarget,
    record: JobRecord,
    response: JobResponded,
    constants: dict[str, int | None],
) -> OutputReport:
    report = OutputReport(response)
    tx_hash = response.position.tx_hash
    tx, why = await fetch_verified_tx(endpoints, tx_hash)
    report.add("transaction", tx is not None, f"{tx_hash} verified against its hash" if tx else why)
    if tx is None:
        return report
    to_jobs = tx.to is not None and tx.to.lower() == target.jobs.lower()
    report.add(
        "recipient",
        to_jobs,
        "the Jobs contract"
        if to_jobs
        else f"sent to {tx.to}, not to the Jobs contract "
        "(an output relayed through another contract cannot be checked here)",
    )
    call = decode_submit_output_calldata(tx.data) if to_jobs else None
    if to_jobs:
        report.add("calldata", call is not None, "a submitOutput call" if call else
                   "not a valid submitOutput call")  # fmt: skip
    if call is None:
        return report
    try:
        signer = recover_signer(call.digest(), call.signature)
    except ValueError as e:
        report.add("signature", False, f"cannot recover a signer: {e}")
        return report
    report.signer = signer
    report.add(
        "signer",
        signer == response.executor,
        f"{signer} signed the SubmitOutput typed data"
        + ("" if signer == response.executor else f", but the log names {response.executor}"),
    )
    _check_signed_fields(report, record, response, call)
    job = record.created
    report.add(
        "selected",
        signer in job.selected_executors,
        "one of the job's selected executors"
        if signer in job.selected_executors
        else "NOT among the job's selected executors",
    )
    await _check_registration(endpoints.w3, target, report, signer, response.position.block_number)
    await _check_windows(endpoints.w3, report, record, call, constants)
    return report


def _check_signed_fields(
    report: OutputReport, record: JobRecord, response: JobResponded, call: SubmitOutputCall
) -> None:
    same_job = call.job_id == response.job_id
    other = "" if same_job else f", the log says job {response.job_id}"
    report.add("job id", same_job, f"signed for job {call.job_id}{other}")
    same_output = call.output == response.output
    report.add(
        "output",
        same_output,
        f"the log's {len(response.output)} bytes are the signed output"
        if same_output
        else f"the log shows {len(response.output)} bytes, the enclave signed "
        f"{len(call.output)} different bytes: the log was not produced by this signature",
    )
    report.add(
        "error code",
        call.error_code == response.error_code,
        f"signed {call.error_code}, the log says {response.error_code}",
    )
    deadline = record.created.deadline_ms
    clamped = call.total_time > deadline and response.total_time_ms == deadline
    same_time = call.total_time == response.total_time_ms or clamped
    detail = f"signed {call.total_time} ms, the log says {response.total_time_ms} ms"
    if clamped:
        detail += " (the contract clamps totalTime to the deadline)"
    report.add("total time", same_time, detail)


async def _check_registration(
    w3: AsyncWeb3[Any], target: ChainTarget, report: OutputReport, signer: str, block: int
) -> None:
    assert target.tee_manager is not None
    try:
        owner = await enclave_owner(w3, target.tee_manager, signer, block=block)
    except ChainError as e:
        report.add("registered", None, f"cannot read the TeeManager at block {block}: {e}")
        return
    report.owner = owner
    report.add(
        "registered",
        owner is not None,
        f"a registered enclave at block {block}, owned by {owner}"
        if owner is not None
        else f"NOT a registered enclave on the TeeManager at block {block}",
    )
    try:
        now = await enclave_owner(w3, target.tee_manager, signer, block="latest")
    except ChainError as e:
        report.notes.append(f"its registration today could not be read: {e}")
        return
    if owner is not None and now is None:
        report.notes.append(
            "the enclave has been DEREGISTERED since it answered (it was registered then)"
        )
    elif owner is not None and now != owner:
        report.notes.append(f"the enclave is now owned by {now}")


async def _check_windows(
    w3: AsyncWeb3[Any],
    report: OutputReport,
    record: JobRecord,
    call: SubmitOutputCall,
    constants: dict[str, int | None],
) -> None:
    position = report.response.position
    try:
        mined_at = position.block_timestamp or await block_timestamp(w3, position.block_number)
    except ChainError as e:
        report.add("signature age", None, str(e))
        return
    max_age = constants.get("SIGN_MAX_AGE")
    if max_age is None:
        report.add("signature age", None, "the Jobs contract does not answer SIGN_MAX_AGE()")
    else:
        age = mined_at - call.sign_timestamp
        report.add(
            "signature age",
            age <= max_age,
            f"signed at {call.sign_timestamp}, mined {age} s later (the contract accepts "
            f"{max_age} s)",
        )
    buffer_s = constants.get("EXECUTION_BUFFER_TIME")
    if buffer_s is None:
        report.add("window", None, "the Jobs contract does not answer EXECUTION_BUFFER_TIME()")
        return
    closes_ms = record.created_at * 1000 + record.created.deadline_ms + buffer_s * 1000
    report.add(
        "window",
        mined_at * 1000 <= closes_ms,
        f"mined {mined_at - record.created_at} s after the job was created; the window closes "
        f"after {(closes_ms - record.created_at * 1000) / 1000:g} s (deadline + buffer)",
    )


async def check_code(
    endpoints: RpcEndpoints, target: ChainTarget, record: JobRecord, code_file: bytes
) -> Check:
    fetched = await CodeFetcher(endpoints.clients, target.code_contract).fetch(
        record.created.codehash
    )
    name = "code"
    if fetched.error is not None:
        return Check(name, Verdict.FAIL, f"codehash {record.created.codehash}: "
                     f"{fetched.error.meaning}")  # fmt: skip
    expected = code_file.rstrip(b"\x00")  # what the code fetch removes from inputData
    if fetched.code == expected:
        return Check(
            name,
            Verdict.PASS,
            f"codehash {record.created.codehash} is a code transaction carrying this file "
            f"({len(expected)} bytes)",
        )
    at = next(
        (i for i, (x, y) in enumerate(zip(fetched.code, expected, strict=False)) if x != y),
        min(len(fetched.code), len(expected)),
    )
    return Check(
        name,
        Verdict.FAIL,
        f"codehash {record.created.codehash} carries {len(fetched.code)} bytes that differ from "
        f"the file's {len(expected)} (first difference at byte {at})",
    )


def _as_text(record: JobRecord, reports: list[OutputReport], code_check: Check | None) -> str:
    job = record.created
    lines = [
        f"job {job.job_id}: JobCreated in block {job.position.block_number} "
        f"(tx {job.position.tx_hash}), deadline {job.deadline_ms} ms, "
        f"{len(job.selected_executors)} selected executor(s)"
    ]
    if not reports:
        lines.append("no output on chain yet: nothing to verify")
    for report in reports:
        r = report.response
        lines.append(
            f"output of {r.executor} (block {r.position.block_number}, error code "
            f"{r.error_code}, {len(r.output)} bytes): {report.verdict}"
        )
        lines += ["  " + c.line() for c in report.checks]
        lines += [f"  note: {n}" for n in report.notes]
    if len({(r.response.error_code, r.response.output) for r in reports}) > 1:
        lines.append(
            "note: the outputs differ from one another: `oyster-executor replay` shows which "
            "one the code gives (verify proves who signed, not what the code answers)"
        )
    if code_check is not None:
        lines.append(code_check.line())
    return "\n".join(lines)


def _as_json(
    record: JobRecord, reports: list[OutputReport], code_check: Check | None, ok: bool
) -> dict[str, Any]:
    def check(c: Check) -> dict[str, str]:
        return {"name": c.name, "verdict": c.verdict.name.lower(), "detail": c.detail}

    return {
        "job_id": record.created.job_id,
        "created_block": record.created.position.block_number,
        "outputs": [
            {
                "executor": r.response.executor,
                "block": r.response.position.block_number,
                "tx": r.response.position.tx_hash,
                "verdict": r.verdict.lower().replace(" ", "_"),
                "signer": r.signer,
                "owner": r.owner,
                "checks": [check(c) for c in r.checks],
                "notes": r.notes,
            }
            for r in reports
        ],
        "code": check(code_check) if code_check is not None else None,
        "ok": ok,
    }
