"""``oyster-executor run CODE.js``: run code once, exactly as a job runs, and show the outcome.

The dApp developer's inner loop: the same Sandbox, slice confinement and error codes as a job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from executor.errors import ExecutorError, NoFreeSliceError, SliceSetupError
from executor.outcome import ErrorCode, JobOutcome
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from executor.sandbox.locate import find_workerd

DEFAULT_DEADLINE_MS = 5000
EXIT_CODE_OFFSET = 10
SECRET_ID = 1  # the id under which --secret-file is offered to the code, as env.secret

EPILOG = f"""\
The code is confined to a free cgroup slice (run `./cgroup_setup.sh` once, as root, to create them)
and receives the input as the body of a POST request; the output is the response body. With
--secret-file, the file's bytes are the `secret` binding (env.secret, an ArrayBuffer).

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
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cgroup-parent",
        type=Path,
        metavar="PATH",
        help="cgroup holding the workerd_N slices (default: the cgroup2 mount root)",
    )
    where.add_argument(
        "--unconfined",
        action="store_true",
        help="run WITHOUT a cgroup slice (no limits; for machines without slices)",
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_command)


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
    if args.secret_file is not None and not args.secret_file.is_file():
        raise ExecutorError(f"secret file {args.secret_file} does not exist")
    if args.workerd is not None:
        workerd_bin = args.workerd
    else:
        workerd_bin = find_workerd()

    if args.unconfined:
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
                f"{e}; or pass --unconfined to run without a slice (development only)"
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
        if args.secret_file is not None:
            # A link, not a copy: the secret is never duplicated on disk.
            Path(store, f"{SECRET_ID}.bin").symlink_to(args.secret_file.resolve())
            secret_id = SECRET_ID
        sandbox = Sandbox(
            workerd_bin=workerd_bin,
            runtime_path=runtime,
            secret_store_path=store,
            pool=pool,
            warm_workers=0 if args.cold else 1,
        )
        outcome = asyncio.run(
            _execute(sandbox, code, inputs, args.deadline_ms, secret_id, args.code.name)
        )
    print(_render_json(outcome) if args.json else _render_text(outcome))
    return 0 if outcome.error_code == ErrorCode.OK else EXIT_CODE_OFFSET + outcome.error_code


async def _execute(
    sandbox: Sandbox, code: bytes, inputs: bytes, deadline_ms: int, secret_id: int, label: str
) -> JobOutcome:
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
        return await sandbox.execute(
            code, inputs, deadline_ms=deadline_ms, secret_id=secret_id, label=label
        )
    finally:
        await sandbox.close()


def _as_text(output: bytes) -> str | None:
    try:
        return output.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _render_text(outcome: JobOutcome) -> str:
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
        lines += [f"output ({len(outcome.output)} bytes, not UTF-8):", "0x" + outcome.output.hex()]
    if outcome.logs:
        lines += ["logs:", outcome.logs.rstrip("\n")]
    else:
        lines.append("logs: (none)")
    return "\n".join(lines)


def _render_json(outcome: JobOutcome) -> str:
    return json.dumps(
        {
            "error_code": outcome.error_code.value,
            "meaning": outcome.error_code.meaning,
            "total_time_ms": outcome.total_time_ms,
            "output": _as_text(outcome.output),
            "output_hex": "0x" + outcome.output.hex(),
            "logs": outcome.logs,
        }
    )
