"""CodeFetcher on a real anvil, directly and through lying proxies: every transaction type anvil
mines, the JSON-rebuild path, endpoint order, and that only verified code is returned or cached."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import rlp
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from executor.chain.code import CodeFetcher, FetchedCode
from executor.chain.code.cache import CodeCache
from executor.chain.code.envelope import LegacyTransaction
from executor.errors import ChainError
from executor.outcome import ErrorCode
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode, start_anvil
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.tools import free_port
from tests.code_txs import CODE_SENDER, TX_KINDS, send_code_tx
from tests.relay import Relay, running_relay
from tests.tx_samples import code_calldata

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.chain]

HONEST = "export default { fetch() { return new Response('honest'); } };"
EVIL = "export default { fetch() { return new Response('pwned'); } };"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chain() -> AsyncIterator[tuple[AnvilNode, AsyncWeb3[Any], Devnet]]:
    async with start_anvil() as node:
        w3 = AsyncWeb3(AsyncHTTPProvider(node.http_url))
        try:
            devnet = await deploy_devnet(
                w3, DEV_ACCOUNTS[0], execution_buffer_time=2, num_selected_executors=1
            )
            yield node, w3, devnet
        finally:
            await w3.provider.disconnect()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def code_txs(chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet]) -> dict[str, str]:
    _, w3, devnet = chain
    return {
        kind: await send_code_tx(w3, devnet.user_code_address, HONEST, kind) for kind in TX_KINDS
    }


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet]) -> AsyncIterator[Relay]:
    async with running_relay(chain[0].http_url) as p:
        yield p


def client(url: str) -> AsyncWeb3[Any]:
    return AsyncWeb3(AsyncHTTPProvider(url))


async def fetch(
    urls: list[str], devnet: Devnet, codehash: str, cache: CodeCache | None = None
) -> FetchedCode:
    clients = [client(u) for u in urls]
    try:
        return await CodeFetcher(clients, devnet.user_code_address, cache).fetch(codehash)
    finally:
        for c in clients:
            await c.provider.disconnect()


@pytest.mark.parametrize("kind", TX_KINDS)
async def test_honest_rpc_gives_the_code_for_every_tx_type(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet], code_txs: dict[str, str], kind: str
) -> None:
    node, _, devnet = chain
    assert await fetch([node.http_url], devnet, code_txs[kind]) == FetchedCode(code=HONEST.encode())


@pytest.mark.parametrize("kind", TX_KINDS)
async def test_without_the_raw_method_the_json_view_is_rebuilt_and_verified(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet],
    code_txs: dict[str, str],
    proxy: Relay,
    kind: str,
) -> None:
    proxy.hide = {"eth_getRawTransactionByHash"}
    assert await fetch([proxy.url], chain[2], code_txs[kind]) == FetchedCode(code=HONEST.encode())
    assert "eth_getTransactionByHash" in proxy.calls


async def rewrite_input(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getTransactionByHash" and result:
        return {**result, "input": "0x" + code_calldata(EVIL.encode()).hex()}
    return result


async def rewrite_raw_calldata(method: str, params: list[Any], result: Any) -> Any:
    """Re-encode a legacy tx with the attacker's calldata, signature kept."""
    if method == "eth_getRawTransactionByHash" and result:
        tx = rlp.decode(bytes.fromhex(result[2:]), LegacyTransaction)
        return "0x" + rlp.encode(tx.copy(data=code_calldata(EVIL.encode()))).hex()
    return await rewrite_input(method, params, result)


async def test_a_json_view_lie_is_harmless_when_the_raw_bytes_are_served(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet], code_txs: dict[str, str], proxy: Relay
) -> None:
    proxy.rewrite = rewrite_input
    got = await fetch([proxy.url], chain[2], code_txs["eip1559"])
    assert got == FetchedCode(code=HONEST.encode())


@pytest.mark.parametrize("hide_raw", [True, False], ids=["json-rewritten", "raw-rewritten"])
async def test_a_lying_rpc_gives_error_1_and_a_warning_naming_it(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet],
    code_txs: dict[str, str],
    proxy: Relay,
    caplog: pytest.LogCaptureFixture,
    hide_raw: bool,
) -> None:
    caplog.set_level(logging.INFO)
    proxy.hide = {"eth_getRawTransactionByHash"} if hide_raw else set()
    proxy.rewrite = rewrite_input if hide_raw else rewrite_raw_calldata
    cache = CodeCache()
    got = await fetch([proxy.url], chain[2], code_txs["legacy-eip155"], cache)
    assert got == FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
    assert len(cache) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("POSSIBLE ATTACK" in m and proxy.url.rstrip("/") in m for m in warnings), warnings


