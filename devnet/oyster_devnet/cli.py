"""``oyster-devnet``: a local Oyster network for dApp authors, and the demo.

- ``oyster-devnet up [--executors N] [--selected K]``: anvil, the devnet contracts and N (1-8)
  registered executors (each the real daemon in its own cgroup slices); prints the RPC URLs,
  contract addresses and funded accounts, writes a state file, and runs until Ctrl-C. The
  executors' logs (with what the jobs' code prints) go to a folder named at start, kept after exit.
- ``oyster-devnet job CODE.js --input JSON|@FILE [--secret-id N]``: against a running ``up``,
  stores the code on chain, creates a job and prints each selected executor's JobResponded as it
  arrives, what the code printed, and why an executor will not answer as soon as its log says so.
- ``oyster-devnet consumer CODE.js --input JSON [--address A]``: the same job owned by the sample
  ``OysterConsumer`` contract; prints what its ``oysterResultCall`` stored.
- ``oyster-devnet demo``: what ``make demo`` runs.

Exit status: 0 on success, 1 when a job was not answered by every selected executor or the
network failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from oyster_devnet.network import DEFAULT_STATE_FILE, MAX_EXECUTORS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oyster-devnet",
        description="A local Oyster network (anvil + devnet contracts + executors) and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the demo: a local chain, the daemon and real jobs")

    up = sub.add_parser("up", help="start a local network and keep it running until Ctrl-C")
    up.add_argument(
        "--executors",
        type=int,
        default=1,
        help=f"executors to run (1-{MAX_EXECUTORS}, default 1; 0: only the chain and the "
        "contracts, for a node of your own: docs/operator.md)",
    )
    up.add_argument(
        "--port", type=int, default=None, help="anvil's port on 127.0.0.1 (default: a free one)"
    )
    up.add_argument("--selected", type=int, default=None, help="executors per job (default: all)")
    up.add_argument("--slices", type=int, default=2, help="cgroup slices per executor (default 2)")
    up.add_argument(
        "--execution-buffer", type=int, default=10, help="EXECUTION_BUFFER_TIME, s (default 10)"
    )
    up.add_argument(
        "--logs-dir",
        type=Path,
        default=None,
        help="folder for the executors' logs, kept after exit "
        "(default: ./oyster-devnet-logs/<start time>)",
    )
    _state_file(up)

    job = sub.add_parser("job", help="run one job on the network started by `up`")
    job.add_argument("code", type=Path, help="the JavaScript file (an ES module, see docs/dapp.md)")
    job.add_argument(
        "--input",
        default="",
        metavar="TEXT|@FILE",
        help="the request body: the text as given, or the bytes of FILE with @FILE "
        "(as `oyster-executor run --input`)",
    )
    job.add_argument("--secret-id", type=int, default=0, help="secret id (0: none)")
    job.add_argument(
        "--follow-log",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also follow this executor's log (a node of your own, not started by `up`): "
        "show what it says about the job; repeatable",
    )
    job.add_argument("--deadline-ms", type=int, default=5000, help="deadline (default 5000 ms)")
    _state_file(job)

    consumer = sub.add_parser(
        "consumer", help="run one job owned by the sample OysterConsumer contract (its callback)"
    )
    consumer.add_argument("code", type=Path, help="the JavaScript file")
    consumer.add_argument("--input", default="", help="the request body (e.g. a JSON text)")
    consumer.add_argument("--deadline-ms", type=int, default=5000, help="deadline (default 5000)")
    consumer.add_argument("--address", default=None, help="an OysterConsumer already deployed")
    _state_file(consumer)
    return parser


def _state_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-file",
        type=Path,
        default=DEFAULT_STATE_FILE,
        help=f"where `up` writes, and `job` reads, the network's details "
        f"(default {DEFAULT_STATE_FILE})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from oyster_devnet.demo import main as demo_main

        return demo_main()
    if args.command == "up":
        if not 0 <= args.executors <= MAX_EXECUTORS:
            parser.error(f"--executors must be between 0 and {MAX_EXECUTORS}")
        selected = max(args.executors, 1) if args.selected is None else args.selected
        if not 1 <= selected <= max(args.executors, 1):
            parser.error("--selected must be between 1 and --executors")
        if args.slices < 1:
            parser.error("--slices must be at least 1")
        return asyncio.run(_up(args, selected))
    if not args.code.is_file():
        parser.error(f"no such file: {args.code}")
    if not args.state_file.is_file():
        print(
            f"oyster-devnet: no running network ({args.state_file} not found): "
            "start one with `oyster-devnet up`",
            file=sys.stderr,
        )
        return 1
    if args.command == "consumer":
        from oyster_devnet.consumer import run_consumer_job

        return asyncio.run(run_consumer_job(args))
    from oyster_devnet.job import run_job

    return asyncio.run(run_job(args))


def say(text: str = "") -> None:
    print(text, flush=True)


async def _up(args: argparse.Namespace, selected: int) -> int:
    from oyster_devnet.network import describe, start_network

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="oyster-devnet-"))
    state_file: Path = args.state_file.resolve()
    logs_dir = (args.logs_dir or default_logs_dir()).resolve()
    logs_dir.mkdir(parents=True, exist_ok=True)
    say(f"-- executor logs in {logs_dir} (kept after exit)")
    try:
        async with start_network(
            workdir,
            executors=args.executors,
            selected=selected,
            slices=args.slices,
            execution_buffer_time=args.execution_buffer,
            say=say,
            log_dir=logs_dir,
            port=args.port,
        ) as network:
            state = network.state()
            state.write(state_file)
            say()
            for line in describe(state):
                say(line)
            say()
            say(f"state file {state_file}; try: oyster-devnet job CODE.js --input '{{...}}'")
            say("ready. Ctrl-C stops everything.")
            await stop.wait()
            say("-- stopping the executors, the slices and anvil")
    finally:
        _remove(state_file, workdir)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    say(f"-- stopped; the executors' logs are kept in {logs_dir}")
    return 0


def default_logs_dir() -> Path:
    """``./oyster-devnet-logs/<UTC start time>``: one folder per ``up``, named when it starts."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("oyster-devnet-logs") / stamp


def _remove(state_file: Path, workdir: Path) -> None:
    state_file.unlink(missing_ok=True)
    state_file.with_name(state_file.name + ".lock").unlink(missing_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
