"""The admin API over AF_VSOCK, as far as this machine allows.

Binding a vsock socket works here, but there is no local vsock loopback (connecting to CID 1 times
out, CID 2 resets, CID 3 has no device), so no request can travel over vsock on this machine: the
request/response path is the same code as over TCP (see test_admin_api), and what is exercised
here is binding, serving, addressing and the client's failure being reported clearly.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest
from aiohttp import web

from executor.admin.client import AdminClient, AdminClientError
from executor.admin.sites import VMADDR_CID_ANY, VsockSite, parse_vsock_addr
from executor.errors import ConfigError
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import write_node_files
from tests.node_helpers import wait_until


def vsock_bindable() -> str | None:
    if not hasattr(socket, "AF_VSOCK"):
        return "this Python/OS has no AF_VSOCK"
    try:
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.bind((VMADDR_CID_ANY, 0))
    except OSError as e:
        return f"cannot bind AF_VSOCK here: {e}"
    return None


needs_vsock = pytest.mark.skipif(vsock_bindable() is not None, reason=str(vsock_bindable()))


def free_vsock_port() -> int:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
        s.bind((VMADDR_CID_ANY, 0xFFFFFFFF))  # VMADDR_PORT_ANY
        return int(s.getsockname()[1])


def test_parse_vsock_addr() -> None:
    assert parse_vsock_addr("88:6000").cid == 88
    assert parse_vsock_addr("-1:6000").cid == VMADDR_CID_ANY
    for bad in ("6000", "x:1", "3:y", "3:-5"):
        with pytest.raises(ConfigError, match="--vsock-addr"):
            parse_vsock_addr(bad)


@needs_vsock
async def test_vsock_site_binds_and_serves() -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_vsock_port()
    site = VsockSite(runner, VMADDR_CID_ANY, port)
    try:
        await site.start()
        assert site.name == f"vsock://{VMADDR_CID_ANY}:{port}"
        # The port is really taken: a second bind fails.
        with pytest.raises(OSError), socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.bind((VMADDR_CID_ANY, port))
    finally:
        await runner.cleanup()


@needs_vsock
async def test_client_reports_an_unreachable_vsock_executor_clearly() -> None:
    client = AdminClient(f"vsock://3:{free_vsock_port()}/", timeout_s=1)
    with pytest.raises(AdminClientError, match=r"did not answer within 2s: .*No such device"):
        await client.wait_until_up(timeout_s=1.5)


@needs_vsock
async def test_serve_listens_on_vsock(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> None:
    files = write_node_files(tmp_path / "node", anvil, devnet)
    log = tmp_path / "serve.log"
    port = free_vsock_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "executor", "serve", f"--vsock-addr=-1:{port}",
            "--config-file", str(files.config_file), "--unconfined-dev",
            stdout=out, stderr=out,
        )  # fmt: skip
    try:
        await wait_until(
            lambda: "admin API listening on vsock://" in log.read_text(),
            timeout=20,
            what="the vsock listener",
        )
        assert "UNAUTHENTICATED" not in log.read_text()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
