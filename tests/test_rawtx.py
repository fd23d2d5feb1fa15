"""The signed bytes of a code transaction: hash check, decoding of every type, JSON rebuild and
tampering.

Every transaction here is really signed (tests/tx_samples.py); a tampered one keeps its signature
but no longer hashes to the hash it claims, which is exactly what a lying RPC can produce.
"""

from __future__ import annotations

import copy

import pytest
import rlp
from eth_utils import keccak

from executor.chain.code.envelope import (
    LegacyTransaction,
    blob_tx_body,
    decode_signed_tx,
    envelope_from_json,
    verify_raw_tx,
)
from executor.errors import RawTxError, TxHashMismatch
from tests.tx_samples import TO, Sample, all_samples, blob_sample, code_calldata

DATA = code_calldata(b"export default {};")
SAMPLES = all_samples(DATA)
IDS = [s.name for s in SAMPLES]
EXPECTED_TYPES = {
    "legacy-eip155": 0,
    "legacy-pre-eip155": 0,
    "eip2930": 1,
    "eip1559": 2,
    "eip7702": 4,
    "eip4844": 3,
}


def test_every_type_is_covered() -> None:
    assert sorted(IDS) == sorted(EXPECTED_TYPES)


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_verified_bytes_give_recipient_and_calldata(sample: Sample) -> None:
    tx = verify_raw_tx(sample.raw, sample.tx_hash)
    assert tx.tx_type == EXPECTED_TYPES[sample.name]
    assert tx.to == TO
    assert tx.data == DATA


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_json_view_rebuilds_the_exact_signed_bytes(sample: Sample) -> None:
    rebuilt = envelope_from_json(sample.json)
    assert rebuilt == sample.raw
    assert keccak(rebuilt) == sample.tx_hash


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_rewritten_input_in_the_json_view_fails_the_hash(sample: Sample) -> None:
    forged = copy.deepcopy(sample.json)
    forged["input"] = (
        "0x" + code_calldata(b"export default {fetch(){return new Response('pwned')}}").hex()
    )
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(envelope_from_json(forged), sample.tx_hash)


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_rewritten_recipient_in_the_json_view_fails_the_hash(sample: Sample) -> None:
    forged = copy.deepcopy(sample.json)
    forged["to"] = "0x" + "11" * 20
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(envelope_from_json(forged), sample.tx_hash)


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_any_flipped_byte_in_the_raw_bytes_fails_the_hash(sample: Sample) -> None:
    at = sample.raw.index(DATA) + len(DATA) - 3  # inside the code string
    tampered = sample.raw[:at] + bytes([sample.raw[at] ^ 0x01]) + sample.raw[at + 1 :]
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(tampered, sample.tx_hash)
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(sample.raw[:-1], sample.tx_hash)


def test_another_transaction_is_not_the_one_asked_for() -> None:
    first, second = SAMPLES[0], SAMPLES[3]
    with pytest.raises(TxHashMismatch) as caught:
        verify_raw_tx(second.raw, first.tx_hash)
    assert first.tx_hash.hex() in str(caught.value)


def test_legacy_calldata_rewritten_and_re_encoded_keeps_its_signature_but_not_its_hash() -> None:
    sample = SAMPLES[0]
    legacy = rlp.decode(sample.raw, LegacyTransaction)
    forged = rlp.encode(legacy.copy(data=code_calldata(b"evil")))
    assert decode_signed_tx(forged).data == code_calldata(b"evil")  # decodes fine...
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(forged, sample.tx_hash)  # ...but is not the named transaction


def test_blob_transaction_served_with_its_sidecar_is_checked_on_its_body() -> None:
    canonical = blob_sample(DATA)
    network = blob_sample(DATA, network_form=True)
    assert network.raw != canonical.raw and network.tx_hash == canonical.tx_hash
    assert blob_tx_body(network.raw) == canonical.raw
    assert verify_raw_tx(network.raw, network.tx_hash).data == DATA
    with pytest.raises(TxHashMismatch):
        verify_raw_tx(blob_sample(b"other", network_form=True).raw, canonical.tx_hash)


def test_contract_creation_has_no_recipient() -> None:
    for sample in all_samples(DATA, to=None):
        assert verify_raw_tx(sample.raw, sample.tx_hash).to is None
        assert envelope_from_json(sample.json) == sample.raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\x05\xc0", "unsupported transaction type 0x05"),
        (b"\x7f", "unsupported transaction type 0x7f"),
        (b"\x02\xc3\x01\x02\x03", "malformed type-2"),
        (b"\xc3\x01\x02\x03", "malformed legacy"),
        (b"\x80", "unsupported transaction type 0x80"),
    ],
)
def test_undecodable_bytes_with_a_matching_hash_are_a_clear_error(raw: bytes, reason: str) -> None:
    with pytest.raises(RawTxError, match=reason) as caught:
        verify_raw_tx(raw, keccak(raw))
    assert not isinstance(caught.value, TxHashMismatch)


@pytest.mark.parametrize(
    "broken",
    [
        {"type": "0x9"},
        {"type": "0x2"},
        {"type": "0x0", "nonce": "0x1"},
        {"type": True},
        {"type": "0x2", "nonce": 5.5},
    ],
)
def test_json_that_cannot_be_re_encoded_is_a_clear_error(broken: dict[str, object]) -> None:
    with pytest.raises(RawTxError):
        envelope_from_json(broken)


def test_hash_must_be_32_bytes() -> None:
    with pytest.raises(RawTxError, match="32 bytes"):
        verify_raw_tx(SAMPLES[0].raw, b"\x00" * 31)
