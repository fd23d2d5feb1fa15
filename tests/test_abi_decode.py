"""The listener's ABI decoder against eth_abi's strict decoder, on the same inputs.

Valid encodings, mangled ones (bytes flipped, cut, extended, offsets and lengths rewritten) and
random bytes: whenever eth_abi returns values, ours returns the same; whenever eth_abi refuses, ours
refuses. Bounded (tests/fuzz_profiles.py); HYPOTHESIS_PROFILE=long hunts longer.
"""

from __future__ import annotations

from typing import Any

import eth_abi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.chain.follow.abi_decode import AbiDecodeError, decode
from executor.chain.follow.events import JOB_EVENTS, NODE_EVENTS
from tests.fuzz_profiles import examples

SHAPES = sorted(
    {e.DATA for e in (*JOB_EVENTS, *NODE_EVENTS)} | {(t,) for e in JOB_EVENTS for t in e.INDEXED}
)

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "uint256": st.integers(0, 2**256 - 1),
    "uint8": st.integers(0, 255),
    "address": addresses,
    "bytes32": st.binary(min_size=32, max_size=32),
    "bytes": st.binary(max_size=100),
    "address[]": st.lists(addresses, max_size=4),
}


def _same(types: tuple[str, ...], data: bytes) -> None:
    try:
        expected = eth_abi.decode(list(types), data, strict=True)
    except Exception:
        with pytest.raises(AbiDecodeError):
            decode(types, data)
        return
    assert tuple(decode(types, data)) == expected


def _mangle(data: bytes, draw: st.DrawFn) -> bytes:
    if not data:
        return draw(st.binary(max_size=64))
    at = draw(st.integers(0, len(data) - 1))
    word_at = at - at % 32
    choice = draw(st.integers(0, 4))
    if choice == 0:  # flip a byte
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if choice == 1:  # cut
        return data[:at]
    if choice == 2:  # extend
        return data + draw(st.binary(min_size=1, max_size=64))
    # rewrite a whole word with a small number (an offset or a length) or a huge one
    number = draw(st.integers(0, len(data) + 96) | st.sampled_from([2**256 - 1, 2**64, 2**255]))
    return data[:word_at] + number.to_bytes(32, "big") + data[word_at + 32 :]


@settings(max_examples=examples(300))
@given(st.data())
def test_agrees_with_eth_abi_on_valid_and_mangled_encodings(data: st.DataObject) -> None:
    types = data.draw(st.sampled_from(SHAPES))
    values = [data.draw(VALUES[t]) for t in types]
    encoded = eth_abi.encode(list(types), values)
    _same(types, encoded)
    for _ in range(3):
        _same(types, _mangle(encoded, data.draw))


@settings(max_examples=examples(200))
@given(st.sampled_from(SHAPES), st.binary(max_size=300))
def test_agrees_with_eth_abi_on_random_bytes(types: tuple[str, ...], data: bytes) -> None:
    _same(types, data)


def test_the_examples_that_tell_strict_from_lenient() -> None:
    word = (1).to_bytes(32, "big")
    _same(("uint8",), b"\x01" + bytes(31))  # dirty padding
    _same(("address",), b"\x01" + bytes(31))
    _same(("bytes",), (32).to_bytes(32, "big") + word + b"a" + b"\x01" + bytes(30))
    _same(("bytes",), (32).to_bytes(32, "big") + word + b"a")  # no padding at all
    _same(("bytes",), (0).to_bytes(32, "big"))  # points into the head
    _same(("bytes",), (64).to_bytes(32, "big") + word)  # points past the end
    _same(("address[]",), (32).to_bytes(32, "big") + (2**255).to_bytes(32, "big"))
    _same(("uint256", "bytes"), word)  # the head itself is cut
    with pytest.raises(ValueError, match="does not handle"):
        decode(("string",), b"")
