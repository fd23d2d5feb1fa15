"""Shared fixtures: a real anvil per test, a web3 client on it, the devnet contracts, the roles
the devnet accounts play, raw JSON-RPC on the anvil, real cgroup slices, and a registered node.

Markers (pyproject.toml): every test that uses the ``anvil`` fixture (directly or through ``w3``,
``devnet`` and the node fixtures) is marked ``chain`` here; modules that start anvil or workerd
themselves say so with ``pytestmark``. ``make test-unit`` runs what is neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from oyster_devnet.anvil import AnvilNode, start_anvil
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.node_setup import NodeFiles, write_node_files
from tests.chain_helpers import ROLES, Roles, Rpc
from tests.node_helpers import RegisteredNode, registered_daemon
from tests.sandbox_helpers import slice_parent

DEVNET_EXECUTION_BUFFER_TIME = 2
"""Seconds: short, so that timeout paths settle quickly in real time."""
DEVNET_NUM_SELECTED_EXECUTORS = 1
DEVNET_SIGN_MAX_AGE = 600

_CHAIN_FIXTURES = {"anvil", "w3", "devnet", "rpc"}
_WORKERD_FIXTURES = {"cgroup_parent", "confined_node"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & _CHAIN_FIXTURES:
            item.add_marker(pytest.mark.chain)
        if used & _WORKERD_FIXTURES:
            item.add_marker(pytest.mark.workerd)


@pytest.fixture
def roles() -> Roles:
    """Which devnet account plays which part (deployer, owner, gas, user, spare)."""
    return ROLES


@pytest.fixture
async def anvil() -> AsyncIterator[AnvilNode]:
    """A fresh anvil on a free port (automine), killed after the test."""
    async with start_anvil() as node:
        yield node


@pytest.fixture
async def w3(anvil: AnvilNode) -> AsyncIterator[AsyncWeb3[Any]]:
    """An ``AsyncWeb3`` on the anvil's HTTP URL; its HTTP session is closed afterwards."""
    client = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
    try:
        yield client
    finally:
        await client.provider.disconnect()


@pytest.fixture
def rpc(w3: AsyncWeb3[Any]) -> Rpc:
    """``await rpc("evm_mine")``: raw JSON-RPC on the test's anvil (an error fails the test)."""
    return Rpc(w3)


@pytest.fixture
async def devnet(w3: AsyncWeb3[Any]) -> Devnet:
    """The devnet contracts, deployed by ``roles.deployer``."""
    return await deploy_devnet(
        w3,
        ROLES.deployer,
        execution_buffer_time=DEVNET_EXECUTION_BUFFER_TIME,
        num_selected_executors=DEVNET_NUM_SELECTED_EXECUTORS,
        sign_max_age=DEVNET_SIGN_MAX_AGE,
    )


@pytest.fixture
def cgroup_parent() -> Iterator[Path]:
    """A cgroup parent of the test's own holding 3 real slices (numbered for this xdist worker),
    removed afterwards; the test is skipped where slices cannot be made (not root, no cgroup2)."""
    with slice_parent(count=3) as parent:
        yield parent


@pytest.fixture
def node_files(tmp_path: Path, anvil: AnvilNode, devnet: Devnet) -> NodeFiles:
    """A node's enclave key, folders and config for the test's anvil and devnet."""
    return write_node_files(tmp_path / "node", anvil, devnet)


@pytest.fixture
async def registered_node(node_files: NodeFiles, devnet: Devnet) -> AsyncIterator[RegisteredNode]:
    """The daemon, unconfined (jobs run in workerd without slices), initialized by
    ``roles.owner`` with ``roles.gas`` and registered on chain."""
    async with registered_daemon(node_files, devnet) as daemon:
        yield RegisteredNode(daemon, node_files)


@pytest.fixture
async def confined_node(
    node_files: NodeFiles, devnet: Devnet, cgroup_parent: Path
) -> AsyncIterator[RegisteredNode]:
    """:func:`registered_node` with its jobs confined to the 3 slices of ``cgroup_parent``."""
    async with registered_daemon(node_files, devnet, cgroup_parent=cgroup_parent) as daemon:
        yield RegisteredNode(daemon, node_files)
