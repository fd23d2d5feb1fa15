"""The operator's admin client: talks to the admin API over vsock (or TCP in development).

The same small HTTP/1.1 exchange serves both transports (one request per connection), so the TCP
tests exercise exactly the code that runs over vsock.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from executor.errors import AdminError, ExecutorError

MAX_RESPONSE_BYTES = 1024 * 1024


class AdminClientError(ExecutorError):
    pass


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class AdminClient:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("vsock", "http") or not parts.netloc:
            raise AdminClientError(
                f"--url must be vsock://CID:PORT/ or http://HOST:PORT/, got {url!r}"
            )
        host, _, port = parts.netloc.rpartition(":")
        if not host or not port.isdigit():
            raise AdminClientError(f"--url needs a host/cid and a port, got {url!r}")
        if parts.scheme == "vsock" and not host.isdigit():
            raise AdminClientError(f"vsock CID must be an integer, got {host!r}")
        self.scheme = parts.scheme
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout_s = timeout_s

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.scheme == "http":
            return await asyncio.open_connection(self.host, self.port)
        if not hasattr(socket, "AF_VSOCK"):
            raise AdminClientError("this system has no AF_VSOCK support")
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (int(self.host), self.port))
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> AdminResponse:
        """One request; ``body`` is sent as JSON, ``raw`` as the exact request body bytes."""
        payload = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Connection: close\r\nContent-Length: {len(payload)}\r\n"
        )
        if body is not None or raw is not None:
            head += "Content-Type: application/json\r\n"
        async with asyncio.timeout(self.timeout_s):
            reader, writer = await self._open()
            try:
                writer.write(head.encode() + b"\r\n" + payload)
                await writer.drain()
                raw = b""
                while chunk := await reader.read(65536):
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise AdminClientError("response from the executor is too large")
            finally:
                writer.close()
        return _parse_response(raw)

    async def wait_until_up(self, timeout_s: float = 60.0) -> None:
        """Poll ``GET /`` until the executor answers 200."""
        give_up = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < give_up:
            try:
                if (await self.request("GET", "/")).status == 200:
                    return
            except (OSError, TimeoutError, AdminClientError) as e:
                last = e
            await asyncio.sleep(0.5)
        raise AdminClientError(f"executor did not answer within {timeout_s:.0f}s: {last}")

    async def expect_ok(self, method: str, path: str, body: Any = None) -> AdminResponse:
        response = await self.request(method, path, body)
        if response.status != 200:
            raise AdminError(
                f"{method} {path} -> {response.status}: {response.text.strip()}", response.status
            )
        return response

    async def init(
        self, *, owner_address: str, executor_gas_key: str, store_gas_key: str, ws_api_key: str
    ) -> dict[str, Any]:
        """Inject both configs; return the tee details and the signed registration message."""
        await self.wait_until_up()
        await self.expect_ok("POST", "/immutable-config", {"owner_address_hex": owner_address})
        await self.expect_ok(
            "POST",
            "/mutable-config",
            {
                "executor_gas_key": executor_gas_key,
                "secret_store_gas_key": store_gas_key,
                "ws_api_key": ws_api_key,
            },
        )
        details = (await self.expect_ok("GET", "/tee-details")).json()
        message = (await self.expect_ok("GET", "/signed-registration-message")).json()
        return {"tee_details": details, "registration_message": message}


def _parse_response(raw: bytes) -> AdminResponse:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise AdminClientError("malformed HTTP response from the executor")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError) as e:
        raise AdminClientError(f"malformed status line {lines[0]!r}") from e
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return AdminResponse(status, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)
