"""The one HTTP request the sandbox makes per job: a POST to a local workerd, on a connection of its
own, read up to a bound.

It is lighter than aiohttp's client on every job's critical path (BENCHMARKS.md has the figures).
This is all the sandbox needs of HTTP/1.1: it sends exactly ``Host``, ``Content-Length`` and
``Connection: close`` (the request headers a job's worker has always seen), then reads the status
line, the headers and a body framed by ``Content-Length``, by chunks, or by the end of the
connection. It keeps at most the ``limit`` bytes of body its caller asks for (its cap + 1) and reads
no further. Anything that is not a well-formed HTTP/1.x response, or a connection that breaks,
raises :class:`HttpError`; the sandbox turns that into its own failure (nothing is submitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MAX_HEAD_BYTES = 64 * 1024
"""Status line and headers together; a larger head is refused (aiohttp refused 8 KiB lines)."""


class HttpError(OSError):
    """The response is not well-formed HTTP/1.x, or the connection failed."""


@dataclass
class KeptConnection:
    """A connection left open after a complete exchange, for one more request soon after."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float
    """``time.monotonic()`` when its last response was read to the end."""

    def usable(self, within_s: float) -> bool:
        """Open, not closed by the peer, and idle for less than ``within_s``."""
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < within_s
        )

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Exchange:
    """One request to ``http://127.0.0.1:<port>/``: entering sends it and reads the status line and
    headers, :meth:`read` reads (part of) the body, leaving closes the connection::

        async with Exchange(port, body) as exchange:
            verdict = exchange.headers.get("x-...")
            body = await exchange.read(limit)

    ``reuse`` sends the request on a connection kept from an earlier exchange instead of a new one.
    ``keep_alive`` asks the server to keep the connection: after a body read to its end,
    :meth:`keep` hands it over instead of closing it.
    """

    def __init__(
        self,
        port: int,
        body: bytes,
        *,
        method: str = "POST",
        keep_alive: bool = False,
        reuse: KeptConnection | None = None,
    ) -> None:
        self._port = port
        self._body = body
        self._method = method
        self._keep_alive = keep_alive
        self._reuse = reuse
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._complete = False
        self._kept = False
        self.status = 0
        self.headers: dict[str, str] = {}
        """Lower-cased names; a repeated header keeps its first value."""

    async def __aenter__(self) -> Exchange:
        where = f"127.0.0.1:{self._port}"
        if self._reuse is not None:
            self._reader, self._writer = self._reuse.reader, self._reuse.writer
        else:
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self._port, limit=MAX_HEAD_BYTES
                )
            except OSError as e:
                raise HttpError(f"cannot connect to {where}: {e}") from e
        try:
            head = f"{self._method} / HTTP/1.1\r\nHost: {where}\r\n"
            if self._method == "POST":
                head += f"Content-Length: {len(self._body)}\r\n"
            if not self._keep_alive:
                head += "Connection: close\r\n"
            self._writer.write((head + "\r\n").encode("ascii") + self._body)
            await _guarded(self._writer.drain(), where)
            self.status, self.headers = await _guarded(_read_head(self._reader), where)
        except BaseException:
            await self._close()
            raise
        return self

    async def read(self, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes (nothing more is read)."""
        assert self._reader is not None, "not entered"
        where = f"127.0.0.1:{self._port}"
        body, self._complete = await _guarded(_read_body(self._reader, self.headers, limit), where)
        return body

    def keep(self) -> KeptConnection | None:
        """The connection, left open for another request, if this exchange asked for that, the
        server did not refuse, and the body was read to its end (with a ``Content-Length``)."""
        refused = "close" in self.headers.get("connection", "").lower()
        if not (self._keep_alive and self._complete) or refused or self._writer is None:
            return None
        assert self._reader is not None
        self._kept = True
        return KeptConnection(self._reader, self._writer, time.monotonic())

    async def __aexit__(self, *exc: object) -> None:
        if not self._kept:
            await self._close()

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


async def post(port: int, body: bytes, *, limit: int) -> bytes:
    """POST ``body`` and return the response body's first ``limit`` bytes (status ignored)."""
    async with Exchange(port, body) as exchange:
        return await exchange.read(limit)


async def _guarded(step: Awaitable[T], where: str) -> T:
    try:
        return await step
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        raise HttpError(f"the connection to {where} broke: {e!r}") from e
    except asyncio.LimitOverrunError as e:
        raise HttpError(
            f"a response line from {where} is longer than {MAX_HEAD_BYTES} bytes"
        ) from e


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed response header line: {line[:100]!r}")
        headers.setdefault(name.lower(), value.strip())
    return int(code), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], limit: int
) -> tuple[bytes, bool]:
    """The body's first ``limit`` bytes, and whether it ended there with a ``Content-Length``
    framing (only then can the connection carry another exchange)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit), False
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HttpError(f"malformed Content-Length {length[:40]!r}")
        wanted = min(int(length), limit)
        data = await reader.read(wanted) if wanted else b""
        while len(data) < wanted:
            more = await reader.read(wanted - len(data))
            if not more:
                raise HttpError(f"the body ended after {len(data)} of {length} bytes")
            data += more
        return data, wanted == int(length)
    return await _read_to_end(reader, limit), False


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    kept = 0
    while kept < limit:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise HttpError(f"malformed chunk size {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            break  # trailers, if any, are not read: nothing of them is kept
        take = min(size, limit - kept)
        chunks.append(await reader.readexactly(take))
        kept += take
        if take == size:
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("a chunk is not followed by CRLF")
    return b"".join(chunks)


async def _read_to_end(reader: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    kept = 0
    while kept < limit:
        chunk = await reader.read(limit - kept)
        if not chunk:
            break
        chunks.append(chunk)
        kept += len(chunk)
    return b"".join(chunks)
