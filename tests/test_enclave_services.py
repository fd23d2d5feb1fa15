"""The enclave image's own services (enclave/oyster_enclave), each over a stand-in for what this
machine lacks: TCP and unix sockets for vsock (there is no vsock loopback here), a fake NSM device
behind the real ioctl structure and CBOR messages, a local DNS-over-HTTPS server. The Rust proxies
these interoperate with are described by their wire format (PROXY_HEADER below)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "enclave"))
from oyster_enclave import cbor, dns, endpoints, nsm, proxy  # noqa: E402
from oyster_enclave.attestation import make_app  # noqa: E402
from oyster_enclave.supervise import Program, Supervisor  # noqa: E402

sys.path.remove(str(ROOT / "enclave"))


# --- the proxy protocol ------------------------------------------------------------------------


def test_the_destination_header_is_the_rust_proxies_little_endian_u32_and_u16() -> None:
    # tokio's write_u32_le(u32::from(Ipv4Addr)) then write_u16_le(port): 1.2.3.4:443
    header = proxy.encode_destination("1.2.3.4", 443)
    assert header == bytes([4, 3, 2, 1]) + (443).to_bytes(2, "little")
    assert proxy.decode_destination(header) == ("1.2.3.4", 443)
    with pytest.raises(ValueError, match="IPv4 destinations only"):
        proxy.encode_destination("::1", 80)


def test_endpoints_parse_and_the_vsock_standin() -> None:
    assert endpoints.parse("vsock:3:1200") == endpoints.Endpoint("vsock", "3", 1200)
    assert endpoints.parse("vsock:-1:1300").cid == 0xFFFFFFFF
    assert endpoints.parse("tcp:127.0.0.1:9").port == 9
    assert endpoints.parse("unix:/run/x.sock").path == "/run/x.sock"
    for bad in ("vsock:x:1", "tcp:host", "udp:1.2.3.4:5", "vsock"):
        with pytest.raises(endpoints.EndpointError):
            endpoints.parse(bad)
    standin = endpoints.resolve(endpoints.parse("vsock:88:6000"), "unix:/run/h")
    assert standin == endpoints.Endpoint("unix", path="/run/h/88-6000.sock")
    assert endpoints.resolve(endpoints.parse("tcp:1.2.3.4:5"), "unix:/run/h").kind == "tcp"


async def echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def serve(endpoint: str, handler: Any) -> tuple[asyncio.Server, str]:
    server = await endpoints.serve(endpoints.parse(endpoint), handler)
    name = server.sockets[0].getsockname()
    where = f"tcp:127.0.0.1:{name[1]}" if isinstance(name, tuple) else f"unix:{name}"
    return server, where


async def exchange(endpoint: str, payload: bytes) -> bytes:
    reader, writer = await endpoints.connect(endpoints.parse(endpoint))
    writer.write(payload)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_outbound_and_host_proxies_carry_the_original_destination(tmp_path: Path) -> None:
    """enclave client -> outbound (destination as if DNATed) -> "vsock" (a unix socket) -> host
    proxy, which maps the public address to 127.0.0.1 -> the server; both directions, half-close."""
    target, port = await echo_server()
    seen: list[tuple[str, int]] = []
    host, host_at = await serve(
        f"unix:{tmp_path / '3-1200.sock'}",
        proxy.host_handler({"203.0.113.10": "127.0.0.1"}, mapped_only=True),
    )

    def destination(_: asyncio.StreamWriter) -> tuple[str, int]:
        seen.append(("203.0.113.10", port))  # what SO_ORIGINAL_DST gives after the DNAT
        return seen[-1]

    outbound, outbound_at = await serve(
        "tcp:127.0.0.1:0", proxy.outbound_handler(endpoints.parse(host_at), destination)
    )
    async with target, host, outbound:
        payload = bytes(range(256)) * 2000  # several reads' worth
        assert await exchange(outbound_at, payload) == b"echo:" + payload
        assert seen == [("203.0.113.10", port)]


async def test_the_host_proxy_refuses_unmapped_destinations_and_survives() -> None:
    target, port = await echo_server()
    host, host_at = await serve("tcp:127.0.0.1:0", proxy.host_handler({}, mapped_only=True))
    async with target, host:
        assert await exchange(host_at, proxy.encode_destination("127.0.0.1", port) + b"x") == b""
        # a truncated header drops that connection only
        assert await exchange(host_at, b"\x01\x02") == b""
    open_host, open_at = await serve("tcp:127.0.0.1:0", proxy.host_handler())
    target, port = await echo_server()
    async with target, open_host:
        reply = await exchange(open_at, proxy.encode_destination("127.0.0.1", port) + b"hi")
        assert reply == b"echo:hi"


async def test_forward_relays_to_a_fixed_target_and_reads_so_original_dst(tmp_path: Path) -> None:
    target, port = await echo_server()
    fwd, fwd_at = await serve(
        f"unix:{tmp_path / '88-1300.sock'}",
        proxy.forward_handler(endpoints.parse(f"tcp:127.0.0.1:{port}")),
    )
    async with target, fwd:
        assert await exchange(fwd_at, b"attest") == b"echo:attest"


DNAT_SCRIPT = r"""
import asyncio, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from oyster_enclave import endpoints, proxy

