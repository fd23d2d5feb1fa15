"""The one JSON-RPC call helper (executor.chain.rpc) and the raw reads of
executor.chain.transactions.reads, against a real anvil and against bad answers.

They replace web3's formatted reads on the per-block paths, so they must agree with web3 on what
the node said, and reject what a node should never say with a message naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from executor.chain import rpc
from executor.chain.rpc import RpcCallError
from executor.chain.transactions import reads as raw
from executor.errors import ChainError
from oyster_devnet.accounts import DEV_ACCOUNTS

SENDER, RECEIVER = DEV_ACCOUNTS[5], DEV_ACCOUNTS[6]


async def test_reads_agree_with_web3(w3: AsyncWeb3[Any]) -> None:
    tx_hash = await w3.eth.send_transaction(
        {"from": SENDER.address, "to": RECEIVER.address, "value": 1}
    )
    formatted = await w3.eth.wait_for_transaction_receipt(tx_hash)
    block = await w3.eth.get_block("latest")
    number, timestamp, base_fee = await raw.block_header(w3, "latest")
    assert (number, timestamp, base_fee) == (
        block["number"],
        block["timestamp"],
        block["baseFeePerGas"],
    )
    assert await raw.nonce(w3, SENDER.address, "latest") == await w3.eth.get_transaction_count(
        SENDER.address
    )
    assert await raw.receipt(w3, tx_hash.to_0x_hex()) == (
        formatted["blockNumber"],
        True,
        formatted["gasUsed"],
    )
    assert await raw.transaction_block(w3, tx_hash.to_0x_hex()) == formatted["blockNumber"]
    unknown = "0x" + "ab" * 32
    assert await raw.receipt(w3, unknown) is None
    assert await raw.transaction_block(w3, unknown) is False


async def test_a_pending_transaction_has_no_block(w3: AsyncWeb3[Any]) -> None:
    await w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        tx_hash = await w3.eth.send_transaction(
            {"from": SENDER.address, "to": RECEIVER.address, "value": 1}
        )
        assert await raw.transaction_block(w3, tx_hash.to_0x_hex()) is None
        assert await raw.receipt(w3, tx_hash.to_0x_hex()) is None
        assert await raw.nonce(w3, SENDER.address, "pending") == 1 + await raw.nonce(
            w3, SENDER.address, "latest"
        )
    finally:
        await w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]


async def test_a_json_rpc_error_is_raised_as_web3_raises_it(w3: AsyncWeb3[Any]) -> None:
    with pytest.raises(Web3RPCError) as raised:
        await rpc.call(w3, "eth_sendRawTransaction", ["0x00"])
    assert raised.value.rpc_response is not None and "error" in raised.value.rpc_response
    assert isinstance(raised.value, ChainError)  # and a ChainError, for the executor's handlers
    assert not raised.value.method_missing
    with pytest.raises(RpcCallError) as missing:
        await rpc.call(w3, "no_suchMethod", [])
    assert missing.value.method_missing
    assert str(missing.value).startswith("no_suchMethod answered error -32601: ")
    assert raw.call is rpc.call  # one helper, reachable from both modules


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "0x1",
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "error": "boom"},
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "nonce too low"}},
    ],
)
def test_an_answer_without_a_result_is_an_error_naming_the_method(answer: object) -> None:
    with pytest.raises(RpcCallError, match=r"^eth_x answered error"):
        rpc.result_of("eth_x", answer)


def test_a_null_result_is_an_answer() -> None:
    assert rpc.result_of("eth_x", {"jsonrpc": "2.0", "id": 1, "result": None}) is None
    assert rpc.request("eth_x", [1]) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "eth_x",
        "params": [1],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0x0", 0), ("0x1a", 26), ("0X10", 16), (7, 7)],
)
def test_quantities(value: object, expected: int) -> None:
    assert raw.quantity(value, "x") == expected


@pytest.mark.parametrize("value", [None, "", "0x", "12", "0xzz", True, 1.5, [], {"a": 1}])
def test_a_bad_quantity_names_the_field(value: object) -> None:
    with pytest.raises(ValueError, match=r"the node answered block number = .* not a hex quantity"):
        raw.quantity(value, "block number")
