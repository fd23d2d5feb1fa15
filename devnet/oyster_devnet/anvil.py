"""Start a local anvil chain for tests, the demo and local runs; always stop it afterwards.

The native anvil binary is spawned directly (see ``oyster_devnet.tools``) on 127.0.0.1, quiet
(``--silent``), with its stderr kept in an anonymous temporary file so that a failure can quote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

import aiohttp

from executor.errors import ExecutorError
from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount
from oyster_devnet.tools import anvil_binary, free_port

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0
"""Seconds to wait for anvil to answer JSON-RPC."""
STOP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL."""
STDERR_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 5
"""A free port picked here can be taken before anvil binds it: retry with another."""


class AnvilError(ExecutorError):
    """anvil could not be started or stopped; the message quotes the tail of its stderr."""


@dataclass(frozen=True)
class AnvilNode:
    """A running anvil: where to reach it and what it was started with."""

    http_url: str
    ws_url: str
    chain_id: int
    port: int
    pid: int
    accounts: tuple[DevAccount, ...] = field(default=DEV_ACCOUNTS, repr=False)
    _stderr: IO[bytes] | None = field(default=None, repr=False, compare=False)

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        """The last ``limit`` bytes anvil wrote to stderr (empty once anvil was stopped)."""
        return _read_tail(self._stderr, limit) if self._stderr is not None else ""


@contextlib.asynccontextmanager
async def start_anvil(
    *,
    port: int | None = None,
    chain_id: int = 31337,
    block_time: float | None = None,
    start_timeout: float = START_TIMEOUT,
) -> AsyncIterator[AnvilNode]:
    """Run anvil on 127.0.0.1 for the duration of the ``async with`` block.

    ``port=None`` picks a free port. ``block_time=None`` mines one block per transaction
    (automine); a number mines on that interval (seconds) instead. Raises ``AnvilError`` if anvil
    exits or does not answer within ``start_timeout`` seconds. anvil is killed on exit, whatever
    happened in the block.
    """
    binary = anvil_binary()
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        chosen_port = port if port is not None else free_port()
        args = ["--host", "127.0.0.1", "--port", str(chosen_port), "--chain-id", str(chain_id)]
        args += ["--accounts", str(len(DEV_ACCOUNTS)), "--silent"]
        if block_time is not None:
            args += ["--block-time", _format_seconds(block_time)]
        with tempfile.TemporaryFile() as stderr:
            process = await asyncio.create_subprocess_exec(
                binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                http_url = f"http://127.0.0.1:{chosen_port}"
                try:
                    await _wait_until_ready(process, http_url, chain_id, start_timeout, stderr)
                except _PortInUse:
                    if port is not None or attempt == _PORT_ATTEMPTS:
                        raise AnvilError(
                            f"anvil could not bind 127.0.0.1:{chosen_port}: "
                            f"{_read_tail(stderr, STDERR_TAIL_BYTES).strip()}"
                        ) from None
                    logger.debug("anvil port %s taken, retrying on another", chosen_port)
                    continue
                node = AnvilNode(
                    http_url=http_url,
                    ws_url=f"ws://127.0.0.1:{chosen_port}",
                    chain_id=chain_id,
                    port=chosen_port,
                    pid=process.pid,
                    _stderr=stderr,
                )
                logger.info("anvil pid %s listening on %s", process.pid, http_url)
                yield node
                return
            finally:
                await _stop(process)
    raise AssertionError("unreachable")  # pragma: no cover


class _PortInUse(Exception):
    pass


async def _wait_until_ready(
    process: asyncio.subprocess.Process,
    http_url: str,
    chain_id: int,
    start_timeout: float,
    stderr: IO[bytes],
) -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    deadline = time.monotonic() + start_timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while True:
            if process.returncode is not None:
                tail = _read_tail(stderr, STDERR_TAIL_BYTES)
                if "Address already in use" in tail:
                    raise _PortInUse
                raise AnvilError(
                    f"anvil exited with status {process.returncode} before answering: "
                    f"{tail.strip() or '(no output)'}"
                )
            try:
                async with session.post(http_url, json=request) as response:
                    answer = await response.json()
                reported = int(answer["result"], 16)
                if reported != chain_id:
                    raise AnvilError(
                        f"anvil at {http_url} reports chain id {reported}, not {chain_id}"
                    )
                return
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AnvilError(
                    f"anvil did not answer on {http_url} within {start_timeout:g} s: "
                    f"{_read_tail(stderr, STDERR_TAIL_BYTES).strip() or '(no output)'}"
                )
            await asyncio.sleep(0.05)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE``; always reaps the process, even if cancelled."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            logger.warning("anvil pid %s ignored SIGTERM; killing it", process.pid)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    logger.info("anvil pid %s stopped (status %s)", process.pid, process.returncode)


def _format_seconds(seconds: float) -> str:
    if seconds <= 0:
        raise ValueError(f"block_time must be positive, got {seconds}")
    return f"{seconds:g}"


def _read_tail(file: IO[bytes], limit: int) -> str:
    """Reads without moving the file offset that anvil writes at (the descriptor is shared)."""
    try:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, limit, max(0, size - limit))
    except (OSError, ValueError):
        return ""
    return data.decode(errors="replace")
