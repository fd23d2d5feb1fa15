"""Command line entry point: parse arguments, configure logging once, dispatch to a command.

Each command lives in its own module exposing ``register(subparsers)``; the module adds its parser
and sets ``handler`` (a callable taking the parsed namespace and returning an exit status).
Start-up failures print one clear line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from executor import redact
from executor.errors import ExecutorError

COMMAND_MODULES = (
    "executor.commands.serve",
    "executor.commands.keygen",
    "executor.commands.run",
    "executor.commands.admin",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oyster-executor",
        description="Oyster serverless executor: runs on-chain JavaScript jobs in workerd.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    redact.install(handler)
    logging.basicConfig(level=level, handlers=[handler])
    # web3 logs RPC URLs (which may embed an API key) at INFO and request bodies at DEBUG.
    for noisy in ("web3", "websockets", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except ExecutorError as e:
        print(f"oyster-executor: error: {redact.redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
