"""The transaction manager's rules (executor.chain.transactions.policy): fees, nonces, RPC
errors."""

from __future__ import annotations

import aiohttp
import pytest
from web3.exceptions import ContractCustomError, TimeExhausted, Web3RPCError

from executor.chain.transactions.policy import (
    Fees,
    NonceBook,
    RpcFailure,
    classify_rpc_error,
    revert_data,
)

GWEI = 10**9


def rpc_error(code: int, message: str, data: str | None = None) -> Web3RPCError:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return Web3RPCError(str(error), rpc_response={"jsonrpc": "2.0", "id": 1, "error": error})


def test_fresh_fees_leave_room_for_a_rising_base_fee() -> None:
    assert Fees.fresh(10 * GWEI, GWEI) == Fees(GWEI, 21 * GWEI)


@pytest.mark.parametrize("fees", [Fees(0, 0), Fees(1, 1), Fees(GWEI, 3 * GWEI), Fees(7, 10**18)])
def test_a_bump_is_at_least_twelve_and_a_half_percent_on_both(fees: Fees) -> None:
    bumped = fees.bumped()
    assert bumped.tip * 8 >= fees.tip * 9 and bumped.tip > fees.tip
    assert bumped.cap * 8 >= fees.cap * 9 and bumped.cap > fees.cap
    assert bumped.cap >= bumped.tip


def test_a_replacement_follows_the_base_fee_when_it_rose_more_than_a_bump() -> None:
    old = Fees(GWEI, 3 * GWEI)
    current = Fees.fresh(100 * GWEI, GWEI)
    replacement = old.replacement(current)
    assert replacement.cap == current.cap
    assert replacement.tip * 8 >= old.tip * 9


def test_a_replacement_is_a_bump_when_fees_fell() -> None:
    old = Fees(2 * GWEI, 50 * GWEI)
    assert old.replacement(Fees.fresh(GWEI, GWEI)) == old.bumped()


def test_fees_refuse_a_cap_below_the_tip() -> None:
    with pytest.raises(ValueError, match="bad fees"):
        Fees(2, 1)


def test_nonce_book_is_read_once_then_assigned_locally() -> None:
    book = NonceBook()
    assert not book.synced
    with pytest.raises(RuntimeError):
        book.take()
    book.sync(5)
    assert [book.take(), book.take(), book.take()] == [5, 6, 7]
    book.sync(3)  # a stale chain count never hands out a nonce twice
    assert book.take() == 8
    book.sync(20)  # a gap (someone else used the key): jump ahead
    assert book.take() == 20


def test_nonce_book_takes_back_only_the_last_nonce() -> None:
    book = NonceBook()
    book.sync(0)
    first, second = book.take(), book.take()
    assert not book.give_back(first)  # a later nonce is out: giving back would make a gap
    assert book.give_back(second)
    assert book.take() == second


@pytest.mark.parametrize(
    ("message", "failure"),
    [
        ("nonce too low", RpcFailure.NONCE_TOO_LOW),  # anvil, geth
        ("Insufficient funds for gas * price + value", RpcFailure.INSUFFICIENT_FUNDS),  # anvil
        ("insufficient funds for gas * price + value: balance 0", RpcFailure.INSUFFICIENT_FUNDS),
        ("transaction already imported", RpcFailure.ALREADY_KNOWN),  # anvil
        ("already known", RpcFailure.ALREADY_KNOWN),  # geth
        ("replacement transaction underpriced", RpcFailure.UNDERPRICED),
        ("max fee per gas less than block base fee", RpcFailure.FEE_BELOW_BASE_FEE),  # anvil
        ("gas limit reached", RpcFailure.OTHER),
        ("execution reverted: something", RpcFailure.OTHER),  # text alone is not a revert
    ],
)
def test_node_errors_are_classified(message: str, failure: RpcFailure) -> None:
    assert classify_rpc_error(rpc_error(-32003, message)) is failure


def test_a_revert_is_recognised_by_its_code_and_carries_its_data() -> None:
    error = rpc_error(3, "whatever the node says", "0x7981736d" + "00" * 32)
    assert classify_rpc_error(error) is RpcFailure.REVERT
    assert revert_data(error) == bytes.fromhex("7981736d" + "00" * 32)


def test_web3_contract_errors_are_reverts_with_data() -> None:
    error = ContractCustomError("0x7981736d", data="0x7981736d")
    assert classify_rpc_error(error) is RpcFailure.REVERT
    assert revert_data(error) == bytes.fromhex("7981736d")


@pytest.mark.parametrize(
    "error",
    [aiohttp.ClientConnectionError("refused"), TimeoutError(), OSError("reset"), TimeExhausted()],
)
def test_transport_errors_are_transient(error: BaseException) -> None:
    assert classify_rpc_error(error) is RpcFailure.TRANSIENT
    assert revert_data(error) is None
