"""The fast signer of the executor's own transactions is byte for byte eth-account's."""

from __future__ import annotations

from eth_account import Account
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.chain.transactions.signing import sign_dynamic_fee_tx
from oyster_devnet.accounts import DEV_ACCOUNTS
from tests.fuzz_profiles import examples

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
uint256 = st.integers(min_value=0, max_value=2**256 - 1)
addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)


@settings(max_examples=examples(200))
@given(
    chain_id=st.integers(min_value=1, max_value=2**32),
    nonce=uint64,
    tip=uint256,
    max_fee=uint256,
    gas=uint64,
    to=addresses,
    value=uint256,
    data=st.binary(max_size=2048),
    signer=st.sampled_from(DEV_ACCOUNTS),
)
def test_same_bytes_and_hash_as_eth_account(
    chain_id: int,
    nonce: int,
    tip: int,
    max_fee: int,
    gas: int,
    to: str,
    value: int,
    data: bytes,
    signer: object,
) -> None:
    key = bytes.fromhex(signer.private_key.removeprefix("0x"))  # type: ignore[attr-defined]
    expected = Account.sign_transaction(
        {
            "chainId": chain_id,
            "nonce": nonce,
            "maxPriorityFeePerGas": tip,
            "maxFeePerGas": max_fee,
            "gas": gas,
            "to": to,
            "value": value,
            "data": data,
            "type": 2,
        },
        key,
    )
    signed = sign_dynamic_fee_tx(
        key,
        chain_id=chain_id,
        nonce=nonce,
        tip=tip,
        max_fee=max_fee,
        gas=gas,
        to=to,
        value=value,
        data=data,
    )
    assert signed.raw == bytes(expected.raw_transaction)
    assert signed.hash == expected.hash.to_0x_hex()
