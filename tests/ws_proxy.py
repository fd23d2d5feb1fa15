"""A websocket JSON-RPC relay in front of anvil, for tests of what anvil alone cannot show.

It accepts connections only on ``/<key>`` for the keys it is told (like a hosted RPC's API key in
the URL path; anvil itself serves only ``/``), relays frames both ways, and can drop every live
connection on demand (a websocket outage) or refuse new ones while "down".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiohttp
from aiohttp import web


class WsProxy:
    def __init__(self, upstream: str, keys: set[str]) -> None:
        self.upstream = upstream
        self.keys = keys
        self.down = False
        self.refuse_heads = False
        self.strip_block_timestamps = False
        """Drop ``blockTimestamp`` from log notifications, as older nodes send them."""
        """Answer ``eth_subscribe newHeads`` with an error, as some providers do."""
        self.connections = 0
        self.paths: list[str] = []
        self._live: set[web.WebSocketResponse] = set()
        self._subscribe_ids: dict[object, str] = {}
        self.subscriptions: list[str] = []
        """Ids of the ``logs`` subscriptions made through the proxy, oldest first."""
        self.head_subscriptions: list[str] = []
        self.url = ""

    async def inject(self, raw: str) -> None:
        """Send ``raw`` to every live client as if the RPC had sent it."""
        for ws in list(self._live):
            await ws.send_str(raw)

    async def inject_log(self, log: dict[str, object]) -> None:
        """A log notification on the latest subscription, as an RPC would send it."""
        message = {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": self.subscriptions[-1], "result": log},
        }
        await self.inject(json.dumps(message))

    async def drop_all(self) -> None:
        for ws in list(self._live):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.paths.append(key)
        if self.down or key not in self.keys:
            return web.Response(status=401 if not self.down else 503)
        client = web.WebSocketResponse()
        await client.prepare(request)
        self.connections += 1
        self._live.add(client)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(self.upstream) as upstream,
        ):

            async def pump_up() -> None:
                async for msg in client:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        request = json.loads(msg.data)
                        if request.get("method") == "eth_subscribe":
                            kind = str((request.get("params") or ["?"])[0])
                            if kind == "newHeads" and self.refuse_heads:
                                error = {"code": -32601, "message": "newHeads not supported"}
                                reply = {"jsonrpc": "2.0", "id": request.get("id"), "error": error}
                                await client.send_str(json.dumps(reply))
                                continue
                            self._subscribe_ids[request.get("id")] = kind
                        await upstream.send_str(msg.data)

            async def pump_down() -> None:
                async for msg in upstream:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        reply = json.loads(msg.data)
                        kind = self._subscribe_ids.get(reply.get("id"))
                        if kind is not None and "result" in reply:
                            subs = self.subscriptions if kind == "logs" else self.head_subscriptions
                            subs.append(reply["result"])
                        result = (reply.get("params") or {}).get("result")
                        if self.strip_block_timestamps and isinstance(result, dict):
                            result.pop("blockTimestamp", None)
                            await client.send_str(json.dumps(reply))
                            continue
                        await client.send_str(msg.data)

            tasks = [asyncio.ensure_future(pump_up()), asyncio.ensure_future(pump_down())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
                self._live.discard(client)
                await client.close()
        return client


@asynccontextmanager
async def running_ws_proxy(upstream: str, keys: set[str]) -> AsyncIterator[WsProxy]:
    proxy = WsProxy(upstream, keys)
    app = web.Application()
    app.router.add_get("/{key:.*}", proxy._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy.url = f"ws://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield proxy
    finally:
        await proxy.drop_all()
        await runner.cleanup()
