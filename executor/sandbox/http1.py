"""The one HTTP request the sandbox makes per job: a POST to a local workerd, read up to a bound.

HTTP/1.1 itself is h11's (a kept, sans-I/O library); this module only moves its bytes over an
asyncio stream. The request carries exactly ``Host``, ``Content-Length`` and ``Connection: close``
(the request headers a job's worker has always seen). At most the ``limit`` bytes of body the
caller asks for (its cap + 1) are kept, and the reading stops there. Anything that is not a
well-formed HTTP/1.x response, or a connection that breaks, raises :class:`HttpError`; the
sandbox turns that into its own failure (nothing is submitted, unless the job exhausted its
memory: :mod:`.paths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import h11

MAX_HEAD_BYTES = 64 * 1024
"""Status line and headers together; a larger head is refused."""
READ_BYTES = 64 * 1024
T = TypeVar("T")


class HttpError(OSError):
    """The response is not well-formed HTTP/1.x, or the connection failed."""


@dataclass
class KeptConnection:
    """A connection left open after a complete exchange, for one more request soon after."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float
    """``time.monotonic()`` when its last response was read to the end."""
    protocol: h11.Connection | None = None

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
        self._where = f"127.0.0.1:{port}"
        self._body = body
        self._method = method
        self._keep_alive = keep_alive
        self._reuse = reuse
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._complete = False
        self._kept = False
        self.status = 0
        self.headers: dict[str, str] = {}
        """Lower-cased names; a repeated header keeps its first value."""

    async def __aenter__(self) -> Exchange:
        if self._reuse is not None and self._reuse.protocol is not None:
            self._reader, self._writer = self._reuse.reader, self._reuse.writer
            self._h11 = self._reuse.protocol
            self._h11.start_next_cycle()
        else:
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
            except OSError as e:
                raise HttpError(f"cannot connect to {self._where}: {e}") from e
        try:
            headers = [("Host", self._where)]
            if self._method != "GET":
                headers.append(("Content-Length", str(len(self._body))))
            if not self._keep_alive:
                headers.append(("Connection", "close"))
            try:
                request = h11.Request(method=self._method, target="/", headers=headers)
                data = self._h11.send(request) or b""
                if self._body:
                    data += self._h11.send(h11.Data(data=self._body)) or b""
                data += self._h11.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError as e:
                raise HttpError(f"cannot send the request to {self._where}: {e}") from e
            self._writer.write(data)
            await self._guarded(self._writer.drain())
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    raise HttpError(f"the connection to {self._where} broke: {event!r}")
            self.status = event.status_code
            head = sum(len(name) + len(value) + 4 for name, value in event.headers)
            if head > MAX_HEAD_BYTES:  # h11 bounds only a head still incomplete
                raise HttpError(f"the response head from {self._where} exceeds {MAX_HEAD_BYTES} B")
            for name, value in event.headers:
                self.headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        except BaseException:
            await self._close()
            raise
        return self

    async def read(self, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes (nothing more is read)."""
        assert self._reader is not None, "not entered"
        chunks: list[bytes] = []
        kept = 0
        while kept < limit:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                take = bytes(event.data[: limit - kept])
                chunks.append(take)
                kept += len(take)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
                break
            else:  # ConnectionClosed: a body framed by the end of the connection
                break
        return b"".join(chunks)

    def keep(self) -> KeptConnection | None:
        """The connection, left open for another request, if this exchange asked for that, the
        server did not refuse, and the body was read to its end."""
        if not (self._keep_alive and self._complete) or self._writer is None:
            return None
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            return None  # the server closes it (Connection: close, or a body framed by EOF)
        assert self._reader is not None
        self._kept = True
        return KeptConnection(self._reader, self._writer, time.monotonic(), self._h11)

    async def __aexit__(self, *exc: object) -> None:
        if not self._kept:
            await self._close()

    async def _next_event(self) -> object:
        assert self._reader is not None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as e:
                raise HttpError(f"malformed response from {self._where}: {e}") from e
            if event is not h11.NEED_DATA:
                return event
            data = await self._guarded(self._reader.read(READ_BYTES))
            try:
                self._h11.receive_data(data)  # b"": the end of the connection
            except h11.RemoteProtocolError as e:
                raise HttpError(f"malformed response from {self._where}: {e}") from e

    async def _guarded(self, step: Awaitable[T]) -> T:
        try:
            return await step
        except ConnectionError as e:
            raise HttpError(f"the connection to {self._where} broke: {e!r}") from e

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


async def post(port: int, body: bytes, *, limit: int) -> bytes:
    """POST ``body`` and return the response body's first ``limit`` bytes (status ignored)."""
    async with Exchange(port, body) as exchange:
        return await exchange.read(limit)
