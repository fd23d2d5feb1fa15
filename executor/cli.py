"""Command line entry point: parse arguments, configure logging once, dispatch to a command.

Each command lives in its own module exposing ``register(subparsers)``; the module adds its parser
and sets ``handler`` (a callable taking the parsed namespace and returning an exit status).
Start-up failures print one clear line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from executor import __version__, logs, redact
from executor.errors import ExecutorError

COMMAND_MODULES = (
    "executor.commands.serve",
    "executor.commands.keygen",
    "executor.commands.run",
    "executor.commands.admin",
    "executor.commands.doctor",
    "executor.commands.owner",
    "executor.commands.replay",
    "executor.commands.verify",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oyster-executor",
        description="Oyster serverless executor: runs on-chain JavaScript jobs in workerd.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=logs.LOG_FORMATS,
        help="text: human-readable lines (default); json: one JSON object per line",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(level: str, log_format: logs.LogFormat = "text") -> None:
    logs.configure(level, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except ExecutorError as e:
        print(f"oyster-executor: error: {redact.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error to report
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 141
