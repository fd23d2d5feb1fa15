"""The verified code cache: bounded by bytes, least recently used first out, and closed to any value
that did not pass the hash check."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from executor.chain.code.cache import CodeCache, VerifiedCode
from executor.errors import TxHashMismatch
from executor.outcome import ErrorCode
from tests.tx_samples import TO, all_samples, code_calldata


def verified(code: bytes, nonce_kind: int = 3) -> VerifiedCode:
    sample = all_samples(code_calldata(code))[nonce_kind]
    return VerifiedCode.from_signed_bytes("0x" + sample.tx_hash.hex(), sample.raw, TO)


def test_verified_code_can_only_be_made_by_verifying() -> None:
    with pytest.raises(TypeError, match="from_signed_bytes"):
        VerifiedCode(object(), "0x" + "00" * 32, b"forged", None)
    sample = all_samples(code_calldata(b"real"))[0]
    forged = sample.raw.replace(b"real", b"evil")
    with pytest.raises(TxHashMismatch):
        VerifiedCode.from_signed_bytes("0x" + sample.tx_hash.hex(), forged, TO)
    good = VerifiedCode.from_signed_bytes("0x" + sample.tx_hash.hex(), sample.raw, TO)
    assert good.code == b"real" and good.error is None
    with pytest.raises(AttributeError):
        good.code = b"evil"  # type: ignore[misc]


def test_cache_accepts_nothing_but_verified_code() -> None:
    cache = CodeCache()

    class LooksVerified:
        codehash = "0x" + "11" * 32
        code = b"evil"
        error = None
        size = 68

    class Sub(VerifiedCode):
        pass

    for fake in (LooksVerified(), b"evil", ("0x" + "11" * 32, b"evil")):
        with pytest.raises(TypeError):
            cache.put(fake)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sub(object(), "0x" + "11" * 32, b"evil", None)
    assert len(cache) == 0


def test_wrong_recipient_and_bad_calldata_are_verified_facts() -> None:
    sample = all_samples(code_calldata(b"x"))[2]
    other = VerifiedCode.from_signed_bytes(
        "0x" + sample.tx_hash.hex(), sample.raw, "0x" + "99" * 20
    )
    assert other.error == ErrorCode.CODE_TX_NOT_FOUND and other.code == b""
    junk = all_samples(b"\x12\x34\x56\x78junk")[2]
    bad = VerifiedCode.from_signed_bytes("0x" + junk.tx_hash.hex(), junk.raw, TO)
    assert bad.error == ErrorCode.INVALID_CALLDATA


def test_lru_bounded_by_total_bytes() -> None:
    a, b, c = (verified(bytes([65 + i]) * 1000, i) for i in range(3))
    cache = CodeCache(max_bytes=2 * a.size + 10)
    cache.put(a)
    cache.put(b)
    assert cache.get(a.codehash) is a  # a is now the most recently used
    cache.put(c)
    assert b.codehash not in cache and a.codehash in cache and c.codehash in cache
    assert cache.total_bytes == a.size + c.size <= cache.max_bytes
    cache.put(c)  # re-putting does not count twice
    assert cache.total_bytes == a.size + c.size


def test_code_larger_than_the_cache_is_not_kept() -> None:
    big = verified(b"x" * 5000)
    cache = CodeCache(max_bytes=1000)
    cache.put(big)
    assert len(cache) == 0 and cache.total_bytes == 0


def test_lookup_ignores_hash_case_and_prefix() -> None:
    v = verified(b"code")
    cache = CodeCache()
    cache.put(v)
    digits = v.codehash[2:]
    assert cache.get(digits.upper()) is v
    assert cache.get("0X" + digits) is v
    assert cache.get("0x" + keccak(b"other").hex()) is None
    assert (cache.hits, cache.misses) == (2, 1)
