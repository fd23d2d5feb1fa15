"""Signing the executor's own transactions (EIP-1559, type 2) without eth-account's generic path.

Every output's critical path signs one transaction. eth-account validates and converts a generic
dict on each call; the envelope this daemon sends never changes shape, so it is serialized here with
the ``rlp`` package and signed with coincurve, in about a quarter of the CPU (BENCHMARKS.md), byte
for byte what eth-account produces (pinned by ``tests/test_txsign.py``)::

    hash = keccak256(0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas, to,
                                  value, data, accessList=[]]))
    raw  = 0x02 || rlp([... the same nine ..., yParity, r, s])

The transaction hash is keccak256(raw).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import rlp
from coincurve import PrivateKey
from eth_utils import keccak, to_canonical_address

DYNAMIC_FEE_TX_TYPE = b"\x02"


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    hash: str
    """0x-prefixed hex of keccak256(raw)."""


@lru_cache(maxsize=8)
def _private_key(secret: bytes) -> PrivateKey:
    return PrivateKey(secret)


def sign_dynamic_fee_tx(
    secret: bytes,
    *,
    chain_id: int,
    nonce: int,
    tip: int,
    max_fee: int,
    gas: int,
    to: str,
    value: int,
    data: bytes,
) -> SignedTx:
    """Sign a type-2 transaction with the 32-byte ``secret``; no access list."""
    fields: list[object] = [
        chain_id,
        nonce,
        tip,
        max_fee,
        gas,
        to_canonical_address(to),
        value,
        data,
        [],
    ]
    digest = keccak(DYNAMIC_FEE_TX_TYPE + rlp.encode(fields))
    signature = _private_key(bytes(secret)).sign_recoverable(digest, hasher=None)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    raw = DYNAMIC_FEE_TX_TYPE + rlp.encode([*fields, signature[64], r, s])
    return SignedTx(raw=raw, hash="0x" + keccak(raw).hex())
