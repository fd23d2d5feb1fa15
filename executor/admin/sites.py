"""Where the admin API listens: an AF_VSOCK socket in the enclave, or TCP for development.

aiohttp's ``SockSite`` derives its name from ``getsockname()``, which for AF_VSOCK is a (cid, port)
tuple it cannot format, so vsock gets a small site of its own.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_runner import BaseSite

from executor.errors import ConfigError

VMADDR_CID_ANY = 0xFFFFFFFF


@dataclass(frozen=True)
class ListenAddress:
    """``vsock`` (cid, port) or ``tcp`` (host, port)."""

    kind: str
    host: str
    port: int

    @property
    def cid(self) -> int:
        return VMADDR_CID_ANY if self.host in ("", "-1", "any") else int(self.host)

    def __str__(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}"


def parse_vsock_addr(value: str) -> ListenAddress:
    cid, sep, port = value.rpartition(":")
    if not sep:
        raise ConfigError("--vsock-addr", f"must be CID:PORT, got {value!r}")
    try:
        address = ListenAddress("vsock", cid, int(port))
        address.cid  # noqa: B018 - validates the cid
    except ValueError as e:
        raise ConfigError("--vsock-addr", f"CID and PORT must be integers, got {value!r}") from e
    if not 0 <= address.port <= 0xFFFFFFFF:
        raise ConfigError("--vsock-addr", f"port out of range in {value!r}")
    return address


def parse_tcp_addr(value: str) -> ListenAddress:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError("--tcp-addr", f"must be HOST:PORT, got {value!r}")
    try:
        port_number = int(port)
    except ValueError as e:
        raise ConfigError("--tcp-addr", f"PORT must be an integer, got {value!r}") from e
    if not 0 <= port_number <= 65535:
        raise ConfigError("--tcp-addr", f"port out of range in {value!r}")
    return ListenAddress("tcp", host.strip("[]"), port_number)


def bind_vsock(cid: int, port: int) -> socket.socket:
    """A listening AF_VSOCK socket (raises OSError when the kernel has no vsock support)."""
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((cid, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class VsockSite(BaseSite):
    """An aiohttp site on an AF_VSOCK socket."""

    __slots__ = ("_cid", "_port", "_sock")

    def __init__(self, runner: web.BaseRunner, cid: int, port: int) -> None:
        super().__init__(runner)
        self._cid = cid
        self._port = port
        self._sock: socket.socket | None = None

    @property
    def name(self) -> str:
        if self._sock is not None:
            cid, port = self._sock.getsockname()
            return f"vsock://{cid}:{port}"
        return f"vsock://{self._cid}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._sock = bind_vsock(self._cid, self._port)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(server, sock=self._sock)
