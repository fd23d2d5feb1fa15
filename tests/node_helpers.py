"""Helpers for tests that run the whole daemon in-process against a real anvil."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from executor.admin.sites import parse_tcp_addr
from executor.daemon import Daemon
from executor.node import NodeStatus
from executor.outcome import JobOutcome
from oyster_devnet.node_setup import NodeFiles

T = TypeVar("T")

CODE_ECHO = """
export default {
  async fetch(request) {
    const body = await request.text();
    return new Response("echo:" + body);
  }
};
"""


@asynccontextmanager
async def running_daemon(
    files: NodeFiles, *, cgroup_parent: Path | None = None, grace_s: float = 5.0
) -> AsyncIterator[Daemon]:
    """The daemon on 127.0.0.1:<free port>; confined when ``cgroup_parent`` is given."""
    daemon = Daemon(
        files.settings,
        parse_tcp_addr("127.0.0.1:0"),
        cgroup_parent=cgroup_parent,
        unconfined=cgroup_parent is None,
        shutdown_grace_s=grace_s,
    )
    async with daemon:
        yield daemon


async def wait_registered(daemon: Daemon) -> None:
    """Until the daemon has seen its own TeeNodeRegistered event."""
    service = daemon.service
    assert service is not None
    await wait_until(
        lambda: service.status is NodeStatus.ACTIVE, timeout=10, what="the registration to be seen"
    )


async def wait_until(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float,  # noqa: ASYNC109 - a polling helper, not a cancellable call
    what: str,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    give_up = time.monotonic() + timeout
    while True:
        value: Any = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def record_executions(daemon: Daemon) -> list[bytes]:
    """The code of every execution the daemon's runner starts from now on, in order (the runner
    still executes it): what reached the sandbox, for tests that must prove what never did."""
    assert daemon.service is not None
    runner = daemon.service.runner
    executed: list[bytes] = []
    real_execute = runner._execute

    async def recording(code: bytes, *args: Any, **kwargs: Any) -> JobOutcome:
        executed.append(code)
        return await real_execute(code, *args, **kwargs)

    runner._execute = recording
    return executed
