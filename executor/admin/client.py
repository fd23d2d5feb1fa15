"""The operator's admin client: talks to the admin API over vsock (or TCP in development).

HTTP is aiohttp's client on both transports; over vsock a small connector hands aiohttp a connected
AF_VSOCK socket (the way aiohttp's own ``UnixConnector`` hands it a unix socket), so the TCP tests
exercise the same request and response handling that runs over vsock. Every failure (the executor
unreachable, a malformed or oversized reply) is an ``AdminClientError`` naming the problem.

``init`` cannot half-configure a node: it validates every input before it sends anything, then
reads the node's state and only sends what applies (docs/operator.md §7).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from eth_utils import to_checksum_address

from executor.admin.inputs import ZERO_ADDRESS, hex_bytes, private_key
from executor.errors import AdminClientError, AdminError, AdminRefused

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = ["AdminClient", "AdminClientError", "AdminRefused", "AdminResponse", "InitInputs"]

MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AdminClientError(f"the executor answered something that is not JSON: {e}") from e


@dataclass(frozen=True, repr=False)
class InitInputs:
    """``admin init``'s inputs, checked in full (``check``) before anything is sent."""

    owner_address: str
    executor_gas_key: str
    store_gas_key: str
    ws_api_key: str

    def __repr__(self) -> str:
        return f"InitInputs(owner {self.owner_address})"  # never the keys

    @classmethod
    def check(
        cls, *, owner_address: str, executor_gas_key: str, store_gas_key: str, ws_api_key: str
    ) -> InitInputs:
        """The same checks the node makes (``executor.admin.inputs``), as ``AdminClientError``s
        naming the flag; the owner comes back checksummed."""
        from executor.admin.inputs import parse_mutable

        with _as_flag("--owner-address", "owner_address_hex"):
            owner = hex_bytes(owner_address, "owner_address_hex", 20)
            if owner == bytes(20):
                raise AdminError("the zero address cannot own an executor")
        with _as_flag("--executor-gas-key", "executor_gas_key"):
            private_key(executor_gas_key, "executor_gas_key")
        with _as_flag("--store-gas-key", "secret_store_gas_key"):
            if store_gas_key:
                private_key(store_gas_key, "secret_store_gas_key")
        with _as_flag("--ws-api-key", "ws_api_key"):
            body = {
                "executor_gas_key": executor_gas_key,
                "secret_store_gas_key": store_gas_key,
                "ws_api_key": ws_api_key,
            }
            parse_mutable(json.dumps(body).encode(), store_key_required=False)
        return cls(to_checksum_address(owner), executor_gas_key, store_gas_key, ws_api_key)


@contextmanager
def _as_flag(flag: str, field: str) -> Iterator[None]:
    try:
        yield
    except AdminError as e:
        reason = str(e).replace(f"field '{field}'", "").strip(" :") or str(e)
        raise AdminClientError(f"{flag}: {reason} (nothing was sent)") from e


class VsockConnector(aiohttp.BaseConnector):
    """Connections to one AF_VSOCK (cid, port), for aiohttp's client."""

    def __init__(self, cid: int, port: int) -> None:
        super().__init__(force_close=True)
        self._cid = cid
        self._port = port

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's connector interface
    ) -> ResponseHandler:
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise AdminClientError("this system has no AF_VSOCK support (vsock:// needs Linux)")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout.sock_connect or timeout.total):
                await self._loop.sock_connect(sock, (self._cid, self._port))
            _, protocol = await self._loop.create_connection(self._factory, sock=sock)
        except BaseException as e:
            sock.close()
            if isinstance(e, OSError):
                raise aiohttp.ClientConnectorError(req.connection_key, e) from e
            raise
        return protocol


