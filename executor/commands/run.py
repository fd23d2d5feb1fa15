"""``oyster-executor run CODE.js``: run code once, exactly as a job runs, and show the outcome.

The dApp developer's inner loop: the same Sandbox, slice confinement and error codes as a job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.errors import ExecutorError, NoFreeSliceError, SliceSetupError
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SliceLimits, SlicePool
from executor.sandbox.locate import find_workerd
from executor.sandbox.usage import JobProcessProbe, ProcessUsage

DEFAULT_DEADLINE_MS = 5000
EXIT_CODE_OFFSET = 10
SECRET_ID = 1  # the id under which --secret-file is offered to the code, as env.secret
LIMITS = ("production", "none")
PRODUCTION_MEMORY_MAX = 100 * 1024 * 1024
"""The slices' memory.max by default (docs/protocol.md §5, ``cgroup_setup.sh``)."""

EPILOG = f"""\
The code is confined to a free cgroup slice (run `./cgroup_setup.sh` once, as root, to create them)
and receives the input as the body of a POST request; the output is the response body. With
--secret-file, the file's bytes are the `secret` binding (env.secret, an ArrayBuffer).

After the outcome comes a report: wall time, CPU time and peak resident memory of the job's
workerd process (against the production slice's memory limit), the output's size against the
20480-byte cap, and the error code the chain would get.

exit status:
  0                 error code 0: the code ran; the output is its response body
  {EXIT_CODE_OFFSET}+N              error code N (1-5), e.g. 13 syntax error, 14 deadline passed,
                    15 output larger than 20480 bytes
  2                 bad usage, or the sandbox failed (no slices, workerd failed to start, ...)
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run JavaScript once in the job sandbox and print its outcome",
        description="Run CODE.js once through the same sandbox as a real job and print the "
        "output, the error code, the total time and what the code logged.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("code", type=Path, metavar="CODE.js", help="the worker's ES module")
    parser.add_argument(
        "--input",
        default="",
        metavar="JSON|@FILE",
        help="request body: the string as given, or the bytes of FILE with @FILE (default: empty)",
    )
    parser.add_argument(
        "--secret-file", type=Path, metavar="PATH", help="bytes offered to the code as env.secret"
    )
    parser.add_argument(
        "--deadline-ms",
        type=_positive_int,
        default=DEFAULT_DEADLINE_MS,
        metavar="N",
        help=f"job deadline in ms, start-up included (default {DEFAULT_DEADLINE_MS})",
    )
    add_sandbox_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_command)


def add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    """``--limits``, ``--cgroup-parent``, ``--cold``, ``--workerd``: how the code is run (``run``
    and ``replay`` share them)."""
    parser.add_argument(
        "--limits",
        choices=LIMITS,
        default="production",
        help="production (default): in a free cgroup slice, with its memory and CPU limits, as a "
        "real job; none: WITHOUT a slice (no memory or CPU limit; for machines without slices). "
        "The deadline and the 20480-byte output cap apply either way: they decide the error code",
    )
    parser.add_argument(
        "--unconfined",
        action="store_const",
        const="none",
        dest="limits",
        help="the same as --limits none",
    )
    parser.add_argument(
        "--cgroup-parent",
        type=Path,
        metavar="PATH",
        help="cgroup holding the workerd_N slices (default: the cgroup2 mount root)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="start workerd for the job (the fallback path) instead of loading the code into a "
        "warm slice's workerd (the daemon's default path)",
    )
    parser.add_argument(
        "--workerd", type=Path, metavar="PATH", help="workerd binary (default: the npm package's)"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ExecutorError(f"cannot read {what} {path}: {e.strerror}") from e


def read_input(value: str) -> bytes:
    """``--input``: the bytes of FILE for ``@FILE``, else the text as given (``run`` and
    ``oyster-devnet job`` alike)."""
    if value.startswith("@"):
        return _read(Path(value[1:]), "input file")
    return os.fsencode(value)


def run_command(args: argparse.Namespace) -> int:
    code = _read(args.code, "code file")
    inputs = read_input(args.input)
    with job_sandbox(args, secret_file=args.secret_file) as (sandbox, secret_id, limits):
        run = asyncio.run(
            execute_measured(sandbox, code, inputs, args.deadline_ms, secret_id, args.code.name)
        )
    report = Report(run, limits)
    print(report.json() if args.json else report.text())
    outcome = run.outcome
    return 0 if outcome.error_code == ErrorCode.OK else EXIT_CODE_OFFSET + outcome.error_code


@contextlib.contextmanager
def job_sandbox(
    args: argparse.Namespace, *, secret_file: Path | None
) -> Iterator[tuple[Sandbox, int, SliceLimits | None]]:
    """The Sandbox ``args`` ask for (see :func:`add_sandbox_options`), in a temporary runtime
    folder, with ``secret_file`` offered as the secret; yields (sandbox, secret id, the slices'
    limits or None when unconfined)."""
    if secret_file is not None and not secret_file.is_file():
        raise ExecutorError(f"secret file {secret_file} does not exist")
    workerd_bin = args.workerd if args.workerd is not None else find_workerd()
    limits: SliceLimits | None = None
    if args.limits == "none":
        pool = None
        print(
            "!!! UNCONFINED: the code runs WITHOUT a cgroup slice: no memory/cpu limits. !!!\n"
            "!!! Real jobs always run in a slice; use this only where slices are missing. !!!",
            file=sys.stderr,
        )
    else:
        try:
            pool = SlicePool.discover(args.cgroup_parent)
        except SliceSetupError as e:
            raise SliceSetupError(
                f"{e}; or pass --limits none to run without a slice (development only)"
            ) from e
        limits = pool.limits()
        if not limits.enforced:
            print(f"note: {limits.describe()}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="oyster-run-") as tmp:
        runtime = Path(tmp, "runtime")
        store = Path(tmp, "secrets")
        runtime.mkdir()
        store.mkdir()
        secret_id = 0
        if secret_file is not None:
            # A link, not a copy: the secret is never duplicated on disk.
            Path(store, f"{SECRET_ID}.bin").symlink_to(secret_file.resolve())
            secret_id = SECRET_ID
        yield (
            Sandbox(
                workerd_bin=workerd_bin,
                runtime_path=runtime,
                secret_store_path=store,
                pool=pool,
                warm_workers=0 if args.cold else 1,
            ),
            secret_id,
            limits,
        )


@dataclass(frozen=True)
class MeasuredRun:
    """One job's outcome, the wall time around it, and what its workerd process used."""

    outcome: JobOutcome
    wall_ms: int
    usage: ProcessUsage


