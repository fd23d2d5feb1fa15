"""An HTTP JSON-RPC relay in front of anvil whose failures the test chooses.

``mode`` is one of ``"ok"`` (relay), ``"error500"`` (answer HTTP 500), ``"hang"`` (never answer) and
``"garbage"`` (HTTP 200 with a body that is not JSON). ``requests`` counts what reached it, by
JSON-RPC method. ``stop()`` closes the listening socket, so later connections are refused.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from tests.relay import forward, serving


class HttpProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.strip_block_timestamps = False
        """Drop ``blockTimestamp`` from ``eth_getLogs`` results, as older nodes answer."""
        self.max_log_range: int | None = None
        """Refuse ``eth_getLogs`` over more blocks than this, as hosted RPCs do."""
        self.requests: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body)
            batch = parsed if isinstance(parsed, list) else [parsed]
            methods = [r["method"] for r in batch]
        except (ValueError, KeyError, TypeError):
            methods = ["?"]
        self.requests.update(methods)
        if self.max_log_range is not None and methods == ["eth_getLogs"]:
            query = parsed["params"][0]
            span = int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1
            if span > self.max_log_range:
                error = {
                    "code": -32600,
                    "message": f"block range too large (max {self.max_log_range})",
                }
                return web.json_response({"jsonrpc": "2.0", "id": parsed["id"], "error": error})
        if self.mode == "error500":
            return web.Response(status=500, text="upstream exploded")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>maintenance</html>")
        assert self._session is not None
        status, answer = await forward(self._session, self.upstream, body)
        if self.strip_block_timestamps and methods == ["eth_getLogs"]:
            reply = json.loads(answer)
            for log in reply.get("result") or []:
                log.pop("blockTimestamp", None)
            answer = json.dumps(reply).encode()
        return web.Response(status=status, body=answer, content_type="application/json")

    async def stop(self) -> None:
        """Stop listening: every later request is refused (connection refused)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def running_http_proxy(upstream: str) -> AsyncIterator[HttpProxy]:
    proxy = HttpProxy(upstream)
    async with serving(proxy._handle) as (proxy.url, proxy._runner), aiohttp.ClientSession() as s:
        proxy._session = s
        try:
            yield proxy
        finally:
            await proxy.stop()