for cmd in ("ip link set lo up", "ip route replace default dev lo src 127.0.0.1",
            "iptables -A OUTPUT -t nat -p tcp --dport 1:65535 ! -d 127.0.0.1 "
            "-j DNAT --to-destination 127.0.0.1:1200"):
    subprocess.run(cmd.split(), check=True)

async def main():
    async def echo(reader, writer):
        writer.write(b"echo:" + await reader.read())
        writer.close()
    target = await asyncio.start_server(echo, "127.0.0.1", 8089)
    host = await endpoints.serve(endpoints.parse("tcp:127.0.0.1:1201"),
                                 proxy.host_handler({"203.0.113.10": "127.0.0.1"},
                                                    mapped_only=True))
    outbound = await endpoints.serve(endpoints.parse("tcp:127.0.0.1:1200"),
                                     proxy.outbound_handler(endpoints.parse("tcp:127.0.0.1:1201")))
    async with target, host, outbound:
        reader, writer = await asyncio.open_connection("203.0.113.10", 8089)
        writer.write(b"through the DNAT")
        writer.write_eof()
        print((await asyncio.wait_for(reader.read(), 10)).decode())
        writer.close()
        # a destination the host side does not map is refused: the connection just ends
        reader, writer = await asyncio.open_connection("203.0.113.99", 8089)
        writer.write_eof()
        print("refused:", await asyncio.wait_for(reader.read(), 10))
        writer.close()

