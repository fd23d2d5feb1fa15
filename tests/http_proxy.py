"""An HTTP JSON-RPC relay in front of anvil that fails chosen calls, for transient-error tests.

``fail_every[method] = n`` answers every n-th call of ``method`` with HTTP 502 without forwarding
it; ``lose_answer[method] = k`` forwards the first ``k`` calls of ``method`` but answers them with
HTTP 502 (the node acted on the call, the client never learns it); a method in ``hang`` is never
answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from tests.relay import forward, serving


class FlakyRpcProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_every: dict[str, int] = {}
        self.lose_answer: dict[str, int] = {}
        self.hang: set[str] = set()
        """Methods never answered (the request hangs until the client gives up)."""
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []
        """(time.perf_counter(), method) of every call, in arrival order."""
        self.failed: Counter[str] = Counter()
        self.url = ""
        self._session: aiohttp.ClientSession | None = None
        self.released = asyncio.Event()
        """Set when the proxy stops: hanging requests are answered then."""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        method = str(json.loads(body).get("method", ""))
        self.calls[method] += 1
        self.log.append((time.perf_counter(), method))
        if method in self.hang:
            await self.released.wait()
            return web.Response(status=502, text="hung up (injected)")
        every = self.fail_every.get(method)
        if every and self.calls[method] % every == 0:
            self.failed[method] += 1
            return web.Response(status=502, text="bad gateway (injected)")
        assert self._session is not None
        _, answer = await forward(self._session, self.upstream, body)
        if self.lose_answer.get(method, 0) > 0:
            self.lose_answer[method] -= 1
            self.failed[method] += 1
            return web.Response(status=502, text="answer lost (injected)")
        return web.Response(body=answer, content_type="application/json")


@asynccontextmanager
async def running_rpc_proxy(upstream: str) -> AsyncIterator[FlakyRpcProxy]:
    proxy = FlakyRpcProxy(upstream)
    async with serving(proxy.handle) as (proxy.url, _), aiohttp.ClientSession() as session:
        proxy._session = session
        try:
            yield proxy
        finally:
            proxy.released.set()
