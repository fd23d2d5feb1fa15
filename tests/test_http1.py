"""The sandbox's HTTP/1.1 client against a server that answers what each test scripts: the request
it sends, the three body framings, the limit, and every malformed answer refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from executor.sandbox.http1 import MAX_HEAD_BYTES, Exchange, HttpError, post


@asynccontextmanager
async def answering(answer: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A one-shot server on 127.0.0.1: records each request (head and body), writes ``answer``,
    closes the connection."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0]
        requests.append(head + await reader.readexactly(int(length or 0)))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, requests
    finally:
        server.close()
        await server.wait_closed()


async def test_the_request_carries_host_length_and_close_only() -> None:
    async with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as (port, requests):
        assert await post(port, b"\x00body", limit=10) == b"ok"
    assert requests == [
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5\r\n"
        f"Connection: close\r\n\r\n\x00body".encode("latin-1")
    ]


CHUNKED = (
    b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    b"4;ext=1\r\nhell\r\n7\r\no world\r\n0\r\nTrailer: x\r\n\r\n"
)


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world"),
        (CHUNKED, b"hello world"),
        (b"HTTP/1.0 200 OK\r\n\r\nhello world", b"hello world"),  # to the end
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b""),
    ],
    ids=["content-length", "chunked", "until-close", "empty", "empty-chunked"],
)
async def test_each_framing_gives_the_body(answer: bytes, body: bytes) -> None:
    async with answering(answer) as (port, _):
        assert await post(port, b"", limit=100) == body
    async with answering(answer) as (port, _):
        assert await post(port, b"", limit=5) == body[:5]  # never more than the limit


async def test_status_and_headers_are_read_first() -> None:
    async with answering(CHUNKED) as (port, _), Exchange(port, b"in") as exchange:
        assert exchange.status == 500
        assert exchange.headers["x-a"] == "1"  # lower-cased; the first of repeated ones
        assert exchange.headers["transfer-encoding"] == "chunked"
        assert await exchange.read(3) == b"hel"


MALFORMED: dict[str, Callable[[], bytes]] = {
    "not-http": lambda: b"SSH-2.0-OpenSSH\r\n\r\n",
    "no-status-code": lambda: b"HTTP/1.1 OK\r\n\r\n",
    "header-without-colon": lambda: b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    "bad-length": lambda: b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "short-body": lambda: b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
    "bad-chunk-size": lambda: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n"
    ),
    "negative-chunk": lambda: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    "chunk-cut-short": lambda: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc",
    "chunk-without-crlf": lambda: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab",
    "no-head-end": lambda: b"HTTP/1.1 200 OK\r\nX: y",
    "huge-head": lambda: b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_a_malformed_answer_is_an_error_not_an_output(name: str) -> None:
    async with answering(MALFORMED[name]()) as (port, _):
        with pytest.raises(HttpError):
            await post(port, b"", limit=100)


async def test_nobody_listening_is_an_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(HttpError, match="cannot connect"):
        await post(port, b"", limit=10)


async def test_a_kept_connection_carries_the_next_request() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready",
            b"HTTP/1.1 200 OK\r\n\r\nsecond",
        ):
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            if b"Content-Length: " in head:
                await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Exchange(port, b"", method="GET", keep_alive=True) as first:
            assert await first.read(64) == b"ready"
            kept = first.keep()
        assert kept is not None and kept.usable(5.0) and not kept.usable(0.0)
        async with Exchange(port, b"job", reuse=kept) as second:
            assert await second.read(64) == b"second"
            assert second.keep() is None  # it asked for Connection: close
        assert seen[0].startswith(b"GET / HTTP/1.1\r\n") and b"Connection" not in seen[0]
        assert b"Content-Length: 3\r\nConnection: close\r\n" in seen[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nready",  # refused
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nready....",  # not read to its end
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nready\r\n0\r\n\r\n",
    ],
    ids=["server-closes", "body-left-unread", "chunked"],
)
async def test_a_connection_is_kept_only_at_a_clean_boundary(answer: bytes) -> None:
    async with (
        answering(answer) as (port, _),
        Exchange(port, b"", method="GET", keep_alive=True) as exchange,
    ):
        await exchange.read(5)
        assert exchange.keep() is None
