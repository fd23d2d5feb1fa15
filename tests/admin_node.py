"""A real daemon (admin API on a real socket) with the fake secret store, on its own anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.admin.client import AdminClient
from executor.daemon import Daemon
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import start_anvil
from oyster_devnet.contracts import deploy_devnet
from oyster_devnet.node_setup import NodeFiles, write_node_files
from tests.fake_secret_store import FakeSecretStore, running_secret_store
from tests.node_helpers import running_daemon


@dataclass
class AdminNode:
    daemon: Daemon
    client: AdminClient
    store: FakeSecretStore
    files: NodeFiles


@asynccontextmanager
async def admin_node(folder: Path) -> AsyncIterator[AdminNode]:
    async with start_anvil() as anvil:
        w3: AsyncWeb3[Any] = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        try:
            devnet = await deploy_devnet(
                w3, DEV_ACCOUNTS[0], execution_buffer_time=2, num_selected_executors=1
            )
            async with running_secret_store(FakeSecretStore()) as store:
                files = write_node_files(folder, anvil, devnet, secret_store_port=store.port)
                async with running_daemon(files) as daemon:
                    yield AdminNode(
                        daemon, AdminClient(daemon.admin_url, timeout_s=10), store, files
                    )
        finally:
            await w3.provider.disconnect()
