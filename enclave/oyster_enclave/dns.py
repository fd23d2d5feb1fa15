"""The enclave's DNS resolver: DNS on 127.0.0.1:53 (UDP and TCP), answered over DNS-over-HTTPS.

An enclave has no resolver of its own, and plain DNS through the parent instance could be forged by
it. As in Oyster's enclaves (``dnsproxy -u https://1.1.1.1/dns-query``), each query is sent as an
RFC 8484 POST (``application/dns-message``) to a DoH server over TLS, through the transparent proxy
like any other outbound connection; ``/etc/resolv.conf`` names 127.0.0.1. Answers are cached for
their smallest TTL (at most ``--max-ttl`` seconds).

    python3 -m oyster_enclave.dns [--listen 127.0.0.1:53] [--upstream https://1.1.1.1/dns-query]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import sys
import time

import aiohttp

log = logging.getLogger("oyster_enclave.dns")

DEFAULT_UPSTREAM = "https://1.1.1.1/dns-query"
SERVFAIL = 2


def _skip_name(message: bytes, at: int) -> int:
    while True:
        length = message[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        at += 1 + length
        if length == 0:
            return at


def min_ttl(message: bytes) -> int | None:
    """The smallest TTL of the answer records of ``message`` (None: no answer or unparsable)."""
    try:
        qd, an = struct.unpack_from("!HH", message, 4)
        at = 12
        for _ in range(qd):
            at = _skip_name(message, at) + 4
        ttls = []
        for _ in range(an):
            at = _skip_name(message, at)
            _, _, ttl, rdlength = struct.unpack_from("!HHIH", message, at)
            ttls.append(ttl)
            at += 10 + rdlength
        return min(ttls) if ttls else None
    except (struct.error, IndexError):
        return None


def servfail(query: bytes) -> bytes:
    """A SERVFAIL answer to ``query`` (same id and question)."""
    if len(query) < 12:
        return b""
    flags = struct.unpack_from("!H", query, 2)[0]
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | SERVFAIL  # QR, opcode+RD kept, RA, rcode
    return query[:2] + struct.pack("!H", flags) + query[4:6] + b"\0\0\0\0\0\0" + query[12:]


def fit_udp(query: bytes, answer: bytes) -> bytes:
    """``answer``, or, when it exceeds what the client can take over UDP (512 bytes without EDNS,
    else its advertised size), its header and question with TC set: the client retries on TCP."""
    if len(query) < 12 or len(answer) < 12:
        return answer
    limit = 512
    if struct.unpack_from("!H", query, 10)[0]:  # an additional record: the EDNS OPT, usually
        try:
            at = _skip_name(query, 12) + 4
            at = _skip_name(query, at)
            rtype, size = struct.unpack_from("!HH", query, at)
            if rtype == 41:
                limit = max(512, size)
        except (struct.error, IndexError):
            pass
    if len(answer) <= limit:
        return answer
    question_end = _skip_name(answer, 12) + 4
    flags = struct.unpack_from("!H", answer, 2)[0] | 0x0200  # TC
    return answer[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + answer[12:question_end]


class Resolver:
    def __init__(self, upstream: str, *, max_ttl: int = 300, timeout_s: float = 5.0) -> None:
        self.upstream = upstream
        self.max_ttl = max_ttl
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[bytes, tuple[float, bytes]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def answer(self, query: bytes) -> bytes:
        if len(query) < 12:
            return b""
        key = query[2:]  # all but the id
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return query[:2] + cached[1][2:]
        try:
            response = await self._ask(b"\0\0" + query[2:])  # id 0: RFC 8484 4.1
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("DoH query to %s failed: %s", self.upstream, e or type(e).__name__)
            return servfail(query)
        ttl = min_ttl(response)
        if ttl:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + min(ttl, self.max_ttl), response)
        return query[:2] + response[2:]

    async def _ask(self, query: bytes) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self._session.post(
            self.upstream,
            data=query,
            headers={
                "content-type": "application/dns-message",
                "accept": "application/dns-message",
            },
        ) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = await response.read()
        if len(body) < 12:
            raise ValueError("short DNS message")
        return body


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = fit_udp(data, await self.resolver.answer(data))
        if answer and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve(
    host: str, port: int, resolver: Resolver
) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
    """UDP and TCP DNS on ``host:port``."""

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                answer = await resolver.answer(await reader.readexactly(length))
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(resolver), local_addr=(host, port))
    server = await asyncio.start_server(tcp, host, port, reuse_address=True)
    return udp, server


async def _run(host: str, port: int, resolver: Resolver) -> int:
    try:
        udp, server = await serve(host, port, resolver)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", host, port, e.strerror or e)
        return 2
    log.info("DNS on %s:%d, answered by %s", host, port, resolver.upstream)
    try:
        async with server:
            await server.serve_forever()
    finally:
        udp.close()
        await resolver.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oyster_enclave.dns", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:53", metavar="HOST:PORT")
    parser.add_argument("--upstream", default=DEFAULT_UPSTREAM, metavar="URL")
    parser.add_argument("--max-ttl", type=int, default=300)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="dns: %(message)s", stream=sys.stdout)
    host, _, port = args.listen.rpartition(":")
    return asyncio.run(_run(host, int(port), Resolver(args.upstream, max_ttl=args.max_ttl)))


if __name__ == "__main__":
    sys.exit(main())
