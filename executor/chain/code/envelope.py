"""A transaction's signed bytes, checked against its hash, and the fields read only from them.

A job names its code by ``codehash``, the hash of the transaction that carries the code. The hash
of a transaction is keccak256 of its signed encoding, so the signed bytes are the only thing an RPC
can serve that we can check: an RPC that rewrites a transaction's ``input`` in its JSON view (or
inside the raw bytes) cannot make the rewritten bytes hash to ``codehash``. So the code path is:

1. get the signed bytes (``eth_getRawTransactionByHash``; where an RPC lacks that method, rebuild
   the signed envelope from the JSON fields of ``eth_getTransactionByHash``, signature included);
2. ``keccak256(bytes) == codehash``, or the answer is rejected;
3. ``to`` and calldata are decoded from those bytes only, never taken from the JSON.

Decoding and re-encoding use eth-account's typed-transaction classes (EIP-2930, 1559, 4844, 7702)
and, for the legacy format (which eth-account keeps private), an RLP schema built from the ``rlp``
package's sedes. No RLP is parsed by hand here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rlp
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from rlp.sedes import Binary, big_endian_int, binary

from executor.errors import RawTxError, TxHashMismatch

LEGACY_TYPE = 0
BLOB_TYPE = 3
TYPED_TYPES = (1, 2, 3, 4)
"""EIP-2930 access list, EIP-1559 dynamic fee, EIP-4844 blob, EIP-7702 set code."""
MAX_RAW_TX_BYTES = 4 * 1024 * 1024
"""Larger than any transaction a node accepts (calldata is bounded by the block gas limit)."""
_DECODE_ERRORS = (
    rlp.exceptions.RLPException,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
)
"""What eth-account / rlp raise on bytes or fields that are not a transaction of the type."""


class LegacyTransaction(rlp.Serializable):
    """Pre-EIP-2718 signed transaction: ``rlp([nonce, gasPrice, gas, to, value, data, v, r, s])``.

    ``v`` is 27/28 before EIP-155 and ``chainId * 2 + 35/36`` with it; either way it is encoded
    as-is, so one schema covers both.
    """

    fields = (
        ("nonce", big_endian_int),
        ("gasPrice", big_endian_int),
        ("gas", big_endian_int),
        ("to", Binary.fixed_length(20, allow_empty=True)),
        ("value", big_endian_int),
        ("data", binary),
        ("v", big_endian_int),
        ("r", big_endian_int),
        ("s", big_endian_int),
    )


@dataclass(frozen=True)
class DecodedTx:
    """What the verified bytes say: the envelope type, the recipient and the calldata."""

    tx_type: int
    to: str | None
    """Checksummed recipient; None for a contract creation."""
    data: bytes


def tx_hash_of(raw: bytes) -> bytes:
    return keccak(raw)


def verify_raw_tx(raw: bytes, tx_hash: bytes) -> DecodedTx:
    """Decode ``raw`` after checking that it hashes to ``tx_hash``.

    Raises ``TxHashMismatch`` when it does not (the bytes are not that transaction) and
    ``RawTxError`` when the bytes do hash to it but cannot be decoded.
    """
    if len(tx_hash) != 32:
        raise RawTxError(f"a transaction hash is 32 bytes, got {len(tx_hash)}")
    actual = tx_hash_of(raw)
    if actual != tx_hash:
        body = blob_tx_body(raw)
        if body is None or tx_hash_of(body) != tx_hash:
            raise TxHashMismatch(expected=tx_hash.hex(), actual=actual.hex())
        raw = body
    return decode_signed_tx(raw)


def blob_tx_body(raw: bytes) -> bytes | None:
    """The canonical ``0x03 || rlp(tx_payload_body)`` inside a blob transaction's network form.

    Some nodes serve a blob transaction with its sidecar (``rlp([tx_payload_body, ...blobs])``);
    its hash is that of the body alone. None when ``raw`` is not such a wrapper.
    """
    if raw[:1] != bytes([BLOB_TYPE]) or len(raw) > MAX_RAW_TX_BYTES:
        return None
    try:
        items = rlp.decode(raw[1:])
    except rlp.exceptions.RLPException:
        return None
    if not isinstance(items, list) or not items or not isinstance(items[0], list):
        return None
    return bytes([BLOB_TYPE]) + bytes(rlp.encode(items[0]))


def decode_signed_tx(raw: bytes) -> DecodedTx:
    """The type, recipient and calldata of a signed transaction encoding (any supported type)."""
    if not raw:
        raise RawTxError("empty transaction bytes")
    if len(raw) > MAX_RAW_TX_BYTES:
        raise RawTxError(f"transaction bytes too large ({len(raw)} > {MAX_RAW_TX_BYTES})")
    first = raw[0]
    if first >= 0xC0:  # an RLP list: the legacy format
        try:
            legacy = rlp.decode(raw, LegacyTransaction)
        except rlp.exceptions.RLPException as e:
            raise RawTxError(f"malformed legacy transaction: {_short(e)}") from e
        return DecodedTx(LEGACY_TYPE, _address_or_none(legacy.to), bytes(legacy.data))
    if first not in TYPED_TYPES:
        raise RawTxError(f"unsupported transaction type 0x{first:02x}")
    try:
        typed = TypedTransaction.from_bytes(HexBytes(raw))
        fields = typed.as_dict()
    except _DECODE_ERRORS as e:
        raise RawTxError(f"malformed type-{first} transaction: {_short(e)}") from e
    return DecodedTx(first, _address_or_none(fields.get("to")), bytes(fields.get("data") or b""))


def envelope_from_json(tx: Mapping[str, Any]) -> bytes:
    """Rebuild the signed encoding of a transaction from its ``eth_getTransactionByHash`` JSON.

    Every field that enters the encoding (signature included) is taken from ``tx``; the result is
    only trusted after its hash is checked. Raises ``RawTxError`` for a type or a field set that
    cannot be re-encoded.
    """
    try:
        tx_type = _int(tx.get("type", 0))
        if tx_type == LEGACY_TYPE:
            legacy = LegacyTransaction(
                nonce=_int(tx["nonce"]),
                gasPrice=_int(tx["gasPrice"]),
                gas=_int(tx["gas"]),
                to=_bytes(tx.get("to")),
                value=_int(tx["value"]),
                data=_bytes(tx.get("input")),
                v=_int(tx["v"]),
                r=_int(tx["r"]),
                s=_int(tx["s"]),
            )
            return bytes(rlp.encode(legacy))
        if tx_type not in TYPED_TYPES:
            raise RawTxError(f"unsupported transaction type {tx_type}")
        typed = TypedTransaction.from_dict(_typed_fields(tx, tx_type))
        return bytes(typed.encode())
    except RawTxError:
        raise
    except _DECODE_ERRORS as e:
        raise RawTxError(f"cannot rebuild the signed transaction from JSON: {_short(e)}") from e


_COMMON = ("chainId", "nonce", "gas", "value", "r", "s")
_TYPE_FIELDS: dict[int, tuple[str, ...]] = {
    1: ("gasPrice", "accessList"),
    2: ("maxPriorityFeePerGas", "maxFeePerGas", "accessList"),
    3: (
        "maxPriorityFeePerGas",
        "maxFeePerGas",
        "accessList",
        "maxFeePerBlobGas",
        "blobVersionedHashes",
    ),
    4: ("maxPriorityFeePerGas", "maxFeePerGas", "accessList", "authorizationList"),
}
_AUTHORIZATION_FIELDS = ("chainId", "address", "nonce", "yParity", "r", "s")


def _typed_fields(tx: Mapping[str, Any], tx_type: int) -> dict[str, Any]:
    """Only the fields that enter the signed encoding, in the form eth-account expects."""
    fields: dict[str, Any] = {"type": tx_type}
    for name in (*_COMMON, *_TYPE_FIELDS[tx_type]):
        fields[name] = tx[name]
    fields["data"] = tx.get("input") or "0x"
    fields["v"] = tx["yParity"] if "yParity" in tx else tx["v"]
    if tx.get("to"):
        fields["to"] = to_checksum_address(tx["to"])
    if tx_type == 4:
        fields["authorizationList"] = [
            {k: auth[k] for k in _AUTHORIZATION_FIELDS} for auth in tx["authorizationList"]
        ]
    return fields


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a quantity")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        return int(value, 16)
    raise TypeError(f"expected a 0x-prefixed quantity, got {type(value).__name__}")


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return bytes(HexBytes(value))
    raise TypeError(f"expected hex data, got {type(value).__name__}")


def _address_or_none(value: Any) -> str | None:
    raw = _bytes(value)
    if not raw:
        return None
    return to_checksum_address(raw)


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."
