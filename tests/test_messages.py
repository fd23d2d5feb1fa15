"""Messages an operator meets before anything runs: ``--version`` and a vsock that cannot bind."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from executor import __version__
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import write_node_files


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_version() -> None:
    assert await cli("--version") == (0, f"oyster-executor {__version__}\n")


def vsock_cid_unassignable(cid: int) -> str | None:
    """Why binding vsock ``cid`` would not fail with 'Cannot assign requested address' here."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return "this Python/OS has no AF_VSOCK"
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((cid, 0))
    except OSError as e:
        return None if "assign" in str(e) else f"binding vsock CID {cid} fails otherwise: {e}"
    return f"this machine has vsock CID {cid}"


async def test_a_vsock_that_cannot_bind_says_what_is_missing(
    tmp_path: Path, anvil: AnvilNode, devnet: Devnet
) -> None:
    why = vsock_cid_unassignable(88)
    if why is not None:
        pytest.skip(why)
    files = write_node_files(tmp_path / "node", anvil, devnet)
    rc, out = await cli(
        "serve", "--vsock-addr", "88:6000", "--config-file", str(files.config_file),
        "--unconfined-dev",
    )  # fmt: skip
    assert rc == 2 and "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert "cannot serve the admin API on vsock://88:6000: Cannot assign requested address" in last
    assert "no vsock device has CID 88 here" in last and "--tcp-addr" in last


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """``keygen | head -1``: the pipe closes before the last lines are written."""
    import subprocess

    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write (or the flush at the end) breaks the pipe
    try:
        keys = ["--secret", str(tmp_path / "k.sec"), "--public", str(tmp_path / "k.pub")]
        result = subprocess.run(
            [sys.executable, "-m", "executor", "keygen", *keys],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141
    assert (tmp_path / "k.sec").stat().st_size == 32  # the key was written all the same
