"""The pure parts of ``verify`` and ``run``'s report: submitOutput calldata decoding, the signed
fields held to the log (with the production contract's totalTime clamp), and the job process
probe on a plain child process (no workerd, no slice, so no port to collide on)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from executor.chain.enclave_key import EnclaveKey, recover_signer
from executor.chain.follow.events import JobCreated, JobResponded, LogPosition
from executor.chain.follow.job_history import JobRecord
from executor.chain.jobs_contract import (
    SubmitOutputCall,
    decode_submit_output_calldata,
    sign_output,
    submit_output_calldata,
)
from executor.cli import build_parser
from executor.commands.verify import OutputReport, Verdict, _check_signed_fields
from executor.sandbox.usage import JobProcessProbe, ProcessUsage

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY = EnclaveKey.from_secret(bytes(range(1, 33)))
AT = LogPosition(address="0x" + "11" * 20, block_number=5, log_index=0, tx_hash="0x" + "22" * 32)


def test_submit_output_calldata_round_trips_and_recovers_the_signer() -> None:
    signature = sign_output(KEY, 7, b"out", 42, 0, 1_700_000_000)
    data = submit_output_calldata(signature, 7, b"out", 42, 0, 1_700_000_000)
    call = decode_submit_output_calldata(data)
    assert call == SubmitOutputCall(signature, 7, b"out", 42, 0, 1_700_000_000)
    assert recover_signer(call.digest(), call.signature) == KEY.address
    assert decode_submit_output_calldata(b"\x00" * 4 + data[4:]) is None  # another function
    assert decode_submit_output_calldata(data[:40]) is None  # truncated


def record(deadline_ms: int) -> JobRecord:
    created = JobCreated(AT, 7, 1, "0x" + "33" * 20, 0, "0x" + "44" * 32, b"", deadline_ms, ())
    return JobRecord(created, 1_700_000_000, (), ())


def response(output: bytes, total_time_ms: int) -> JobResponded:
    return JobResponded(AT, 7, KEY.address, output, total_time_ms, 0, 1)


@pytest.mark.parametrize(
    ("signed_ms", "logged_ms", "ok"),
    [(42, 42, True), (1200, 1000, True), (900, 1000, False), (1200, 1100, False)],
    ids=["equal", "clamped-to-deadline", "raised", "clamped-elsewhere"],
)
def test_total_time_may_only_be_clamped_to_the_deadline(
    signed_ms: int, logged_ms: int, ok: bool
) -> None:
    report = OutputReport(response(b"out", logged_ms))
    call = SubmitOutputCall(b"", 7, b"out", signed_ms, 0, 0)
    _check_signed_fields(report, record(1000), report.response, call)
    (total,) = [c for c in report.checks if c.name == "total time"]
    assert (total.verdict is Verdict.PASS) == ok, total.detail


def test_an_output_the_log_shows_but_nobody_signed_fails() -> None:
    report = OutputReport(response(b"lies", 42))
    _check_signed_fields(
        report, record(1000), report.response, SubmitOutputCall(b"", 7, b"out", 42, 0, 0)
    )
    verdicts = {c.name: c.verdict for c in report.checks}
    assert verdicts == {
        "job id": Verdict.PASS,
        "output": Verdict.FAIL,
        "error code": Verdict.PASS,
        "total time": Verdict.PASS,
    }
    assert report.verdict == "NOT GENUINE"


async def test_probe_reads_the_peak_memory_and_cpu_of_a_child_that_exits() -> None:
    script = "b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); sum(range(10**6))"
    async with JobProcessProbe() as probe:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
        await proc.wait()
    usage = probe.usage
    assert usage.peak_rss_bytes is not None and usage.peak_rss_bytes > 80 * 1024 * 1024
    assert usage.cpu_ms is not None and usage.cpu_ms > 0


async def test_probe_leaves_out_a_child_started_before_that_keeps_running() -> None:
    big_idle = (
        "import sys, time; b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
        "print(flush=True); time.sleep(30)"
    )
    idle = await asyncio.create_subprocess_exec(
        sys.executable, "-c", big_idle, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert idle.stdout is not None
        await idle.stdout.readline()  # its 80 MiB are resident
        async with JobProcessProbe() as probe:
            small = "import time; time.sleep(0.2)"
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", small)
            await proc.wait()
        peak = probe.usage.peak_rss_bytes
        assert peak is not None and peak < 60 * 1024 * 1024, peak
    finally:
        idle.kill()
        await idle.wait()


async def test_probe_says_unknown_when_no_child_ran() -> None:
    async with JobProcessProbe() as probe:
        await asyncio.sleep(0.02)
    assert probe.usage == ProcessUsage(None, None)


@pytest.mark.parametrize("command", ["run", "replay", "verify"])
def test_every_option_of_the_dapp_commands_is_in_the_dapp_guide(command: str) -> None:
    guide = (REPO_ROOT / "docs" / "dapp.md").read_text()
    assert f"oyster-executor {command}" in guide
    parser = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    assert "exit status" in parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}" in guide, f"{command} {option} is not in docs/dapp.md"
