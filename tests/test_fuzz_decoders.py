"""Fuzzing the decoders of untrusted chain data: event logs, UserCode calldata, raw transactions.

Whatever the bytes or JSON, each decoder returns a value or raises its own clear error
(``EventDecodeError``, ``RawTxError``); nothing else escapes. Profiles: tests/fuzz_profiles.py.
"""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.chain.code.calldata import SAVE_CODE_SELECTOR, decode_code_calldata
from executor.chain.code.envelope import decode_signed_tx, envelope_from_json, verify_raw_tx
from executor.chain.follow.events import (
    JOB_EVENTS,
    NODE_EVENTS,
    ChainEvent,
    EventDecodeError,
    decode_log,
)
from executor.errors import RawTxError, TxHashMismatch
from tests.fuzz_profiles import examples
from tests.tx_samples import all_samples, code_calldata

SAMPLES = all_samples(code_calldata(b"export default {};"))
TOPICS = [e.topic0() for e in (*JOB_EVENTS, *NODE_EVENTS)]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
hex_strings = st.binary(max_size=80).map(lambda b: "0x" + b.hex())
odd_strings = st.sampled_from(["0x", "0xzz", "", "0x1", "-0x1", "1e9", "0x" + "f" * 70])
loose = hex_strings | odd_strings | json_values


# --- UserCode calldata ------------------------------------------------------------------------


def _mutated_calldata(data: st.DataObject) -> bytes:
    valid = SAVE_CODE_SELECTOR + encode(
        ["string", "bytes"], [data.draw(st.text(max_size=40)), data.draw(st.binary(max_size=40))]
    )
    cut = data.draw(st.integers(0, len(valid)))
    at = data.draw(st.integers(0, len(valid) - 1))
    flipped = valid[:at] + bytes([valid[at] ^ data.draw(st.integers(1, 255))]) + valid[at + 1 :]
    return data.draw(
        st.sampled_from([valid[:cut], flipped, valid + data.draw(st.binary(max_size=64))])
    )


@settings(max_examples=examples(200))
@given(st.data())
def test_calldata_decoding_never_raises(data: st.DataObject) -> None:
    calldata = data.draw(
        st.binary(max_size=300)
        | st.binary(max_size=300).map(lambda b: SAVE_CODE_SELECTOR + b)
        | st.builds(lambda: b"")
        | st.just(b"").flatmap(lambda _: st.just(_mutated_calldata(data)))
    )
    result = decode_code_calldata(calldata)
    assert result is None or isinstance(result, bytes)


@settings(max_examples=examples(200))
@given(st.text(max_size=200), st.binary(max_size=100))
def test_calldata_round_trips(code: str, metadata: bytes) -> None:
    calldata = SAVE_CODE_SELECTOR + encode(["string", "bytes"], [code, metadata])
    assert decode_code_calldata(calldata) == code.encode().rstrip(b"\x00")


# --- event logs -------------------------------------------------------------------------------


def _log(data: st.DataObject) -> Any:
    topic0 = data.draw(st.sampled_from(TOPICS) | st.binary(min_size=32, max_size=32))
    more = st.binary(min_size=0, max_size=40) | st.binary(min_size=32, max_size=32)
    topics = [topic0, *data.draw(st.lists(more, max_size=5))]
    log: dict[str, Any] = {
        "address": data.draw(
            st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()) | loose
        ),
        "blockNumber": data.draw(st.integers(-5, 2**70) | loose),
        "logIndex": data.draw(st.integers(-5, 2**70) | loose),
        "transactionHash": data.draw(
            st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()) | loose
        ),
        "blockHash": data.draw(hex_strings | st.none() | loose),
        "blockTimestamp": data.draw(st.none() | st.integers(-5, 2**70) | loose),
        "topics": data.draw(st.just(["0x" + t.hex() for t in topics]) | st.just(topics) | loose),
        "data": data.draw(hex_strings | st.binary(max_size=600) | loose),
    }
    for key in data.draw(st.lists(st.sampled_from(sorted(log)), max_size=3)):
        log.pop(key, None)
    return log


@settings(max_examples=examples(120))
@given(st.data())
def test_log_decoding_returns_an_event_none_or_a_clear_error(data: st.DataObject) -> None:
    log = _log(data)
    try:
        event = decode_log(log)
    except EventDecodeError as e:
        assert str(e)
        return
    assert event is None or isinstance(event, ChainEvent)


@settings(max_examples=examples(100))
@given(json_values)
def test_log_decoding_of_any_json_value(value: Any) -> None:
    try:
        event = decode_log(value)
    except EventDecodeError:
        return
    assert event is None or isinstance(event, ChainEvent)


# --- raw transactions -------------------------------------------------------------------------


@settings(max_examples=examples(250))
@given(st.data())
def test_signed_bytes_decode_or_fail_clearly(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(SAMPLES))
    raw = sample.raw
    mode = data.draw(st.sampled_from(["truncate", "flip", "append", "random", "retype"]))
    if mode == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif mode == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif mode == "append":
        raw = raw + data.draw(st.binary(min_size=1, max_size=40))
    elif mode == "random":
        raw = data.draw(
            st.sampled_from([b"", b"\x01", b"\x02", b"\x03", b"\x04", b"\xf8"])
        ) + data.draw(st.binary(max_size=300))
    else:
        raw = bytes([data.draw(st.integers(0, 0xFF))]) + raw[1:]
    try:
        tx = verify_raw_tx(raw, keccak(raw))  # the hash matches: only decoding is tested
    except TxHashMismatch:
        raise AssertionError("the hash matches by construction") from None
    except RawTxError as e:
        assert str(e)
        return
    assert tx.to is None or tx.to.startswith("0x")
    assert isinstance(tx.data, bytes)
    if raw != sample.raw:
        try:
            verify_raw_tx(raw, sample.tx_hash)
        except TxHashMismatch:
            pass
        else:
            assert tx == decode_signed_tx(sample.raw)  # only a blob wrapper can verify


@settings(max_examples=examples(200))
@given(st.data())
def test_json_views_rebuild_or_fail_clearly(data: st.DataObject) -> None:
    view = dict(data.draw(st.sampled_from(SAMPLES)).json)
    for key in data.draw(st.lists(st.sampled_from(sorted(view)), max_size=4)):
        if data.draw(st.booleans()):
            view.pop(key, None)
        else:
            view[key] = data.draw(loose)
    if data.draw(st.booleans()):
        view["type"] = data.draw(
            st.sampled_from(["0x0", "0x1", "0x2", "0x3", "0x4", "0x5", 2, "2"])
        )
    try:
        raw = envelope_from_json(view)
    except RawTxError as e:
        assert str(e)
        return
    assert isinstance(raw, bytes)


@settings(max_examples=examples(60))
@given(st.dictionaries(st.text(max_size=20), loose, max_size=15))
def test_arbitrary_json_objects_never_escape_as_other_errors(view: dict[str, Any]) -> None:
    try:
        envelope_from_json(view)
    except RawTxError:
        pass


def test_log_shapes_the_fuzzer_found() -> None:
    """Regressions: these escaped as ValueError/AttributeError before decode_log checked them."""
    for bad in ([], "log", {"topics": ["0xzz"]}, {"topics": "0x" + "00" * 32}, {"topics": 5}):
        try:
            decode_log(bad)  # type: ignore[arg-type]
        except EventDecodeError as e:
            assert str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")