async def execute_measured(
    sandbox: Sandbox, code: bytes, inputs: bytes, deadline_ms: int, secret_id: int, label: str
) -> MeasuredRun:
    """One job, on the path the daemon takes: a slice armed before the job (as the daemon keeps
    them), then the job; cold if the Worker Loader is unavailable or with --cold."""
    pool = sandbox.pool
    if pool is not None:  # fail now, clearly, rather than wait out the deadline
        try:
            await pool.release(pool.reserve())
        except NoFreeSliceError as e:
            raise NoFreeSliceError(
                f"{e}; they are locked by another process: a running daemon keeps a warm workerd "
                "in each free slice (set its warm_workers below the slice count to leave some)"
            ) from e
    sandbox.start()
    try:
        if sandbox.warm is not None and not await sandbox.warm.settle():
            print("note: no warm slice (see the log above): the job starts workerd cold",
                  file=sys.stderr)  # fmt: skip
        async with JobProcessProbe() as probe:
            started = time.monotonic()
            outcome = await sandbox.execute(
                code, inputs, deadline_ms=deadline_ms, secret_id=secret_id, label=label
            )
            wall_ms = round((time.monotonic() - started) * 1000)
        return MeasuredRun(outcome, wall_ms, probe.usage)
    finally:
        await sandbox.close()


def _as_text(output: bytes) -> str | None:
    try:
        return output.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def memory_limit_bytes(limits: SliceLimits | None) -> tuple[int, str]:
    """The memory limit a production job runs under, and where that figure comes from."""
    value = limits.memory_max if limits is not None else None
    if value is not None and value.strip().isdigit():
        return int(value), "these slices' memory.max"
    return PRODUCTION_MEMORY_MAX, "the default slice memory.max"


