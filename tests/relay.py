"""The tests' one JSON-RPC relay: an HTTP server on 127.0.0.1 in front of a real anvil that passes
every request on, and fails, lies or stalls where a test tells it to.

It accepts a POST on any path (hosted RPCs put an API key there), single requests and batches,
and counts every call by method. What it can do, from the HTTP level down to one method's answer:

- ``fail_status = N``: answer every request with HTTP ``N`` and no JSON (``mode = "error500"``
  is the same with 500); ``mode = "garbage"``: HTTP 200 with a body that is not JSON;
  ``mode = "hang"``: answer nothing (until the relay stops); ``stop()``: stop listening, so
  later connections are refused;
- ``hang = {method}``: never answer that method; ``fail_every[method] = n``: answer every n-th
  call with HTTP 502 without forwarding it; ``lose_answer[method] = k``: forward the next ``k``
  calls but answer them with HTTP 502 (the node acted, the client never learns it);
- ``hide = {method}``: answer "method not found"; ``max_log_range = n``: refuse ``eth_getLogs``
  over more than ``n`` blocks, as hosted RPCs do; ``strip_block_timestamps``: drop
  ``blockTimestamp`` from ``eth_getLogs`` results, as older nodes answer; ``rewrite``: replace the
  result of any call, ``(method, params, honest result) -> result``.

``calls`` (also ``requests``) counts calls by method, ``log`` lists ``(time.perf_counter(),
method)`` in arrival order, ``failed`` counts the injected failures by method.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Rewrite = Callable[[str, list[Any], Any], Awaitable[Any]]
"""(method, params, honest result) -> the result to answer instead."""


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, web.AppRunner]]:
    """``(url, runner)`` of a server on a free 127.0.0.1 port; stopped on exit (if still up)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/", runner
    finally:
        await runner.cleanup()


async def forward(session: aiohttp.ClientSession, upstream: str, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` to the upstream node as is; its status and raw answer."""
    async with session.post(
        upstream, data=body, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.read()


def _error(request: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request.get("id"), "error": {"code": code, "message": message}}


class Relay:
    """See the module docstring. Made by :func:`running_relay`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.mode = "ok"
        """``"ok"``, ``"error500"``, ``"hang"`` or ``"garbage"``."""
        self.fail_status: int | None = None
        self.hang: set[str] = set()
        self.fail_every: dict[str, int] = {}
        self.lose_answer: dict[str, int] = {}
        self.hide: set[str] = set()
        self.max_log_range: int | None = None
        self.strip_block_timestamps = False
        self.rewrite: Rewrite | None = None
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []
        self.failed: Counter[str] = Counter()
        self.released = asyncio.Event()
        """Set when the relay stops: hanging requests are answered (HTTP 502) then."""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def requests(self) -> Counter[str]:
        """``calls`` under the name some tests use."""
        return self.calls

    async def stop(self) -> None:
        """Stop listening: every later request is refused (connection refused)."""
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        items = parsed if isinstance(parsed, list) else [parsed]
        methods = [str(i.get("method", "?")) if isinstance(i, dict) else "?" for i in items]
        now = time.perf_counter()
        for method in methods:
            self.calls[method] += 1
            self.log.append((now, method))

        if self.fail_status is not None or self.mode == "error500":
            return web.Response(status=self.fail_status or 500, text="upstream trouble (injected)")
        if self.mode == "hang" or self.hang.intersection(methods):
            await self.released.wait()
            return web.Response(status=502, text="hung up (injected)")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>maintenance</html>")
        for method in methods:
            every = self.fail_every.get(method)
            if every and self.calls[method] % every == 0:
                self.failed[method] += 1
                return web.Response(status=502, text="bad gateway (injected)")
        if not all(isinstance(i, dict) for i in items):
            status, raw = await forward(self._http(), self.upstream, body)  # let the node judge it
            return web.Response(status=status, body=raw, content_type="application/json")

        answers = [await self._one(item) for item in items]
        for method in methods:
            if self.lose_answer.get(method, 0) > 0:
                self.lose_answer[method] -= 1
                self.failed[method] += 1
                return web.Response(status=502, text="answer lost (injected)")
        return web.json_response(answers if isinstance(parsed, list) else answers[0])

    async def _one(self, request: dict[str, Any]) -> dict[str, Any]:
        method = str(request.get("method", ""))
        params = request.get("params") or []
        if method in self.hide:
            return _error(request, -32601, f"the method {method} does not exist")
        if self.max_log_range is not None and method == "eth_getLogs":
            span = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if span > self.max_log_range:
                return _error(request, -32600, f"block range too large (max {self.max_log_range})")
        _, raw = await forward(self._http(), self.upstream, json.dumps(request).encode())
        answer: dict[str, Any] = json.loads(raw)
        if self.strip_block_timestamps and method == "eth_getLogs":
            for log in answer.get("result") or []:
                log.pop("blockTimestamp", None)
        if self.rewrite is not None and "result" in answer:
            answer["result"] = await self.rewrite(method, params, answer["result"])
        return answer

    def _http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the relay is not running"
        return self._session


@asynccontextmanager
async def running_relay(upstream: str) -> AsyncIterator[Relay]:
    """A :class:`Relay` in front of ``upstream`` (an HTTP JSON-RPC URL), stopped on exit."""
    relay = Relay(upstream)
    async with serving(relay._handle) as (relay.url, relay._runner), aiohttp.ClientSession() as s:
        relay._session = s
        try:
            yield relay
        finally:
            await relay.stop()
