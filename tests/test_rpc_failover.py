"""HTTP JSON-RPC failover on a real anvil behind proxies that fail the way endpoints do."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from web3.exceptions import ProviderConnectionError, Web3RPCError

from executor.chain.rpc import FailoverProvider, RpcEndpoints
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.tools import free_port
from tests.relay import Relay, running_relay

API_KEY = "k3yK3yK3yK3yK3yK3yK3y"


@pytest.fixture
async def proxies(anvil: AnvilNode) -> AsyncIterator[tuple[Relay, Relay]]:
    async with (
        running_relay(anvil.http_url) as first,
        running_relay(anvil.http_url) as second,
    ):
        yield first, second


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/{API_KEY}"


@pytest.mark.parametrize("mode", ["error500", "hang", "garbage", "refused"])
async def test_reads_fail_over_and_stay_on_the_working_endpoint(
    proxies: tuple[Relay, Relay], mode: str
) -> None:
    first, second = proxies
    if mode == "refused":
        await first.stop()
    else:
        first.mode = mode
    endpoints = RpcEndpoints([first.url + API_KEY, second.url], timeout_s=1.0)
    try:
        assert await endpoints.w3.eth.chain_id == 31337
        assert endpoints.provider.failovers == 1
        assert endpoints.provider.current_url == second.url
        await endpoints.w3.eth.block_number
        await endpoints.w3.eth.block_number
        # Once failed over, requests go to the working endpoint first.
        assert sum(first.requests.values()) == (0 if mode == "refused" else 1)
        assert second.requests["eth_blockNumber"] == 2
    finally:
        await endpoints.close()


async def test_a_json_rpc_error_is_an_answer_not_a_failure(
    proxies: tuple[Relay, Relay],
) -> None:
    first, second = proxies
    endpoints = RpcEndpoints([first.url, second.url])
    try:
        with pytest.raises(Web3RPCError):
            await endpoints.w3.eth.get_balance("0x" + "00" * 20, "not-a-block")  # type: ignore[arg-type]
        assert endpoints.provider.failovers == 0
        assert sum(second.requests.values()) == 0
    finally:
        await endpoints.close()


async def test_wraps_around_when_an_earlier_endpoint_comes_back(
    proxies: tuple[Relay, Relay],
) -> None:
    first, second = proxies
    endpoints = RpcEndpoints([first.url, second.url])
    try:
        first.mode = "error500"
        await endpoints.w3.eth.block_number
        first.mode = "ok"
        second.mode = "error500"
        await endpoints.w3.eth.block_number
        assert endpoints.provider.current_url == first.url
        assert endpoints.provider.failovers == 2
    finally:
        await endpoints.close()


async def test_every_endpoint_down_is_one_clear_error_without_the_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="executor.chain.rpc")
    urls = [dead_url(), dead_url()]
    endpoints = RpcEndpoints(urls, timeout_s=1.0)
    try:
        with pytest.raises(ProviderConnectionError) as raised:
            await endpoints.w3.eth.block_number
    finally:
        await endpoints.close()
    text = str(raised.value)
    assert "every RPC endpoint failed" in text and "cannot connect" in text
    assert API_KEY not in text
    assert caplog.records, "each failover is logged"
    for record in caplog.records:
        assert API_KEY not in record.getMessage()


async def test_one_client_per_endpoint(proxies: tuple[Relay, Relay]) -> None:
    first, second = proxies
    endpoints = RpcEndpoints([first.url, second.url])
    try:
        for client in endpoints.clients:
            assert await client.eth.chain_id == 31337
        assert first.requests["eth_chainId"] == 1 and second.requests["eth_chainId"] == 1
    finally:
        await endpoints.close()


def test_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FailoverProvider([])
