"""A JSON-RPC HTTP proxy of the tests' own, in front of a real anvil: it can lie.

It forwards every request to the upstream node and lets a test rewrite the answer of chosen methods
(``rewrite``), or answer "method not found" for others (``hide``), the way a hostile or limited RPC
provider would. It listens on 127.0.0.1 only and is stopped by its context manager.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.relay import forward, serving

Rewrite = Callable[[str, list[Any], Any], Awaitable[Any]]
"""(method, params, honest result) -> the result to answer instead."""


@dataclass
class RpcProxy:
    url: str = ""
    rewrite: Rewrite | None = None
    hide: set[str] = field(default_factory=set)
    fail_status: int | None = None
    """When set, every request is answered with this HTTP status and no JSON."""
    calls: list[str] = field(default_factory=list)


@asynccontextmanager
async def running_rpc_proxy(upstream: str) -> AsyncIterator[RpcProxy]:
    proxy = RpcProxy()
    session = aiohttp.ClientSession()

    async def one(request_obj: dict[str, Any]) -> dict[str, Any]:
        method = request_obj.get("method", "")
        proxy.calls.append(method)
        if method in proxy.hide:
            return {
                "jsonrpc": "2.0",
                "id": request_obj.get("id"),
                "error": {"code": -32601, "message": f"the method {method} does not exist"},
            }
        _, raw = await forward(session, upstream, json.dumps(request_obj).encode())
        answer: dict[str, Any] = json.loads(raw)
        if proxy.rewrite is not None and "result" in answer:
            answer["result"] = await proxy.rewrite(
                method, request_obj.get("params") or [], answer["result"]
            )
        return answer

    async def handle(request: web.Request) -> web.Response:
        if proxy.fail_status is not None:
            return web.Response(status=proxy.fail_status, text="upstream trouble")
        body = json.loads(await request.read())
        if isinstance(body, list):
            return web.json_response([await one(item) for item in body])
        return web.json_response(await one(body))

    try:
        async with serving(handle) as (proxy.url, _):
            yield proxy
    finally:
        await session.close()
