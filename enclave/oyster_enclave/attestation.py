"""The attestation server: the enclave's NSM attestation for its key, over HTTP on 127.0.0.1:1300.

The same interface as Oyster's attestation server (marlinprotocol/oyster-monorepo,
``attestation/server``), which Oyster tooling reads, usually through vsock 88:1300:

``GET /attestation/raw``
    the attestation document, ``application/octet-stream``: CBOR COSE_Sign1 signed by the Nitro
    PKI; its payload holds the PCRs, ``public_key`` = the enclave's 64-byte secp256k1 public key
    (``x || y``, the file written by ``oyster-executor keygen --public``) and ``user_data``
    (empty unless ``--user-data`` names a file).
``GET /attestation/hex``
    the same bytes, lowercase hex, ``text/plain``.

Each request asks the device for a fresh document (it carries a timestamp). Without the device it
answers 503 with the reason, and the supervisor refuses to start in production (``/dev/nsm``
missing is fatal there).

    python3 -m oyster_enclave.attestation --ip-addr 127.0.0.1:1300 --pub-key /app/id.sec.pub
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web

from oyster_enclave.nsm import DEVICE, Nsm, NsmError

log = logging.getLogger("oyster_enclave.attestation")


def make_app(nsm: Nsm, public_key: bytes, user_data: bytes = b"") -> web.Application:
    async def document() -> bytes:
        # The ioctl blocks for a few milliseconds: off the event loop.
        return await asyncio.to_thread(nsm.attestation, public_key, user_data)

    async def raw(request: web.Request) -> web.Response:
        try:
            body = await document()
        except NsmError as e:
            log.warning("attestation failed: %s", e)
            return web.Response(status=503, text=f"no attestation: {e}\n")
        return web.Response(body=body, content_type="application/octet-stream")

    async def hexed(request: web.Request) -> web.Response:
        try:
            body = await document()
        except NsmError as e:
            log.warning("attestation failed: %s", e)
            return web.Response(status=503, text=f"no attestation: {e}\n")
        return web.Response(text=body.hex(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/attestation/raw", raw)
    app.router.add_get("/attestation/hex", hexed)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oyster_enclave.attestation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ip-addr", default="127.0.0.1:1300", metavar="HOST:PORT")
    parser.add_argument("--pub-key", required=True, type=Path, help="the 64-byte public key file")
    parser.add_argument("--user-data", type=Path, help="file whose bytes go in user_data")
    parser.add_argument("--device", default=DEVICE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="attestation: %(message)s", stream=sys.stdout)
    try:
        public_key = args.pub_key.read_bytes()
        user_data = args.user_data.read_bytes() if args.user_data else b""
    except OSError as e:
        log.error("cannot read %s: %s", e.filename, e.strerror)
        return 2
    if len(public_key) != 64:
        log.error("%s holds %d bytes, not a 64-byte public key", args.pub_key, len(public_key))
        return 2
    host, _, port = args.ip_addr.rpartition(":")
    log.info("public key 0x%s; serving on %s", public_key.hex(), args.ip_addr)
    web.run_app(
        make_app(Nsm(args.device), public_key, user_data),
        host=host,
        port=int(port),
        print=None,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
