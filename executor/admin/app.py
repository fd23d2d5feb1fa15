"""The operator's admin HTTP API (docs/protocol.md §6), as an aiohttp application.

It is served over vsock in production (``executor.admin.sites``). Every request is validated and
answered with a message that names the problem; nothing an operator sends can crash the daemon.
The endpoints, fields, status codes and plain-text success messages are those of the original
executor, so the existing operator tooling works unchanged.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aiohttp import web
from eth_account.signers.local import LocalAccount

from executor import redact
from executor.admin.inputs import MAX_BODY_BYTES, ZERO_ADDRESS, parse_immutable, parse_mutable
from executor.admin.secret_store import SecretStoreClient
from executor.chain.enclave_key import EnclaveKey
from executor.chain.requirements import storage_capacity_problem
from executor.errors import AdminError, ChainError, SecretStoreError
from executor.node import EXECUTOR_ENV

logger = logging.getLogger(__name__)


class AdminBackend(Protocol):
    """What the admin API needs from the running executor."""

    key: EnclaveKey
    job_capacity: int
    secret_store: SecretStoreClient | None
    owner: str | None
    gas_account: LocalAccount | None

    def ws_rpc_url(self, *, masked: bool = False) -> str: ...

    def set_owner(self, owner: str) -> None: ...

    def set_mutable_config(self, gas_account: LocalAccount, ws_api_key: str) -> None: ...

    async def min_storage_capacity(self) -> int | None:
        """The storage capacity the chain's contracts require (None: none)."""

    async def start_following(self) -> None:
        """Listen for this node's registration from the current block (no-op if already)."""

    async def chain_now(self) -> float:
        """Chain time (unix seconds), from a fresh read of the head: what the contracts judge a
        signature's age against."""

    def health(self) -> dict[str, Any]:
        """Node status and chain stream health (a small JSON object)."""

    def health_report(self) -> dict[str, Any]:
        """Whether the node can serve: ``healthy``, ``reasons`` (part -> why) and details."""

    def running_jobs(self) -> list[dict[str, Any]]:
        """The jobs being executed now."""


BACKEND = web.AppKey("backend", AdminBackend)


def build_admin_app(backend: AdminBackend) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
    app[BACKEND] = backend
    app.router.add_get("/", _index)
    app.router.add_get("/health", _health)
    app.router.add_get("/jobs", _jobs)
    app.router.add_post("/immutable-config", _immutable_config)
    app.router.add_post("/mutable-config", _mutable_config)
    app.router.add_get("/tee-details", _tee_details)
    app.router.add_get("/signed-registration-message", _registration_message)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Expected failures become a status and a one-line reason (secrets masked, even when a
    reason quotes another service's reply)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except AdminError as e:
        logger.info("admin %s %s -> %d: %s", request.method, request.path, e.status, e)
        return web.Response(status=e.status, text=f"{redact.redact(str(e))}\n")
    except SecretStoreError as e:
        logger.error("admin %s %s: %s", request.method, request.path, e)
        return web.Response(status=502, text=f"{redact.redact(str(e))}\n")
    except ChainError as e:
        logger.error("admin %s %s: %s", request.method, request.path, e)
        return web.Response(status=503, text=f"{redact.redact(str(e))}\n")


async def _index(request: web.Request) -> web.Response:
    # Always 200 (operator tooling checks the status only); the body tells a human how the
    # chain stream is doing.
    return web.json_response(request.app[BACKEND].health())


async def _health(request: web.Request) -> web.Response:
    # 503 with the reasons when the node cannot serve (executor.health); the index stays 200.
    report = request.app[BACKEND].health_report()
    return web.json_response(report, status=200 if report.get("healthy") else 503)


async def _jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": request.app[BACKEND].running_jobs()})


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise AdminError(f"request body larger than {MAX_BODY_BYTES} bytes", status=413) from e


async def _immutable_config(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    config = parse_immutable(await _read_body(request))  # every check before any side effect
    if backend.owner is not None:
        raise AdminError("Immutable params already configured!")
    if backend.secret_store is not None:
        await backend.secret_store.inject_immutable(config.owner_address_hex)
    if backend.owner is not None:  # a concurrent request won while we awaited the store
        raise AdminError("Immutable params already configured!")
    backend.set_owner(config.owner)
    logger.info("admin: owner set to %s", config.owner)
    return web.Response(text="Immutable params configured!\n")


async def _mutable_config(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    config = parse_mutable(  # every check before any side effect
        await _read_body(request), store_key_required=backend.secret_store is not None
    )
    for secret in (config.executor_gas_key, config.secret_store_gas_key, config.ws_api_key):
        redact.register_secret(secret)  # before anything can echo them (e.g. a store's reply)
    if backend.secret_store is not None:
        await backend.secret_store.inject_mutable(config.secret_store_gas_key, config.ws_api_key)
    backend.set_mutable_config(config.gas_account, config.ws_api_key)
    logger.info("admin: mutable config set (executor gas address %s)", config.gas_account.address)
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
            # Never the ws API key, whatever its length (the redactor leaves short ones alone).
            "ws_rpc_url": redact.redact(backend.ws_rpc_url(masked=True)),
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
    # Never sign a registration the contracts would make useless (every output reverting).
    problem = storage_capacity_problem(storage_capacity, await backend.min_storage_capacity())
    if problem is not None:
        logger.error("admin: registration message refused: %s", problem)
        raise AdminError(f"Registration refused: {problem}")
    # The chain's time, not the host's: the contract refuses a signature older than its max age
    # by block time, and the host's clock may lag the chain.
    await backend.start_following()
    sign_timestamp = int(await backend.chain_now())
    signature = backend.key.sign_registration(
        backend.owner, backend.job_capacity, storage_capacity, EXECUTOR_ENV, sign_timestamp
    )
    return web.json_response(
        {
            "job_capacity": backend.job_capacity,
            "storage_capacity": storage_capacity,
            "sign_timestamp": sign_timestamp,
            "env": EXECUTOR_ENV,
            "owner": backend.owner,
            "signature": "0x" + signature.hex(),
            # what the production TeeManager's attestation is checked against (owner tooling)
            "enclave_public_key": "0x" + backend.key.public_key.hex(),
        }
    )