class AdminClient:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("vsock", "http") or not parts.netloc:
            raise AdminClientError(
                f"--url must be vsock://CID:PORT/ or http://HOST:PORT/, got {url!r}"
            )
        host, _, port = parts.netloc.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 2**32:
            raise AdminClientError(f"--url needs a host/cid and a port, got {url!r}")
        if parts.scheme == "vsock" and not host.isdigit():
            raise AdminClientError(f"--url: vsock CID must be an integer, got {host!r}")
        if parts.scheme == "http" and int(port) > 65535:
            raise AdminClientError(f"--url: TCP port out of range in {url!r}")
        self.url = url
        self.scheme = parts.scheme
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout_s = timeout_s

    def _session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        if self.scheme == "vsock":
            return aiohttp.ClientSession(
                base_url="http://vsock",  # only the Host header: the connector picks the socket
                connector=VsockConnector(int(self.host), self.port),
                timeout=timeout,
            )
        return aiohttp.ClientSession(
            base_url=f"http://{_bracketed(self.host)}:{self.port}",
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=timeout,
        )

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> AdminResponse:
        """One request; ``body`` is sent as JSON, ``raw`` as the exact request body bytes."""
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            async with (
                self._session() as session,
                session.request(method, path, data=payload, headers=headers) as response,
            ):
                data = await response.content.read(MAX_RESPONSE_BYTES + 1)
                if len(data) > MAX_RESPONSE_BYTES:
                    raise AdminClientError("response from the executor is too large")
                return AdminResponse(response.status, data)
        except TimeoutError as e:
            raise AdminClientError(
                f"the executor at {self.url} did not answer within {self.timeout_s:g}s"
            ) from e
        except aiohttp.ClientConnectorError as e:
            raise AdminClientError(
                f"cannot connect to the executor at {self.url}: {e.os_error.strerror or e.os_error}"
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            raise AdminClientError(
                f"talking to the executor at {self.url} failed: {e or type(e).__name__}"
            ) from e

    async def wait_until_up(self, timeout_s: float = 60.0) -> None:
        """Poll ``GET /`` until the executor answers 200."""
        give_up = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < give_up:
            try:
                if (await self.request("GET", "/")).status == 200:
                    return
            except AdminClientError as e:
                last = e
            await asyncio.sleep(0.5)
        raise AdminClientError(f"executor did not answer within {timeout_s:.0f}s: {last}")

    async def expect_ok(self, method: str, path: str, body: Any = None) -> AdminResponse:
        response = await self.request(method, path, body)
        if response.status != 200:
            raise AdminRefused(method, path, response.status, response.text.strip())
        return response

    async def get_json(self, path: str) -> Any:
        return (await self.expect_ok("GET", path)).json()

    async def init(
        self, *, owner_address: str, executor_gas_key: str, store_gas_key: str, ws_api_key: str
    ) -> dict[str, Any]:
        """Configure the node; return the tee details and the signed registration message.

        Every input is checked before anything is sent (a typo changes nothing). The owner is
        sent only to a node that has none; a node already owned by the same address goes on with
        the mutable part (key rotation); one owned by another address is refused, unchanged.
        """
        inputs = InitInputs.check(
            owner_address=owner_address,
            executor_gas_key=executor_gas_key,
            store_gas_key=store_gas_key,
            ws_api_key=ws_api_key,
        )
        await self.wait_until_up(self.timeout_s)
        index = await self.get_json("/")
        if isinstance(index, dict) and index.get("secret_store") and not inputs.store_gas_key:
            raise AdminClientError(
                "--store-gas-key: required, this executor runs with a secret store "
                "(nothing was sent)"
            )
        before = await self.get_json("/tee-details")
        if not isinstance(before, dict):
            raise AdminClientError("GET /tee-details did not answer a JSON object")
        current = str(before.get("owner_address") or ZERO_ADDRESS)
        if current.lower() == ZERO_ADDRESS:
            await self.expect_ok(
                "POST", "/immutable-config", {"owner_address_hex": inputs.owner_address}
            )
        elif current.lower() != inputs.owner_address.lower():
            raise AdminClientError(
                f"this executor is already owned by {current}, not {inputs.owner_address}: the "
                "owner is set once per enclave and cannot change (nothing was sent; a new "
                "owner needs a new enclave)"
            )
        await self.expect_ok(
            "POST",
            "/mutable-config",
            {
                "executor_gas_key": inputs.executor_gas_key,
                "secret_store_gas_key": inputs.store_gas_key,
                "ws_api_key": inputs.ws_api_key,
            },
        )
        details = await self.get_json("/tee-details")
        message = await self.get_json("/signed-registration-message")
        return {"tee_details": details, "registration_message": message}


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
