"""The little CBOR (RFC 8949) the NSM device speaks: maps, text, bytes, ints, arrays, null, bools.

Enough to encode an NSM request and decode its response; tags are read through (their content is
returned), floats and indefinite lengths are refused with ``ValueError``.
"""

from __future__ import annotations

import struct
from typing import Any


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | extra]) + struct.pack(fmt, value)
    raise ValueError(f"integer {value} does not fit CBOR")


def encode(value: Any) -> bytes:
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes | bytearray):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode()
        return _head(3, len(raw)) + raw
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(encode(item) for item in value)
    if isinstance(value, dict):
        return _head(5, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    raise ValueError(f"cannot encode {type(value).__name__} as CBOR")


def decode(data: bytes) -> Any:
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the CBOR value")
    return value


def _decode(data: bytes, at: int) -> tuple[Any, int]:
    if at >= len(data):
        raise ValueError("truncated CBOR")
    major, info = data[at] >> 5, data[at] & 31
    at += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None, 23: None}
        if info in simple:
            return simple[info], at
        raise ValueError(f"unsupported CBOR simple/float value {info}")
    if info < 24:
        arg = info
    elif info <= 27:
        size = 1 << (info - 24)
        if at + size > len(data):
            raise ValueError("truncated CBOR")
        arg = int.from_bytes(data[at : at + size], "big")
        at += size
    else:
        raise ValueError("indefinite-length CBOR is not supported")
    if major == 0:
        return arg, at
    if major == 1:
        return -1 - arg, at
    if major in (2, 3):
        if at + arg > len(data):
            raise ValueError("truncated CBOR")
        raw = data[at : at + arg]
        return (bytes(raw) if major == 2 else raw.decode()), at + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, at = _decode(data, at)
            items.append(item)
        return items, at
    if major == 5:
        mapping = {}
        for _ in range(arg):
            key, at = _decode(data, at)
            value, at = _decode(data, at)
            mapping[tuple(key) if isinstance(key, list) else key] = value
        return mapping, at
    return _decode(data, at)  # major 6: a tag; its content
