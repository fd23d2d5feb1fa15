"""Helpers for tests that run the whole daemon in-process against a real anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from executor.admin.sites import parse_tcp_addr
from executor.daemon import Daemon
from executor.node import NodeStatus
from executor.outcome import JobOutcome
from oyster_devnet.accounts import DevAccount
from oyster_devnet.contracts import Devnet
from oyster_devnet.node_setup import NodeFiles, init_and_register
from tests.chain_helpers import ROLES
from tests.polling import wait_until

__all__ = [
    "CODE_ECHO",
    "RegisteredNode",
    "record_executions",
    "registered_daemon",
    "running_daemon",
    "seen_through_latest",
    "wait_registered",
    "wait_until",
]

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


class RegisteredNode(NamedTuple):
    """A running daemon that has seen its own registration (``daemon, files = node`` works)."""

    daemon: Daemon
    files: NodeFiles

    @property
    def address(self) -> str:
        """The enclave's address: the ``executor`` of its outputs."""
        return self.files.key.address


@asynccontextmanager
async def registered_daemon(
    files: NodeFiles,
    devnet: Devnet,
    *,
    cgroup_parent: Path | None = None,
    owner: DevAccount = ROLES.owner,
    gas: DevAccount = ROLES.gas,
) -> AsyncIterator[Daemon]:
    """:func:`running_daemon`, initialized through its admin API and registered on chain by
    ``owner`` with ``gas`` as its gas account; entered once the daemon has seen the event."""
    async with running_daemon(files, cgroup_parent=cgroup_parent) as daemon:
        await init_and_register(daemon.admin_url, devnet, owner=owner, gas=gas)
        await wait_registered(daemon)
        yield daemon


async def wait_registered(daemon: Daemon) -> None:
    """Until the daemon has seen its own TeeNodeRegistered event."""
    service = daemon.service
    assert service is not None
    await wait_until(
        lambda: service.status is NodeStatus.ACTIVE, timeout=10, what="the registration to be seen"
    )


async def seen_through_latest(daemon: Daemon, devnet: Devnet) -> None:
    """Until the daemon has handled every event of the chain's latest block: mines one empty block
    and waits for the daemon to see its head (a block's logs reach the follower before the next
    block's head). What the daemon would do about those events it has decided by then: the event
    to await before asserting that it did *not* do something."""
    service = daemon.service
    assert service is not None
    target = await devnet.w3.eth.block_number + 1
    await devnet.mine()
    await wait_until(
        lambda: (service.follower.health.head or 0) >= target,
        timeout=10,
        what=f"block {target} to reach the daemon",
    )


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