@dataclass(frozen=True)
class Report:
    """What ``run`` prints: the outcome the chain would get, and what producing it cost."""

    run: MeasuredRun
    limits: SliceLimits | None

    def text(self) -> str:
        outcome = self.run.outcome
        lines = [
            f"error code: {outcome.error_code.value} ({outcome.error_code.meaning})",
            f"total time: {outcome.total_time_ms} ms",
        ]
        text = _as_text(outcome.output)
        if not outcome.output:
            lines.append("output: (empty)")
        elif text is not None:
            lines += [f"output ({len(outcome.output)} bytes, UTF-8 text):", text]
        else:
            lines += [
                f"output ({len(outcome.output)} bytes, not UTF-8):",
                "0x" + outcome.output.hex(),
            ]
        if outcome.logs:
            lines += ["logs:", outcome.logs.rstrip("\n")]
        else:
            lines.append("logs: (none)")
        lines += ["report:", *("  " + line for line in self.report_lines())]
        return "\n".join(lines)

    def report_lines(self) -> list[str]:
        outcome, usage = self.run.outcome, self.run.usage
        size = len(outcome.output)
        share = 100 * size / MAX_OUTPUT_BYTES
        if outcome.error_code == ErrorCode.OUTPUT_TOO_LARGE:
            size_line = f"output size: over the {MAX_OUTPUT_BYTES}-byte cap (error code 5)"
        else:
            size_line = f"output size: {size} of {MAX_OUTPUT_BYTES} bytes ({share:.1f}% of the cap)"
        cpu = f"{usage.cpu_ms} ms" if usage.cpu_ms is not None else "unknown"
        return [
            f"wall time: {self.run.wall_ms} ms (slice wait, workerd start-up, request, response)",
            f"cpu time: {cpu} (the job's workerd process, user + system)",
            self.memory_line(),
            size_line,
            f"error code for the chain: {outcome.error_code.value} ({outcome.error_code.name})",
            self.limits_line(),
        ]

    def memory_line(self) -> str:
        peak = self.run.usage.peak_rss_bytes
        if peak is None:
            return "peak memory: unknown (the job's process could not be read)"
        limit, source = memory_limit_bytes(self.limits)
        verdict = (
            "within it"
            if peak <= limit
            else "OVER it: a production executor stops the job at that limit, so the chain "
            "would not get this output"
        )
        return (
            f"peak memory: {_mib(peak)} resident in the job's workerd process; production limit "
            f"{_mib(limit)} ({source}): {verdict}"
        )

    def limits_line(self) -> str:
        from executor.sandbox.workerd import JOB_DATA_BUDGET, JOB_HEAP_MB

        everywhere = (
            f"in every workerd: V8 heap cap {JOB_HEAP_MB} MB, data +{JOB_DATA_BUDGET >> 20} MB; "
            f"a job that exhausts them is answered 'Internal Server Error' (error code 0)"
        )
        if self.limits is None:
            return f"limits: no cgroup slice (no cgroup memory or CPU limit); {everywhere}"
        if self.limits.enforced:
            return f"limits: production ({self.limits.describe()}); {everywhere}"
        return f"limits: production slice, but {self.limits.describe()}; {everywhere}"

    def json(self) -> str:
        outcome, usage = self.run.outcome, self.run.usage
        limit, _ = memory_limit_bytes(self.limits)
        return json.dumps(
            {
                "error_code": outcome.error_code.value,
                "meaning": outcome.error_code.meaning,
                "total_time_ms": outcome.total_time_ms,
                "output": _as_text(outcome.output),
                "output_hex": "0x" + outcome.output.hex(),
                "output_bytes": len(outcome.output),
                "output_cap_bytes": MAX_OUTPUT_BYTES,
                "logs": outcome.logs,
                "wall_time_ms": self.run.wall_ms,
                "cpu_time_ms": usage.cpu_ms,
                "peak_memory_bytes": usage.peak_rss_bytes,
                "memory_limit_bytes": limit,
                "limits": "none" if self.limits is None else "production",
                "limits_enforced": self.limits is not None and self.limits.enforced,
            }
        )
