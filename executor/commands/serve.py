"""``oyster-executor serve``: run the executor daemon."""

from __future__ import annotations

import argparse
import asyncio

from executor.commands.common import add_node_options
from executor.config import DEFAULT_SHUTDOWN_GRACE_S


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the executor daemon",
        description="Run the executor: serve the admin API, follow the chain, execute jobs.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--vsock-addr", metavar="CID:PORT", help="serve the admin API on vsock (production)"
    )
    where.add_argument(
        "--tcp-addr",
        metavar="HOST:PORT",
        help="serve the admin API on TCP (development/tests: UNAUTHENTICATED)",
    )
    add_node_options(parser)
    parser.add_argument(
        "--unconfined-dev",
        action="store_true",
        help="DEVELOPMENT ONLY: run user code without cgroup slices",
    )
    parser.add_argument(
        "--user-logs",
        action="store_true",
        help="DEVELOPMENT ONLY: log what each job's code prints (console.log) at INFO; off by "
        "default, never in production (a job's output is for its owner alone)",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; "
        "overrides the config key metrics_addr)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_SHUTDOWN_GRACE_S,
        metavar="SECONDS",
        help=f"seconds running jobs may finish on SIGTERM (default {DEFAULT_SHUTDOWN_GRACE_S:.0f})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: web3 and aiohttp take about a second to import, which other commands
    # (keygen, run, admin) should not pay.
    from executor.admin.sites import parse_tcp_addr, parse_vsock_addr
    from executor.config import Settings
    from executor.daemon import Daemon

    listen = parse_vsock_addr(args.vsock_addr) if args.vsock_addr else parse_tcp_addr(args.tcp_addr)
    settings = Settings.load(args.config_file)
    daemon = Daemon(
        settings,
        listen,
        cgroup_parent=args.cgroup_parent,
        unconfined=args.unconfined_dev,
        shutdown_grace_s=args.shutdown_grace,
        metrics_addr=args.metrics_addr,
        startup_canary=True,  # the health knows at once whether a job would run
        user_logs=args.user_logs,
    )
    asyncio.run(daemon.serve_until_signalled())
    return 0
