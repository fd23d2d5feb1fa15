"""Strict ABI decoding of the few types our events carry, for the listener's hot path.

eth_abi's general decoder took about 0.35 ms per log here, on the critical path of every job (and
twice per job in a burst: JobCreated, then our own JobResponded). This one reads the same words for
``uint256``, ``uint8``, ``address``, ``bytes32``, ``bytes`` and ``address[]`` and refuses exactly
what eth_abi's ``decode(types, data, strict=True)`` refuses, which ``tests/test_abi_decode.py``
checks by decoding the same random and mangled inputs with both:

- every head word must be there; a dynamic field's offset must point past the head and inside
  the data (eth_abi's pointer validation);
- ``uint8`` and ``address`` words must be zero-padded; ``bytes`` must be followed by its padding,
  all zeros; an array's items must all be there;
- data after what the fields use is ignored, as eth_abi ignores it.

Values come out as eth_abi gives them: ints, ``bytes``, and addresses as lowercase ``0x`` hex.
"""

from __future__ import annotations

from typing import Any

WORD = 32
STATIC = frozenset({"uint256", "uint8", "address", "bytes32"})
DYNAMIC = frozenset({"bytes", "address[]"})


class AbiDecodeError(ValueError):
    """The data does not decode as the given types (the message says where)."""


def decode(types: tuple[str, ...] | list[str], data: bytes) -> list[Any]:
    """The values of ``types`` ABI-encoded (head and tail) in ``data``."""
    head_end = WORD * len(types)
    for index, abi_type in enumerate(types):  # eth_abi validates every pointer before decoding
        if abi_type in DYNAMIC:
            offset = _uint(data, WORD * index)
            if offset < head_end or offset >= len(data):
                raise AbiDecodeError(f"field {index} ({abi_type}) points outside the data")
        elif abi_type not in STATIC:
            raise ValueError(f"abi_decode does not handle {abi_type}")
    values: list[Any] = []
    for index, abi_type in enumerate(types):
        at = WORD * index
        if abi_type == "bytes":
            values.append(_bytes(data, _uint(data, at)))
        elif abi_type == "address[]":
            values.append(_addresses(data, _uint(data, at)))
        else:
            values.append(_static(abi_type, _word(data, at)))
    return values


def _word(data: bytes, at: int) -> bytes:
    word = data[at : at + WORD]
    if len(word) != WORD:
        raise AbiDecodeError(f"the data ends before the word at byte {at}")
    return word


def _uint(data: bytes, at: int) -> int:
    return int.from_bytes(_word(data, at), "big")


def _static(abi_type: str, word: bytes) -> Any:
    if abi_type == "uint256":
        return int.from_bytes(word, "big")
    if abi_type == "bytes32":
        return word
    if abi_type == "uint8":
        if any(word[:31]):
            raise AbiDecodeError("a uint8 word is not zero-padded")
        return word[31]
    if any(word[:12]):  # address
        raise AbiDecodeError("an address word is not zero-padded")
    return "0x" + word[12:].hex()


def _bytes(data: bytes, offset: int) -> bytes:
    length = _uint(data, offset)
    start = offset + WORD
    padded = -(-length // WORD) * WORD
    chunk = data[start : start + padded]
    if len(chunk) < padded:
        raise AbiDecodeError(f"bytes of length {length} run past the end of the data")
    if any(chunk[length:]):
        raise AbiDecodeError("the padding after bytes is not zero")
    return chunk[:length]


def _addresses(data: bytes, offset: int) -> tuple[str, ...]:
    count = _uint(data, offset)
    base = offset + WORD
    if base + WORD * count > len(data):
        raise AbiDecodeError(f"an array of {count} addresses runs past the end of the data")
    return tuple(_static("address", _word(data, base + WORD * i)) for i in range(count))
