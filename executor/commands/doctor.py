"""``oyster-executor doctor``: check that this machine and config can run the executor.

Prints one line per check (verdict, what was found, and a hint when something is wrong) and exits
1 when any check failed, 0 otherwise (warnings do not fail); usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from executor.commands.common import add_node_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check config, key, workerd, cgroups, a canary job, chain endpoints, contracts, "
        "secret store, vsock",
        description=__doc__,
    )
    add_node_options(parser)
    parser.add_argument(
        "--ws-api-key",
        default=os.environ.get("OYSTER_WS_API_KEY", ""),
        help="websocket API key to test the ws endpoints with (or env OYSTER_WS_API_KEY)",
    )
    parser.add_argument(
        "--no-canary",
        action="store_true",
        help="skip the canary job (a known-good job run through the sandbox, warm and cold)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from executor import redact
    from executor.doctor import DoctorOptions, exit_status, run_checks

    redact.register_secret(args.ws_api_key)
    options = DoctorOptions(
        args.config_file, args.cgroup_parent, args.ws_api_key, canary=not args.no_canary
    )
    checks = asyncio.run(run_checks(options))
    for check in checks:
        print(redact.redact(check.line()), flush=True)
    status = exit_status(checks)
    failed = sum(1 for c in checks if c.verdict.name == "FAIL")
    print(f"doctor: {failed} check(s) failed" if failed else "doctor: all checks passed")
    return status
