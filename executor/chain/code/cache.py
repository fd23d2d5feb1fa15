"""Verified code, and a bounded LRU cache of it keyed by ``codehash``.

A code transaction never changes once mined, so what was verified once can be reused: a popular
function is fetched (and checked) once. The cache holds only ``VerifiedCode`` values, and a
``VerifiedCode`` can only be made by ``VerifiedCode.from_signed_bytes``, which itself checks that
the bytes hash to ``codehash`` before decoding them. Unverified bytes therefore have no way in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from executor.chain.code.calldata import decode_code_calldata
from executor.chain.code.envelope import verify_raw_tx
from executor.outcome import ErrorCode

DEFAULT_CACHE_BYTES = 32 * 1024 * 1024

_MINT = object()
"""Private capability: only this module's constructor path passes it to ``VerifiedCode``."""


class VerifiedCode:
    """What a code transaction, checked against its hash, says: code bytes or a protocol error.

    ``error`` is set (and ``code`` empty) when the verified transaction was not sent to the
    UserCode contract (1) or its calldata is not a ``saveCodeInCallData`` call (2): those are
    facts about an immutable transaction, so they are as cacheable as code.
    """

    __slots__ = ("code", "codehash", "error")

    code: bytes
    codehash: str
    error: ErrorCode | None

    def __init__(self, mint: object, codehash: str, code: bytes, error: ErrorCode | None) -> None:
        if mint is not _MINT:
            raise TypeError("VerifiedCode is made only by VerifiedCode.from_signed_bytes")
        object.__setattr__(self, "codehash", codehash)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "error", error)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VerifiedCode is immutable")

    @classmethod
    def from_signed_bytes(cls, codehash: str, raw: bytes, code_contract: str) -> VerifiedCode:
        """Verify ``raw`` against ``codehash`` and read the code from it.

        Raises ``TxHashMismatch`` when the bytes are not that transaction, ``RawTxError`` when they
        are but cannot be decoded.
        """
        tx = verify_raw_tx(raw, _hash_bytes(codehash))
        key = normalize_codehash(codehash)
        if tx.to is None or tx.to.lower() != code_contract.lower():
            return cls(_MINT, key, b"", ErrorCode.CODE_TX_NOT_FOUND)
        code = decode_code_calldata(tx.data)
        if code is None:
            return cls(_MINT, key, b"", ErrorCode.INVALID_CALLDATA)
        return cls(_MINT, key, code, None)

    @property
    def size(self) -> int:
        return len(self.code) + 64

    def __repr__(self) -> str:
        what = f"error={self.error.name}" if self.error is not None else f"{len(self.code)}B"
        return f"VerifiedCode({self.codehash}, {what})"


def normalize_codehash(codehash: str) -> str:
    return "0x" + _hash_bytes(codehash).hex()


def _hash_bytes(codehash: str) -> bytes:
    digits = codehash[2:] if codehash.startswith(("0x", "0X")) else codehash
    try:
        return bytes.fromhex(digits)
    except ValueError as e:
        raise ValueError(f"codehash {codehash[:80]!r} is not hex") from e


class CodeCache:
    """LRU of ``VerifiedCode`` bounded by the total bytes of code it holds."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, VerifiedCode] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, codehash: str) -> VerifiedCode | None:
        key = normalize_codehash(codehash)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, verified: VerifiedCode) -> None:
        if type(verified) is not VerifiedCode:
            raise TypeError("CodeCache holds only VerifiedCode values")
        if verified.size > self.max_bytes:
            return  # larger than the whole cache: not kept, not an error
        with self._lock:
            old = self._entries.pop(verified.codehash, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[verified.codehash] = verified
            self._bytes += verified.size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, codehash: object) -> bool:
        return isinstance(codehash, str) and normalize_codehash(codehash) in self._entries
