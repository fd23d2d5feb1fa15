"""``oyster-executor admin``: the operator's client of the admin API.

``admin init`` takes the same flags as the original executor's vsock client. It checks every input
first (a typo sends nothing), waits until the executor answers, sets the owner if the node has none
(a node owned by the same address goes on with the key rotation; one owned by another address is
refused), sets the gas keys and ws API key, and prints the tee details and the signed registration
message as JSON (ready for the registration transaction).

``admin status`` prints ``GET /health`` and ``GET /jobs`` and exits 1 when the node cannot serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from executor.admin.client import AdminClient, AdminRefused


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("admin", help="configure a running executor (admin client)")
    commands = parser.add_subparsers(dest="admin_command", metavar="ACTION")
    commands.required = True

    init = commands.add_parser(
        "init",
        help="inject owner, gas key and ws API key; print tee details + registration message",
    )
    _url(init)
    init.add_argument("--owner-address", required=True, help="owner address (20-byte hex)")
    init.add_argument(
        "--executor-gas-key",
        default=os.environ.get("OYSTER_EXECUTOR_GAS_KEY"),
        help="executor gas private key (32-byte hex; or env OYSTER_EXECUTOR_GAS_KEY)",
    )
    init.add_argument(
        "--store-gas-key",
        default=os.environ.get("OYSTER_STORE_GAS_KEY", ""),
        help="secret store gas private key (32-byte hex; or env OYSTER_STORE_GAS_KEY)",
    )
    init.add_argument("--ws-api-key", default="", help="websocket RPC API key")
    init.set_defaults(handler=_init)

    details = commands.add_parser("details", help="print GET /tee-details")
    _url(details)
    details.set_defaults(handler=_get("/tee-details"))

    message = commands.add_parser("register-message", help="print GET /signed-registration-message")
    _url(message)
    message.set_defaults(handler=_get("/signed-registration-message"))

    status = commands.add_parser(
        "status",
        help="print the node's health (GET /health) and running jobs (GET /jobs); "
        "exit 1 when it cannot serve",
    )
    _url(status)
    status.set_defaults(handler=_status)


def _url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", required=True, help="executor admin URL: vsock://CID:PORT/ or http://HOST:PORT/"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")


def _print(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _init(args: argparse.Namespace) -> int:
    if not args.executor_gas_key:
        print(
            "admin init: --executor-gas-key (or OYSTER_EXECUTOR_GAS_KEY) is required; "
            "nothing was sent",
            file=sys.stderr,
        )
        return 2
    client = AdminClient(args.url, timeout_s=args.timeout)
    result = asyncio.run(
        client.init(
            owner_address=args.owner_address,
            executor_gas_key=args.executor_gas_key,
            store_gas_key=args.store_gas_key,
            ws_api_key=args.ws_api_key,
        )
    )
    _print(result)
    return 0


def _status(args: argparse.Namespace) -> int:
    client = AdminClient(args.url, timeout_s=args.timeout)

    async def fetch() -> tuple[int, Any, Any]:
        await client.wait_until_up(args.timeout)
        health = await client.request("GET", "/health")
        if health.status not in (200, 503):
            raise AdminRefused("GET", "/health", health.status, health.text.strip())
        return health.status, health.json(), await client.get_json("/jobs")

    status, health, jobs = asyncio.run(fetch())
    _print({"health": health, **(jobs if isinstance(jobs, dict) else {"jobs": jobs})})
    return 0 if status == 200 else 1


def _get(path: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        client = AdminClient(args.url, timeout_s=args.timeout)

        async def fetch() -> Any:
            await client.wait_until_up(args.timeout)
            return (await client.expect_ok("GET", path)).json()

        _print(asyncio.run(fetch()))
        return 0

    return handler