async def test_first_endpoint_lies_second_is_honest(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet], code_txs: dict[str, str], proxy: Relay
) -> None:
    node, _, devnet = chain
    proxy.rewrite = rewrite_raw_calldata
    cache = CodeCache()
    got = await fetch([proxy.url, node.http_url], devnet, code_txs["legacy-eip155"], cache)
    assert got == FetchedCode(code=HONEST.encode())
    assert code_txs["legacy-eip155"] in cache
    # Cached: the lying endpoint alone now cannot change the answer.
    proxy.calls.clear()
    assert await fetch([proxy.url], devnet, code_txs["legacy-eip155"], cache) == got
    assert not proxy.calls


async def test_an_endpoint_answering_for_another_transaction_is_skipped(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet], code_txs: dict[str, str], proxy: Relay
) -> None:
    node, w3, devnet = chain
    evil_hash = await send_code_tx(w3, devnet.user_code_address, EVIL, "eip1559")

    async def swap(method: str, params: list[Any], result: Any) -> Any:
        if method.startswith("eth_get") and method.endswith("TransactionByHash"):
            response = await w3.provider.make_request(method, [evil_hash])  # type: ignore[arg-type]
            return response["result"]
        return result

    proxy.rewrite = swap
    assert await fetch([proxy.url], devnet, code_txs["eip1559"]) == FetchedCode(
        error=ErrorCode.CODE_TX_NOT_FOUND
    )
    got = await fetch([proxy.url, node.http_url], devnet, code_txs["eip1559"])
    assert got == FetchedCode(code=HONEST.encode())


async def test_unreachable_first_endpoint_is_skipped_and_all_unreachable_is_a_chain_error(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet], code_txs: dict[str, str]
) -> None:
    node, _, devnet = chain
    dead = f"http://127.0.0.1:{free_port()}/"
    got = await fetch([dead, node.http_url], devnet, code_txs["eip2930"])
    assert got == FetchedCode(code=HONEST.encode())
    with pytest.raises(ChainError, match="every RPC failed"):
        await fetch([dead], devnet, code_txs["eip2930"])


async def test_unknown_tx_and_wrong_recipient_and_bad_calldata(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet],
) -> None:
    node, w3, devnet = chain
    missing = await fetch([node.http_url], devnet, "0x" + "42" * 32)
    assert missing == FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
    elsewhere = await send_code_tx(w3, devnet.jobs_address, HONEST, "eip1559", may_revert=True)
    assert await fetch([node.http_url], devnet, elsewhere) == FetchedCode(
        error=ErrorCode.CODE_TX_NOT_FOUND
    )
    account = Account.from_key(CODE_SENDER.private_key)
    signed = account.sign_transaction(
        {
            "to": devnet.user_code_address,
            "data": b"\x12\x34\x56\x78garbage",
            "gas": 100_000,
            "gasPrice": 10**10,
            "chainId": await w3.eth.chain_id,
            "nonce": await w3.eth.get_transaction_count(account.address, "pending"),
        }
    )
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    await w3.eth.wait_for_transaction_receipt(tx_hash)
    assert await fetch([node.http_url], devnet, tx_hash.to_0x_hex()) == FetchedCode(
        error=ErrorCode.INVALID_CALLDATA
    )


@pytest.mark.parametrize(
    ("raw_answer", "json_answer"),
    [
        (5, None),
        ({"x": 1}, None),
        ("0xzz", None),
        ("not hex", None),
        ([], None),
        (None, 5),
        (None, "0x1234"),
        (None, {"type": "0x2"}),
        (None, {"type": "0x7", "input": "0x"}),
        ("0x" + "00" * 100, None),
    ],
)
async def test_garbage_answers_are_discarded_with_a_reason(
    chain: tuple[AnvilNode, AsyncWeb3[Any], Devnet],
    code_txs: dict[str, str],
    proxy: Relay,
    caplog: pytest.LogCaptureFixture,
    raw_answer: Any,
    json_answer: Any,
) -> None:
    async def garbage(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getRawTransactionByHash":
            return raw_answer
        if method == "eth_getTransactionByHash":
            return json_answer
        return result

    proxy.rewrite = garbage
    got = await fetch([proxy.url], chain[2], code_txs["eip1559"])
    assert got == FetchedCode(error=ErrorCode.CODE_TX_NOT_FOUND)
    assert any(proxy.url.rstrip("/") in r.getMessage() for r in caplog.records)
    # With an honest endpoint behind it, the job still gets its code.
    node = chain[0]
    assert await fetch([proxy.url, node.http_url], chain[2], code_txs["eip1559"]) == FetchedCode(
        code=HONEST.encode()
    )
