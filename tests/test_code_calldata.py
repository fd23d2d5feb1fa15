"""Decoding the user's code from saveCodeInCallData calldata (docs/protocol.md §3 step 1)."""

from __future__ import annotations

import json
from pathlib import Path

from eth_abi import encode
from eth_utils import function_abi_to_4byte_selector

from executor.chain.code import SAVE_CODE_SELECTOR, decode_code_calldata


def calldata(code: bytes, metadata: bytes = b"") -> bytes:
    return SAVE_CODE_SELECTOR + encode(["bytes", "bytes"], [code, metadata])


def test_selector_matches_the_user_code_abi() -> None:
    abi = json.loads((Path(__file__).parents[1] / "executor/abi/UserCode.json").read_text())
    (entry,) = [e for e in abi if e.get("name") == "saveCodeInCallData"]
    assert function_abi_to_4byte_selector(entry) == SAVE_CODE_SELECTOR


def test_code_round_trips() -> None:
    code = b"export default { async fetch() { return new Response('hi') } }"
    assert decode_code_calldata(calldata(code, b"meta")) == code


def test_trailing_zero_bytes_are_removed() -> None:
    assert decode_code_calldata(calldata(b"abc\x00\x00\x00")) == b"abc"


def test_wrong_selector_or_garbage_is_rejected() -> None:
    good = calldata(b"abc")
    assert decode_code_calldata(b"\x00\x00\x00\x00" + good[4:]) is None
    assert decode_code_calldata(good[:4]) is None
    assert decode_code_calldata(good[:-1][:40]) is None
    assert decode_code_calldata(SAVE_CODE_SELECTOR + b"\xff" * 64) is None
    assert decode_code_calldata(b"") is None
