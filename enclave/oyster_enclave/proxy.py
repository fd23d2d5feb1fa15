"""The enclave's TCP proxies, over vsock (or a stand-in, see :mod:`oyster_enclave.endpoints`).

An enclave has no network interface but loopback, so every connection to or from the outside
crosses vsock. Three roles, interoperable with the proxies Oyster operators already run on the
parent instance (marlinprotocol/oyster-monorepo, ``networking/tcp-proxy``):

``outbound`` (in the enclave; Oyster's ``ip-to-vsock-transparent``)
    listens on 127.0.0.1:1200, where iptables DNATs every outbound TCP connection. For each
    connection it reads the original destination (``SO_ORIGINAL_DST``), connects to the host at
    vsock 3:1200, sends the destination as a 6-byte header, then relays both ways.
``host`` (on the parent instance; Oyster's ``vsock-to-ip-transparent``)
    listens on vsock 3:1200, reads the header, connects to that destination and relays. Given
    ``--map`` rules it rewrites destinations and, with ``--mapped-only``, refuses the rest
    (what tests use: the enclave "fetches" a public address that reaches a server on 127.0.0.1).
``forward`` (both sides; Oyster's ``vsock-to-ip`` / ``ip-to-vsock``)
    listens on one endpoint and relays each connection to a fixed one, e.g. vsock 88:1300 to the
    attestation server on 127.0.0.1:1300.

The header, as the Rust proxies write it: the IPv4 address as a u32 (first octet most
significant) in little-endian byte order, then the port as a little-endian u16. IPv6 is refused.

    python3 -m oyster_enclave.proxy outbound --listen tcp:127.0.0.1:1200 --upstream vsock:3:1200
    python3 -m oyster_enclave.proxy host --listen vsock:-1:1200 [--map 203.0.113.10=127.0.0.1]
    python3 -m oyster_enclave.proxy forward --listen vsock:-1:1300 --target tcp:127.0.0.1:1300
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

from oyster_enclave import endpoints
from oyster_enclave.endpoints import Endpoint

log = logging.getLogger("oyster_enclave.proxy")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
HEADER = struct.Struct("<IH")
COPY_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 30.0


def encode_destination(ip: str, port: int) -> bytes:
    """The 6-byte header naming ``ip:port`` (IPv4 only)."""
    address = ipaddress.ip_address(ip)
    if address.version != 4:
        raise ValueError(f"{ip}: the vsock proxy protocol carries IPv4 destinations only")
    return HEADER.pack(int(address), port)


def decode_destination(header: bytes) -> tuple[str, int]:
    number, port = HEADER.unpack(header)
    return str(ipaddress.IPv4Address(number)), port


def original_destination(writer: asyncio.StreamWriter) -> tuple[str, int]:
    """Where a DNATed connection was going before iptables sent it here."""
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
    except OSError as e:
        raise ConnectionError(
            f"no original destination ({e.strerror}): only DNATed connections belong here"
        ) from e
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other way may still be talking
    except (ConnectionError, OSError):
        writer.close()


async def relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copy both ways until both directions have ended, then close both."""
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _closing(handler: Handler) -> Handler:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except Exception as e:  # one connection's failure never stops the proxy
            log.warning("connection dropped: %s", e or type(e).__name__)
            writer.close()

    return wrapped


async def _connect(target: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        return await endpoints.connect(target)


def outbound_handler(
    upstream: Endpoint,
    destination: Callable[[asyncio.StreamWriter], tuple[str, int]] = original_destination,
) -> Handler:
    """In the enclave: a DNATed connection, sent to ``upstream`` with its original destination."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip, port = destination(writer)
        up = await _connect(upstream)
        up[1].write(encode_destination(ip, port))
        log.debug("outbound %s:%d via %s", ip, port, upstream)
        await relay((reader, writer), up)

    return _closing(handle)


def parse_map(rules: list[str]) -> dict[str, str]:
    """``FROM=TO`` IPv4 rewrite rules of the host side."""
    mapping: dict[str, str] = {}
    for rule in rules:
        source, sep, target = rule.partition("=")
        try:
            ipaddress.IPv4Address(source)
            ipaddress.IPv4Address(target)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"--map {rule!r}: expected FROM_IPV4=TO_IPV4")
        mapping[source] = target
    return mapping


def host_handler(mapping: dict[str, str] | None = None, *, mapped_only: bool = False) -> Handler:
    """On the host: read the header, connect to the destination (rewritten by ``mapping``)."""
    mapping = mapping or {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip, port = decode_destination(await reader.readexactly(HEADER.size))
        target = mapping.get(ip)
        if target is None and mapped_only:
            log.warning("refused %s:%d: not in the --map rules", ip, port)
            writer.close()
            return
        out = await _connect(Endpoint("tcp", host=target or ip, port=port))
        log.debug("host %s:%d -> %s:%d", ip, port, target or ip, port)
        await relay((reader, writer), out)

    return _closing(handle)


def forward_handler(target: Endpoint) -> Handler:
    """Each connection relayed to the fixed ``target``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay((reader, writer), await _connect(target))

    return _closing(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oyster_enclave.proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    roles = parser.add_subparsers(dest="role", required=True)
    out = roles.add_parser("outbound", help="in the enclave: DNATed TCP to the host over vsock")
    out.add_argument("--listen", default="tcp:127.0.0.1:1200")
    out.add_argument("--upstream", default="vsock:3:1200")
    host = roles.add_parser("host", help="on the parent: vsock to each header's destination")
    host.add_argument("--listen", default="vsock:-1:1200")
    host.add_argument("--map", action="append", default=[], metavar="FROM=TO")
    host.add_argument("--mapped-only", action="store_true", help="refuse destinations not mapped")
    fwd = roles.add_parser("forward", help="one endpoint to another, e.g. vsock:-1:1300 to tcp")
    fwd.add_argument("--listen", required=True)
    fwd.add_argument("--target", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"proxy-{args.role}: %(message)s",
        stream=sys.stdout,
    )
    try:
        listen = endpoints.parse(args.listen)
        if args.role == "outbound":
            handler = outbound_handler(endpoints.parse(args.upstream))
        elif args.role == "host":
            handler = host_handler(parse_map(args.map), mapped_only=args.mapped_only)
        else:
            handler = forward_handler(endpoints.parse(args.target))
    except endpoints.EndpointError as e:
        parser.error(str(e))
    return asyncio.run(_serve(listen, handler, args.role))


async def _serve(listen: Endpoint, handler: Handler, role: str) -> int:
    try:
        server = await endpoints.serve(listen, handler)
    except OSError as e:
        log.error("cannot listen on %s: %s", listen, e.strerror or e)
        return 2
    log.info("%s proxy listening on %s", role, listen)
    async with server:
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