asyncio.run(main())
"""


def test_the_transparent_path_in_a_network_namespace_of_its_own() -> None:
    """The enclave's networking for real, in a fresh network namespace (loopback only, as in an
    enclave; nothing is changed in this machine's own namespace): the entrypoint's route and
    DNAT, SO_ORIGINAL_DST, the outbound proxy and the host proxy (TCP standing in for vsock)."""
    import shutil

    if not (shutil.which("unshare") and shutil.which("iptables")) or os.geteuid() != 0:
        pytest.skip("needs root, unshare and iptables (a network namespace of its own)")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", DNAT_SCRIPT, str(ROOT / "enclave")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["echo:through the DNAT", "refused: b''"]


def test_a_vsock_endpoint_binds_here() -> None:
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as e:
        pytest.skip(f"no AF_VSOCK on this machine: {e}")
    with sock:
        sock.bind((0xFFFFFFFF, 0))  # any CID, any port: the listening side of every vsock role


# --- NSM and the attestation server --------------------------------------------------------------


def test_cbor_round_trips_what_the_nsm_speaks() -> None:
    value = {"Attestation": {"user_data": b"", "nonce": None, "public_key": b"\x01" * 64}}
    raw = cbor.encode(value)
    # serde_cbor's encoding of the Rust Request::Attestation: a map of one text key
    assert raw[:13] == b"\xa1\x6bAttestation"
    assert cbor.decode(raw) == value
    for v in (0, 23, 24, 255, 256, 65536, 2**32, -1, -1000, True, False, [1, "a", b"b"], "é"):
        assert cbor.decode(cbor.encode(v)) == v
    assert cbor.decode(b"\xd8\x18\x41\x07") == b"\x07"  # tag 24 around bytes: the content
    for bad in (b"\x5f", b"\x42\x01", b"\xf9\x00\x00", b"\x01\x02"):
        with pytest.raises(ValueError):
            cbor.decode(bad)


class FakeNsm:
    """Stands in for /dev/nsm's driver: reads the ``struct nsm_message`` the code passes to the
    ioctl, decodes its CBOR request and writes a CBOR response into the response iovec."""

    def __init__(self, answer: Any = None, fail_errno: int = 0) -> None:
        self.requests: list[Any] = []
        self.answer = answer
        self.fail_errno = fail_errno

    def __call__(self, fd: int, request: int, msg_ref: Any) -> int:
        assert request == 0xC0200A00  # _IOWR(0x0A, 0, 32)
        msg = ctypes.cast(msg_ref, ctypes.POINTER(nsm.NsmMessage)).contents
        raw = ctypes.string_at(msg.request.iov_base, msg.request.iov_len)
        self.requests.append(cbor.decode(raw))
        if self.fail_errno:
            ctypes.set_errno(self.fail_errno)
            return -1
        fields = self.requests[-1]["Attestation"]
        answer = self.answer or {
            "Attestation": {
                "document": b"COSE:" + fields["public_key"] + (fields["user_data"] or b"")
            }
        }
        body = cbor.encode(answer)
        assert len(body) <= msg.response.iov_len
        ctypes.memmove(msg.response.iov_base, body, len(body))
        msg.response.iov_len = len(body)
        return 0


def test_an_attestation_request_goes_through_the_real_ioctl_structure(tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    fake = FakeNsm()
    document = nsm.Nsm(str(device), fake).attestation(b"\x02" * 64, b"ud")
    assert document == b"COSE:" + b"\x02" * 64 + b"ud"
    assert fake.requests == [
        {"Attestation": {"user_data": b"ud", "nonce": None, "public_key": b"\x02" * 64}}
    ]
    with pytest.raises(nsm.NsmError, match="refused the attestation: InvalidArgument"):
        nsm.Nsm(str(device), FakeNsm({"Error": "InvalidArgument"})).attestation(b"k")
    with pytest.raises(nsm.NsmError, match="NSM ioctl failed: Invalid argument"):
        nsm.Nsm(str(device), FakeNsm(fail_errno=22)).attestation(b"k")
    with pytest.raises(nsm.NsmError, match="answered no attestation document"):
        nsm.Nsm(str(device), FakeNsm({"Attestation": {}})).attestation(b"k")
    with pytest.raises(nsm.NsmError, match="cannot open /nonexistent/nsm"):
        nsm.Nsm("/nonexistent/nsm").attestation(b"k")


def test_an_attestation_document_s_fields_decode() -> None:
    payload = {
        "module_id": "i-0abc-enc0",
        "digest": "SHA384",
        "timestamp": 1_700_000_000_000,
        "pcrs": {0: b"\x00" * 48, 1: b"\x01" * 48, 2: b"\x02" * 48},
        "certificate": b"cert",
        "cabundle": [b"root", b"inter"],
        "public_key": b"\x05" * 64,
        "user_data": b"",
        "nonce": None,
    }
    # COSE_Sign1: tag 18 around [protected header {1: -35 (ES384)}, {}, payload, signature]
    document = b"\xd2" + cbor.encode([b"\xa1\x01\x38\x22", {}, cbor.encode(payload), b"s" * 96])
    fields = nsm.document_fields(document)
    assert fields == payload and fields["pcrs"][2] == b"\x02" * 48
    with pytest.raises(nsm.NsmError, match="not an attestation document"):
        nsm.document_fields(cbor.encode([b"", {}, cbor.encode({"a": 1}), b""]))
    with pytest.raises(nsm.NsmError, match="not an attestation document"):
        nsm.document_fields(b"COSE:nothing")


def test_the_real_ioctl_on_a_file_that_is_not_the_device_is_a_clear_error(tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    with pytest.raises(nsm.NsmError, match="NSM ioctl failed"):
        nsm.Nsm(str(device)).attestation(b"k")  # libc's ioctl: ENOTTY on a regular file


async def test_the_attestation_server_speaks_oyster_s_interface(tmp_path: Path) -> None:
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    key = bytes(range(64))
    runner = web.AppRunner(make_app(nsm.Nsm(str(device), FakeNsm()), key))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    missing = web.AppRunner(make_app(nsm.Nsm(str(tmp_path / "none")), key))
    await missing.setup()
    missing_site = web.TCPSite(missing, "127.0.0.1", 0)
    await missing_site.start()
    missing_port = missing_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/attestation/raw") as r:
                assert r.status == 200 and r.content_type == "application/octet-stream"
                assert await r.read() == b"COSE:" + key
            async with session.get(f"http://127.0.0.1:{port}/attestation/hex") as r:
                assert r.status == 200 and await r.text() == (b"COSE:" + key).hex()
            async with session.get(f"http://127.0.0.1:{missing_port}/attestation/hex") as r:
                assert r.status == 503 and "cannot open" in await r.text()
    finally:
        await runner.cleanup()
        await missing.cleanup()


def test_the_attestation_server_refuses_a_key_file_that_is_not_a_public_key(tmp_path: Path) -> None:
    (tmp_path / "id.pub").write_bytes(b"\x04" * 65)
    result = subprocess.run(
        [sys.executable, "-m", "oyster_enclave.attestation", "--ip-addr", "127.0.0.1:1",
         "--pub-key", str(tmp_path / "id.pub")],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "enclave")}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "holds 65 bytes, not a 64-byte public key" in result.stdout


# --- DNS over HTTPS -------------------------------------------------------------------------------


def a_query(name: str, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def a_answer(query: bytes, ip: str, ttl: int) -> bytes:
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)
    return header + query[12:] + record


@pytest.fixture
async def doh() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A DNS-over-HTTPS stand-in (plain HTTP on 127.0.0.1) answering every A query 192.0.2.7."""
    seen: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        assert request.content_type == "application/dns-message"
        query = await request.read()
        seen.append(query)
        return web.Response(
            body=a_answer(query, "192.0.2.7", 60), content_type="application/dns-message"
        )

    app = web.Application()
    app.router.add_post("/dns-query", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/dns-query", seen
    await runner.cleanup()


async def test_dns_queries_are_answered_over_doh_and_cached(doh: tuple[str, list[bytes]]) -> None:
    url, seen = doh
    resolver = dns.Resolver(url)
    udp, server = await dns.serve("127.0.0.1", 0, resolver)
    port = udp.get_extra_info("sockname")[1]
    tcp_port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                replies.put_nowait(data)

        client, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        client.sendto(a_query("example.test", 0x4242))
        reply = await asyncio.wait_for(replies.get(), 10)
        assert reply[:2] == b"\x42\x42" and reply.endswith(socket.inet_aton("192.0.2.7"))
        assert seen[0][:2] == b"\0\0"  # sent with id 0 (RFC 8484)
        client.sendto(a_query("example.test", 0x0101))
        reply = await asyncio.wait_for(replies.get(), 10)
        assert reply[:2] == b"\x01\x01" and len(seen) == 1  # from the cache, with its own id
        client.close()
        # TCP (length-prefixed) too
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        query = a_query("other.test", 7)
        writer.write(struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        assert (await reader.readexactly(length))[:2] == b"\0\x07"
        writer.close()
    finally:
        udp.close()
        server.close()
        await resolver.close()


def test_an_answer_too_large_for_udp_is_truncated_for_a_retry_over_tcp() -> None:
    query = a_query("big.test", 5)
    answer = a_answer(query, "192.0.2.1", 60)
    big = answer[:6] + struct.pack("!H", 40) + answer[8:] + answer[len(query) :] * 39
    assert len(big) > 512
    cut = dns.fit_udp(query, big)
    assert cut[:2] == b"\0\x05" and cut[2] & 0x02  # TC
    assert cut[12:] == query[12:] and struct.unpack_from("!HH", cut, 4) == (1, 0)
    assert dns.fit_udp(query, answer) == answer
    # EDNS (an OPT record advertising 4096 bytes): the big answer fits
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 0, 0)
    edns = query[:10] + b"\0\x01" + query[12:] + opt
    assert dns.fit_udp(edns, big) == big


async def test_an_unreachable_doh_server_gives_servfail() -> None:
    resolver = dns.Resolver("http://127.0.0.1:1/dns-query", timeout_s=2)
    try:
        reply = await resolver.answer(a_query("example.test", 9))
    finally:
        await resolver.close()
    assert reply[:2] == b"\0\x09" and reply[3] & 0x0F == dns.SERVFAIL
    assert dns.min_ttl(a_answer(a_query("x.test"), "192.0.2.1", 42)) == 42


# --- the image build's workerd download -----------------------------------------------------


def test_workerd_is_taken_from_the_lock_and_refused_unless_its_hash_matches() -> None:
    sys.path.insert(0, str(ROOT / "enclave"))
    try:
        import fetch_workerd  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "enclave"))
    import base64
    import hashlib
    import json

    lock = json.loads((ROOT / "package-lock.json").read_text())
    version, integrity = fetch_workerd.locked(lock, "@cloudflare/workerd-linux-64")
    assert integrity.startswith("sha512-")
    assert version == lock["packages"]["node_modules/workerd"]["version"]
    assert fetch_workerd.tarball_url("https://r.test", "@cloudflare/workerd-linux-64", version) == (
        f"https://r.test/@cloudflare/workerd-linux-64/-/workerd-linux-64-{version}.tgz"
    )
    data = b"tarball"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    fetch_workerd.check_integrity(data, good, "x")
    with pytest.raises(SystemExit, match="differs from the lock"):
        fetch_workerd.check_integrity(data + b"!", good, "x")
    with pytest.raises(SystemExit, match="not pinned"):
        fetch_workerd.locked({"packages": {}}, "workerd")


# --- supervision ----------------------------------------------------------------------------


def test_a_program_that_dies_is_restarted_with_backoff() -> None:
    supervisor = Supervisor([Program("dies", [sys.executable, "-c", "raise SystemExit(3)"])])
    program = supervisor.programs[0]
    supervisor.step(0.0)
    assert program.process is not None
    first = program.process.pid
    program.process.wait(30)
    supervisor.step(program.started + 0.1)  # died young: restarted after 1 s
    assert program.process is None and program.restart_at == pytest.approx(program.started + 1.1)
    supervisor.step(program.started + 1.2)
    assert program.process is not None and program.process.pid != first
    program.process.wait(30)
    supervisor.step(program.started + 0.1)
    assert program.delay == 4.0  # 1, 2, then 4: doubling while it keeps dying
    healthy = Program("healthy", [sys.executable, "-c", "pass"])
    supervisor = Supervisor([healthy])
    supervisor.step(0.0)
    assert healthy.process is not None
    healthy.process.wait(30)
    healthy.delay = 16.0
    supervisor.step(healthy.started + 120)  # ran for two minutes: back to 1 s
    assert healthy.restart_at == pytest.approx(healthy.started + 121)
    assert supervisor.shutdown() == 0
