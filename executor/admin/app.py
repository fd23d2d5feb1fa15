"""The operator's admin HTTP API (docs/protocol.md §6), as an aiohttp application.

It is served over vsock in production (``executor.admin.sites``). Every request is validated and
answered with a message that names the problem; nothing an operator sends can crash the daemon.
The endpoints, fields, status codes and plain-text success messages are those of the original
executor, so the existing operator tooling works unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Protocol

from aiohttp import web
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from executor import redact
from executor.admin.secret_store import SecretStoreClient
from executor.chain.signer import EnclaveKey
from executor.chain.txs import account_from_key
from executor.errors import AdminError, ChainError, SecretStoreError
from executor.node import EXECUTOR_ENV

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
ZERO_ADDRESS = "0x" + "00" * 20
_WS_API_KEY = re.compile(r"[A-Za-z0-9_-]*")


class AdminBackend(Protocol):
    """What the admin API needs from the running executor."""

    key: EnclaveKey
    job_capacity: int
    secret_store: SecretStoreClient | None
    owner: str | None
    gas_account: LocalAccount | None

    def ws_rpc_url(self) -> str: ...

    def set_owner(self, owner: str) -> None: ...

    def set_mutable_config(self, gas_account: LocalAccount, ws_api_key: str) -> None: ...

    async def start_following(self) -> None:
        """Listen for this node's registration from the current block (no-op if already)."""


BACKEND = web.AppKey("backend", AdminBackend)


def build_admin_app(backend: AdminBackend) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
    app[BACKEND] = backend
    app.router.add_get("/", _index)
    app.router.add_post("/immutable-config", _immutable_config)
    app.router.add_post("/mutable-config", _mutable_config)
    app.router.add_get("/tee-details", _tee_details)
    app.router.add_get("/signed-registration-message", _registration_message)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except AdminError as e:
        logger.info("admin %s %s -> %d: %s", request.method, request.path, e.status, e)
        return web.Response(status=e.status, text=f"{e}\n")
    except SecretStoreError as e:
        logger.error("admin %s %s: %s", request.method, request.path, e)
        return web.Response(status=502, text=f"{e}\n")
    except ChainError as e:
        logger.error("admin %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=f"{e}\n")


async def _index(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _json_object(request: web.Request, *fields: str) -> dict[str, str]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise AdminError(f"request body larger than {MAX_BODY_BYTES} bytes", status=413) from e
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdminError(f"request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise AdminError("request body must be a JSON object")
    values = {}
    for field in fields:
        value = body.get(field)
        if not isinstance(value, str):
            raise AdminError(f"field '{field}' is required and must be a string")
        values[field] = value
    return values


def _hex_bytes(value: str, name: str, length: int) -> bytes:
    digits = value[2:] if value.startswith(("0x", "0X")) else value
    try:
        raw = bytes.fromhex(digits)
    except ValueError as e:
        raise AdminError(f"{name} is not a valid hex string") from e
    if len(raw) != length:
        raise AdminError(f"{name} must be {length} bytes long, got {len(raw)}")
    return raw


async def _immutable_config(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _json_object(request, "owner_address_hex")
    owner = to_checksum_address(_hex_bytes(body["owner_address_hex"], "owner address", 20))
    if backend.owner is not None:
        raise AdminError("Immutable params already configured!")
    if backend.secret_store is not None:
        await backend.secret_store.inject_immutable(body["owner_address_hex"])
    if backend.owner is not None:  # a concurrent request won while we awaited the store
        raise AdminError("Immutable params already configured!")
    backend.set_owner(owner)
    logger.info("admin: owner set to %s", owner)
    return web.Response(text="Immutable params configured!\n")


async def _mutable_config(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _json_object(request, "executor_gas_key", "secret_store_gas_key", "ws_api_key")
    for secret in body.values():  # before anything can echo them (e.g. a store's error reply)
        redact.register_secret(secret)
    if not _WS_API_KEY.fullmatch(body["ws_api_key"]):
        raise AdminError("API key contains invalid characters! (allowed: A-Z a-z 0-9 - _)")
    _hex_bytes(body["executor_gas_key"], "executor gas key", 32)
    try:
        gas_account = account_from_key(body["executor_gas_key"])
    except ValueError as e:
        raise AdminError(f"executor gas key {e}") from e
    if backend.secret_store is not None:
        await backend.secret_store.inject_mutable(body["secret_store_gas_key"], body["ws_api_key"])
    backend.set_mutable_config(gas_account, body["ws_api_key"])
    logger.info("admin: mutable config set (executor gas address %s)", gas_account.address)
    return web.Response(text="Mutable params configured!\n")


async def _tee_details(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    store_gas = ZERO_ADDRESS
    if backend.secret_store is not None:
        store_gas = await backend.secret_store.gas_address()
    return web.json_response(
        {
            "enclave_address": backend.key.address,
            "enclave_public_key": "0x" + backend.key.public_key.hex(),
            "owner_address": backend.owner or ZERO_ADDRESS,
            "executor_gas_address": (
                backend.gas_account.address if backend.gas_account else ZERO_ADDRESS
            ),
            "secret_store_gas_address": store_gas,
            "ws_rpc_url": backend.ws_rpc_url(),
        }
    )


async def _registration_message(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    if backend.owner is None:
        raise AdminError("Immutable params not configured yet!")
    if backend.gas_account is None:
        raise AdminError("Mutable params not configured yet!")
    storage_capacity = 0
    if backend.secret_store is not None:
        storage_capacity = await backend.secret_store.storage_capacity()
    sign_timestamp = int(time.time())
    signature = backend.key.sign_registration(
        backend.owner, backend.job_capacity, storage_capacity, EXECUTOR_ENV, sign_timestamp
    )
    await backend.start_following()
    return web.json_response(
        {
            "job_capacity": backend.job_capacity,
            "storage_capacity": storage_capacity,
            "sign_timestamp": sign_timestamp,
            "env": EXECUTOR_ENV,
            "owner": backend.owner,
            "signature": "0x" + signature.hex(),
        }
    )
