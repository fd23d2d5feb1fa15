"""Where the enclave's proxies listen and connect: vsock, TCP, or a unix socket standing for vsock.

An endpoint is written ``vsock:CID:PORT``, ``tcp:HOST:PORT`` or ``unix:PATH``. Inside a Nitro
enclave every link to the parent instance is vsock. Where vsock cannot cross the boundary (a
container in a test, which has no vsock loopback), ``OYSTER_VSOCK_STANDIN=unix:DIR`` makes every
``vsock:CID:PORT`` endpoint ``unix:DIR/CID-PORT.sock`` instead: the same proxy code, another
transport (see :func:`resolve`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

STANDIN_ENV = "OYSTER_VSOCK_STANDIN"
VMADDR_CID_ANY = 0xFFFFFFFF

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class EndpointError(ValueError):
    """An endpoint string that names no usable address."""


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "vsock", "tcp" or "unix"
    host: str = ""  # tcp host; vsock CID as text
    port: int = 0
    path: str = ""  # unix

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.kind}:{self.host}:{self.port}"

    @property
    def cid(self) -> int:
        return VMADDR_CID_ANY if self.host == "-1" else int(self.host)


def parse(text: str) -> Endpoint:
    """``vsock:CID:PORT`` (CID -1 = any), ``tcp:HOST:PORT`` or ``unix:PATH``."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise EndpointError(
            f"endpoint {text!r}: expected vsock:CID:PORT, tcp:HOST:PORT or unix:PATH"
        )
    if kind == "unix":
        return Endpoint("unix", path=rest)
    if kind not in ("vsock", "tcp"):
        raise EndpointError(f"endpoint {text!r}: unknown kind {kind!r} (vsock, tcp or unix)")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise EndpointError(f"endpoint {text!r}: expected {kind}:HOST:PORT with a port 0-65535")
    if kind == "vsock" and not (host == "-1" or host.isdigit()):
        raise EndpointError(f"endpoint {text!r}: a vsock CID is a number (or -1 for any)")
    return Endpoint(kind, host=host, port=int(port_text))


def resolve(endpoint: Endpoint, standin: str | None = None) -> Endpoint:
    """``endpoint``, or its unix stand-in when ``OYSTER_VSOCK_STANDIN`` (or ``standin``) is set."""
    standin = standin if standin is not None else os.environ.get(STANDIN_ENV, "")
    if endpoint.kind != "vsock" or not standin:
        return endpoint
    folder = parse(standin)
    if folder.kind != "unix":
        raise EndpointError(f"{STANDIN_ENV}={standin!r}: expected unix:FOLDER")
    return Endpoint("unix", path=str(Path(folder.path) / f"{endpoint.host}-{endpoint.port}.sock"))


def _remove_stale_socket(path: str) -> None:
    """A socket left by a previous run of this same server (the supervisor restarted it)."""
    if Path(path).is_socket():
        Path(path).unlink()


async def connect(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    endpoint = resolve(endpoint)
    if endpoint.kind == "tcp":
        return await asyncio.open_connection(endpoint.host, endpoint.port)
    if endpoint.kind == "unix":
        return await asyncio.open_unix_connection(endpoint.path)
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (endpoint.cid, endpoint.port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def serve(endpoint: Endpoint, handler: Handler) -> asyncio.Server:
    endpoint = resolve(endpoint)
    if endpoint.kind == "tcp":
        return await asyncio.start_server(handler, endpoint.host, endpoint.port, reuse_address=True)
    if endpoint.kind == "unix":
        _remove_stale_socket(endpoint.path)
        server = await asyncio.start_unix_server(handler, endpoint.path)
        os.chmod(endpoint.path, 0o666)  # the other side of the stand-in may be another user
        return server
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        sock.bind((endpoint.cid, endpoint.port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return await asyncio.start_server(handler, sock=sock)
