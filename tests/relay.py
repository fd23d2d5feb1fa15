"""What the tests' JSON-RPC relays share: an aiohttp server on 127.0.0.1 that hands every POST
(any path: hosted RPCs put an API key there) to the relay's handler, and the forward upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
