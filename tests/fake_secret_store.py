"""A stand-in for the enclave's secret store config API (another enclave service, not runnable
here). It speaks the interface the executor uses: the two config POSTs and the two detail GETs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from eth_account import Account


@dataclass
class FakeSecretStore:
    storage_capacity: int = 1_000_000
    owner: str | None = None
    gas_address: str = "0x" + "00" * 20
    ws_api_key: str | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    port: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/immutable-config", self._immutable)
        app.router.add_post("/mutable-config", self._mutable)
        app.router.add_get("/store-details", self._details)
        app.router.add_get("/register-details", self._register)
        return app

    async def _immutable(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("immutable", body))
        if self.owner is not None:
            return web.Response(status=400, text="Immutable params already configured!\n")
        self.owner = body["owner_address_hex"]
        return web.Response(text="Immutable params configured!\n")

    async def _mutable(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("mutable", body))
        try:
            self.gas_address = Account.from_key(body["gas_key_hex"]).address
        except (ValueError, KeyError):
            return web.Response(status=400, text="Invalid gas private key provided!\n")
        self.ws_api_key = body["ws_api_key"]
        return web.Response(text="Mutable params configured!\n")

    async def _details(self, request: web.Request) -> web.Response:
        return web.json_response({"gas_address": self.gas_address, "owner_address": self.owner})

    async def _register(self, request: web.Request) -> web.Response:
        if self.owner is None:
            return web.Response(status=400, text="Immutable params not configured yet!\n")
        return web.json_response({"storage_capacity": self.storage_capacity})


@asynccontextmanager
async def running_secret_store(store: FakeSecretStore) -> AsyncIterator[FakeSecretStore]:
    runner = web.AppRunner(store.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    store.port = runner.addresses[0][1]
    try:
        yield store
    finally:
        await runner.cleanup()
