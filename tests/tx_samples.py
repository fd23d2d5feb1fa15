"""Real signed transactions of every type, built and signed locally, and their JSON-RPC views.

eth-account signs legacy (with and without EIP-155), EIP-2930, EIP-1559 and EIP-7702 transactions;
EIP-4844 ones are assembled with ``rlp`` and signed over their signing hash with the same key.
``rpc_json`` renders a signed transaction the way ``eth_getTransactionByHash`` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rlp
from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from executor.chain.code.calldata import SAVE_CODE_SELECTOR

CHAIN_ID = 31337
SIGNER: LocalAccount = Account.from_key("0x" + "4b" * 32)
AUTHORITY: LocalAccount = Account.from_key("0x" + "5c" * 32)
TO = to_checksum_address("0x" + "c0de" * 10)
BLOB_HASH = b"\x01" + b"\x22" * 31


def code_calldata(code: bytes, metadata: bytes = b"") -> bytes:
    return SAVE_CODE_SELECTOR + encode(["string", "bytes"], [code.decode(), metadata])


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes
    tx_hash: bytes
    json: dict[str, Any]


def _q(value: int) -> str:
    return hex(value)


def _common_json(tx_type: int, nonce: int, data: bytes, to: str | None) -> dict[str, Any]:
    return {
        "type": _q(tx_type),
        "nonce": _q(nonce),
        "gas": _q(200_000),
        "to": to.lower() if to else None,
        "value": _q(7),
        "input": "0x" + data.hex(),
        # Fields a node adds that are not part of the signed encoding.
        "from": SIGNER.address.lower(),
        "blockHash": "0x" + "ab" * 32,
        "blockNumber": "0x10",
        "transactionIndex": "0x0",
    }


def sign(tx: dict[str, Any], name: str) -> Sample:
    signed = SIGNER.sign_transaction(tx)
    raw = bytes(signed.raw_transaction)
    tx_type = int(tx.get("type", 0))
    view = _common_json(tx_type, tx["nonce"], tx["data"], tx.get("to"))
    view["hash"] = "0x" + bytes(signed.hash).hex()
    view["r"], view["s"] = _q(signed.r), _q(signed.s)
    if tx_type == 0:
        view["gasPrice"] = _q(tx["gasPrice"])
        view["v"] = _q(signed.v)
        if "chainId" in tx:
            view["chainId"] = _q(tx["chainId"])
    else:
        view["chainId"] = _q(tx["chainId"])
        view["v"] = view["yParity"] = _q(signed.v)
        view["accessList"] = tx.get("accessList", [])
        for name_ in ("gasPrice", "maxFeePerGas", "maxPriorityFeePerGas"):
            if name_ in tx:
                view[name_] = _q(tx[name_])
        if tx_type == 4:
            view["authorizationList"] = [
                {
                    "chainId": _q(a.chain_id),
                    "address": a.address.hex() if isinstance(a.address, bytes) else a.address,
                    "nonce": _q(a.nonce),
                    "yParity": _q(a.y_parity),
                    "r": _q(a.r),
                    "s": _q(a.s),
                }
                for a in tx["authorizationList"]
            ]
    return Sample(name, raw, bytes(signed.hash), view)


def blob_sample(data: bytes, *, to: str = TO, nonce: int = 9, network_form: bool = False) -> Sample:
    """An EIP-4844 transaction, signed over ``keccak(0x03 || rlp(unsigned fields))``."""
    unsigned = [
        CHAIN_ID,
        nonce,
        10**9,
        10**10,
        200_000,
        bytes.fromhex(to[2:]),
        7,
        data,
        [],
        10**9,
        [BLOB_HASH],
    ]
    sig_hash = keccak(b"\x03" + rlp.encode(unsigned))
    signed = SIGNER.unsafe_sign_hash(sig_hash)
    body = b"\x03" + rlp.encode([*unsigned, signed.v - 27, signed.r, signed.s])
    raw = body
    if network_form:  # [tx_payload_body, wrapper_version, blobs, commitments, cell_proofs]
        raw = b"\x03" + rlp.encode([[*unsigned, signed.v - 27, signed.r, signed.s], 1, [], [], []])
    view = _common_json(3, nonce, data, to)
    view.update(
        chainId=_q(CHAIN_ID),
        maxPriorityFeePerGas=_q(10**9),
        maxFeePerGas=_q(10**10),
        maxFeePerBlobGas=_q(10**9),
        blobVersionedHashes=["0x" + BLOB_HASH.hex()],
        accessList=[],
        r=_q(signed.r),
        s=_q(signed.s),
        v=_q(signed.v - 27),
        yParity=_q(signed.v - 27),
        hash="0x" + keccak(body).hex(),
    )
    return Sample("eip4844" + ("-network" if network_form else ""), raw, keccak(body), view)


def all_samples(data: bytes, to: str | None = TO) -> list[Sample]:
    """One signed transaction of every supported type, each carrying ``data`` to ``to``."""
    base: dict[str, Any] = {"gas": 200_000, "value": 7, "data": data}
    if to is not None:
        base["to"] = to
    auth = AUTHORITY.sign_authorization({"chainId": CHAIN_ID, "address": TO, "nonce": 0})
    samples = [
        sign({**base, "nonce": 1, "gasPrice": 10**9, "chainId": CHAIN_ID}, "legacy-eip155"),
        sign({**base, "nonce": 2, "gasPrice": 10**9}, "legacy-pre-eip155"),
        sign(
            {
                **base,
                "nonce": 3,
                "gasPrice": 10**9,
                "chainId": CHAIN_ID,
                "type": 1,
                "accessList": [{"address": TO.lower(), "storageKeys": ["0x" + "00" * 31 + "05"]}],
            },
            "eip2930",
        ),
        sign(
            {
                **base,
                "nonce": 4,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
                "chainId": CHAIN_ID,
                "type": 2,
            },
            "eip1559",
        ),
    ]
    if to is not None:  # blob and set-code transactions cannot create contracts
        samples.append(
            sign(
                {
                    **base,
                    "nonce": 5,
                    "maxFeePerGas": 10**10,
                    "maxPriorityFeePerGas": 10**9,
                    "chainId": CHAIN_ID,
                    "type": 4,
                    "authorizationList": [auth],
                },
                "eip7702",
            )
        )
        samples.append(blob_sample(data, to=to))
    return samples
