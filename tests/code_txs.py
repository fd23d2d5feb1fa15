"""UserCode transactions of every type a real anvil accepts, sent by one dev account.

anvil (1.x, Prague rules) mines legacy transactions with and without EIP-155, EIP-2930, EIP-1559,
EIP-7702 set-code and EIP-4844 blob transactions; each carries the same ``saveCodeInCallData`` call.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rlp
from eth_account import Account
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from oyster_devnet.accounts import DEV_ACCOUNTS
from tests.tx_samples import code_calldata

CODE_SENDER = DEV_ACCOUNTS[5]
"""Not used by the devnet helpers, so its nonces are ours alone."""
# The all-zero blob's KZG commitment and proofs are all the point at infinity (0xc0, then zeros),
# so a blob transaction's sidecar can be built without the seconds of KZG work eth-account does.
INFINITY = b"\xc0" + b"\x00" * 47
ZERO_BLOB = b"\x00" * 4096 * 32
ZERO_BLOB_HASH = b"\x01" + hashlib.sha256(INFINITY).digest()[1:]
CELLS_PER_BLOB = 128
TX_KINDS = ("legacy-eip155", "legacy-pre-eip155", "eip2930", "eip1559", "eip7702", "eip4844")


async def send_code_tx(
    w3: AsyncWeb3[Any], to: str, code: str, kind: str, *, may_revert: bool = False
) -> str:
    """Send ``saveCodeInCallData(code, "")`` to ``to`` as a ``kind`` transaction; its 0x hash."""
    account = Account.from_key(CODE_SENDER.private_key)
    chain_id = await w3.eth.chain_id
    tx: dict[str, Any] = {
        "to": to,
        "data": code_calldata(code.encode()),
        "gas": 1_000_000,
        "value": 0,
        "nonce": await w3.eth.get_transaction_count(account.address, "pending"),
    }
    fees = {"maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "chainId": chain_id}
    if kind == "legacy-eip155":
        tx.update(gasPrice=10**10, chainId=chain_id)
    elif kind == "legacy-pre-eip155":
        tx.update(gasPrice=10**10)
    elif kind == "eip2930":
        tx.update(gasPrice=10**10, chainId=chain_id, type=1, accessList=[])
    elif kind == "eip1559":
        tx.update(fees, type=2)
    elif kind == "eip7702":
        authority = Account.create()
        auth = authority.sign_authorization({"chainId": chain_id, "address": to, "nonce": 0})
        tx.update(fees, type=4, authorizationList=[auth])
    elif kind == "eip4844":
        tx.update(fees, type=3, maxFeePerBlobGas=10**10, blobVersionedHashes=[ZERO_BLOB_HASH])
    else:
        raise ValueError(f"unknown transaction kind {kind}")
    signed = account.sign_transaction(tx)
    raw = bytes(signed.raw_transaction)
    if kind == "eip4844":
        raw = with_zero_blob_sidecar(raw)
    try:
        tx_hash = await w3.eth.send_raw_transaction(raw)
    except Web3RPCError as e:
        # web3 sends eth_sendRawTransaction again when the first answer is slow (a blob
        # transaction's proofs take anvil a while on a busy machine): the first one was accepted.
        if "already imported" not in str(e):
            raise
        tx_hash = signed.hash
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=20)
    assert may_revert or receipt["status"] == 1, f"{kind} code tx reverted"
    return tx_hash.to_0x_hex()


def with_zero_blob_sidecar(signed_body: bytes) -> bytes:
    """The network form of a signed blob transaction carrying one all-zero blob (EIP-7594 layout:
    ``0x03 || rlp([tx_payload_body, wrapper_version, blobs, commitments, cell_proofs])``)."""
    body = rlp.decode(signed_body[1:])
    wrapper = [body, 1, [ZERO_BLOB], [INFINITY], [INFINITY] * CELLS_PER_BLOB]
    return b"\x03" + rlp.encode(wrapper)
