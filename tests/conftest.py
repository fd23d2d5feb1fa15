"""Shared fixtures: a real anvil per test, a web3 client on it, and the devnet contracts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode, start_anvil
from oyster_devnet.contracts import Devnet, deploy_devnet

DEVNET_EXECUTION_BUFFER_TIME = 2
"""Seconds: short, so that timeout paths settle quickly in real time."""
DEVNET_NUM_SELECTED_EXECUTORS = 1
DEVNET_SIGN_MAX_AGE = 600


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
async def devnet(w3: AsyncWeb3[Any]) -> Devnet:
    """The devnet contracts, deployed by ``DEV_ACCOUNTS[0]``."""
    return await deploy_devnet(
        w3,
        DEV_ACCOUNTS[0],
        execution_buffer_time=DEVNET_EXECUTION_BUFFER_TIME,
        num_selected_executors=DEVNET_NUM_SELECTED_EXECUTORS,
        sign_max_age=DEVNET_SIGN_MAX_AGE,
    )
