"""Client of the enclave's secret store config API (a sibling service on 127.0.0.1).

The executor forwards the operator's config to it and reads its gas address and storage capacity
(docs/protocol.md §6). Every failure raises ``SecretStoreError`` with a message fit for the
operator.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from executor.errors import SecretStoreError

TIMEOUT = aiohttp.ClientTimeout(total=10)


class SecretStoreClient:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.base_url = f"http://{host}:{port}"

    async def inject_immutable(self, owner_address_hex: str) -> None:
        await self._post("/immutable-config", {"owner_address_hex": owner_address_hex})

    async def inject_mutable(self, gas_key_hex: str, ws_api_key: str) -> None:
        await self._post("/mutable-config", {"gas_key_hex": gas_key_hex, "ws_api_key": ws_api_key})

    async def gas_address(self) -> str:
        details = await self._get("/store-details")
        value = details.get("gas_address")
        if not isinstance(value, str):
            raise SecretStoreError("secret store /store-details has no 'gas_address' string")
        return value

    async def storage_capacity(self) -> int:
        details = await self._get("/register-details")
        value = details.get("storage_capacity")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SecretStoreError(
                "secret store /register-details has no non-negative integer 'storage_capacity'"
            )
        return value

    async def _post(self, path: str, body: dict[str, str]) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as session,
                session.post(self.base_url + path, json=body) as resp,
            ):
                text = await resp.text(errors="replace")
                if resp.status >= 400:
                    raise SecretStoreError(
                        f"secret store {path} answered {resp.status}: {text.strip()[:300]}",
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SecretStoreError(f"secret store at {self.base_url} unreachable: {e}") from e

    async def _get(self, path: str) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as session,
                session.get(self.base_url + path) as resp,
            ):
                if resp.status >= 400:
                    text = await resp.text(errors="replace")
                    raise SecretStoreError(
                        f"secret store {path} answered {resp.status}: {text.strip()[:300]}"
                    )
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise SecretStoreError(f"secret store {path} failed: {e}") from e
        if not isinstance(data, dict):
            raise SecretStoreError(f"secret store {path} did not answer a JSON object")
        return data
