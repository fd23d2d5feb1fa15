"""HTTP JSON-RPC endpoints with failover (``http_rpc_url`` may list several, tried in order).

``FailoverProvider`` is a web3 async provider: each request goes to the current endpoint; a
connection error, a timeout, an HTTP 5xx/429 or a body that is not JSON-RPC moves it to the next
endpoint and the request is sent there, until every endpoint failed once. JSON-RPC *errors*
(a revert, "nonce too low", ...) are answers, not failures: they are returned as they are.

``RpcEndpoints`` bundles what the daemon needs: ``w3``, one ``AsyncWeb3`` whose reads fail over,
and ``clients``, one ``AsyncWeb3`` per endpoint (the code fetcher asks them in turn and skips an
endpoint whose answer fails verification; raw transactions are broadcast to all of them).

``call`` is the one way the executor makes a JSON-RPC call without web3's request pipeline (the
reads of ``transactions.reads``, the code fetcher); ``request`` and ``result_of`` are its two
halves for callers with their own transport (``doctor``). An error answer raises
``RpcCallError``, a ``Web3RPCError`` as web3 would raise it (``transactions.policy`` classifies it
the same way) that is also a ``ChainError``.

Endpoint URLs may carry API keys: they appear in logs only through ``executor.redact.url``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, cast

import aiohttp
from web3 import AsyncWeb3
from web3.exceptions import ProviderConnectionError, Web3RPCError
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from executor import redact
from executor.errors import ChainError

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 10.0
"""Per request and endpoint; a slower endpoint is treated as down for that request."""


_METHOD_MISSING_CODES = {-32601, -32004}
_METHOD_MISSING_WORDS = ("not found", "not supported", "unsupported", "does not exist", "not avail")


class RpcCallError(Web3RPCError, ChainError):
    """A JSON-RPC call answered with an error object, or with something that is not JSON-RPC.

    ``message`` is the node's own text (what ``classify_rpc_error`` matches), ``code`` its error
    code (``None`` if it gave none), ``rpc_response`` the whole answer.
    """

    def __init__(self, method: str, response: Any) -> None:
        error = response.get("error") if isinstance(response, dict) else None
        if error is None:
            error = {"message": f"not a JSON-RPC answer: {str(response)[:100]}"}
        self.method = method
        self.code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message", "") if isinstance(error, dict) else error
        answer = cast(RPCResponse, response) if isinstance(response, dict) else None
        super().__init__(str(message), rpc_response=answer)

    def __str__(self) -> str:
        return f"{self.method} answered error {self.code}: {self.message[:200]}"

    @property
    def method_missing(self) -> bool:
        """The node does not offer ``method`` (so the caller may try another way)."""
        if self.code in _METHOD_MISSING_CODES:
            return True
        text = self.message.lower()
        return "method" in text and any(word in text for word in _METHOD_MISSING_WORDS)


def request(method: str, params: list[Any], request_id: int = 1) -> dict[str, Any]:
    """The JSON-RPC request object for ``method(params)``."""
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def result_of(method: str, response: Any) -> Any:
    """The ``result`` of a JSON-RPC answer (``None`` where the node has nothing).

    Raises ``RpcCallError`` for an error answer and for anything that is not a JSON-RPC answer.
    """
    if not isinstance(response, dict) or response.get("error") is not None:
        raise RpcCallError(method, response)
    if "result" not in response:
        raise RpcCallError(method, response)
    return response["result"]


async def call(w3: AsyncWeb3[Any], method: str, params: list[Any]) -> Any:
    """The raw ``result`` of one JSON-RPC call through ``w3``'s provider (no web3 formatting).

    Failover and timeouts are the provider's; transport failures propagate as it raises them.
    """
    return result_of(method, await w3.provider.make_request(RPCEndpoint(method), params))


class EndpointFailure(Exception):
    """Internal: one endpoint could not answer one request."""


class FailoverProvider(AsyncJSONBaseProvider):
    """Sends each JSON-RPC request to the current endpoint, failing over to the next one."""

    logger = logging.getLogger(__name__)

    def __init__(self, urls: Sequence[str], *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
        if not urls:
            raise ValueError("FailoverProvider needs at least one endpoint URL")
        super().__init__()
        self.urls = tuple(urls)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self.failovers = 0
        """How many times a request moved to another endpoint (health / tests)."""

    @property
    def current_url(self) -> str:
        return self.urls[self._current]

    @property
    def endpoint_uri(self) -> str:
        """The endpoint requests go to now (the name web3's HTTP provider gives it too)."""
        return self.current_url

    def __str__(self) -> str:
        return f"failover RPC over {len(self.urls)} endpoint(s)"

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        return cast(RPCResponse, await self._post_with_failover(method, body))

    async def make_batch_request(
        self, requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        body = self.encode_batch_rpc_request(requests)
        answer = await self._post_with_failover(RPCEndpoint("batch"), body)
        if isinstance(answer, list):
            return sorted(answer, key=lambda r: int(r.get("id") or 0))
        return cast(RPCResponse, answer)

    async def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            response = await self.make_request(RPCEndpoint("web3_clientVersion"), [])
        except ProviderConnectionError:
            if show_traceback:
                raise
            return False
        return "result" in response

    async def disconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post_with_failover(self, method: str, body: bytes) -> Any:
        errors: list[str] = []
        start = self._current
        for step in range(len(self.urls)):
            index = (start + step) % len(self.urls)
            url = self.urls[index]
            try:
                answer = await self._post(url, body)
            except EndpointFailure as e:
                errors.append(f"{redact.url(url)}: {e}")
                if len(self.urls) > 1:
                    nxt = (index + 1) % len(self.urls)
                    logger.warning(
                        "rpc %s failed on %s (%s); failing over to %s",
                        method,
                        redact.url(url),
                        e,
                        redact.url(self.urls[nxt]),
                    )
                    if self._current == index:
                        self._current = nxt
                        self.failovers += 1
                continue
            return answer
        raise ProviderConnectionError(
            redact.redact(f"{method}: every RPC endpoint failed: " + "; ".join(errors))
        )

    async def _post(self, url: str, body: bytes) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Content-Type": "application/json"}, timeout=self._timeout
            )
        try:
            async with self._session.post(url, data=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError) as e:
            raise EndpointFailure(_describe(e)) from e
        except TimeoutError as e:
            raise EndpointFailure(f"no answer within {self._timeout.total:g}s") from e
        if status >= 500 or status == 429:
            raise EndpointFailure(f"HTTP {status}")
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EndpointFailure(f"HTTP {status} with a body that is not JSON") from e
        if not isinstance(answer, (dict, list)):
            raise EndpointFailure(f"HTTP {status} with a body that is not JSON-RPC")
        return answer


def _describe(e: BaseException) -> str:
    # aiohttp's messages quote the URL: keep only the exception type and the OS reason.
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect ({e.os_error.strerror or type(e.os_error).__name__})"
    return type(e).__name__


class RpcEndpoints:
    """The failover ``w3`` for reads and one client per endpoint; ``close()`` releases them."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
        for url in urls:
            redact.register_url_credentials(url)
        self.provider = FailoverProvider(urls, timeout_s=timeout_s)
        self.w3: AsyncWeb3[Any] = AsyncWeb3(self.provider)
        # One endpoint each, through the same lean provider: web3's own HTTP provider takes a
        # thread-pool hop per request for its session cache (about 1.3 ms more per call here,
        # on the critical path of every output's broadcast).
        self.clients: tuple[AsyncWeb3[Any], ...] = tuple(
            AsyncWeb3(FailoverProvider([url], timeout_s=timeout_s)) for url in urls
        )

    async def close(self) -> None:
        await self.provider.disconnect()
        for client in self.clients:
            try:
                await client.provider.disconnect()
            except Exception as e:  # closing must go on for the others
                logger.debug("closing an RPC client failed: %s", e)
        await asyncio.sleep(0)
