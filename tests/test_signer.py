"""Enclave key handling and the EIP-712 digests/signatures of docs/protocol.md §2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from executor.chain.enclave_key import (
    EnclaveKey,
    address_of_public_key,
    recover_signer,
    register_digest,
)
from executor.chain.jobs_contract import submit_output_digest
from executor.errors import KeyFileError
from tests.eip712_reference import REGISTER_FIELDS, SUBMIT_OUTPUT_FIELDS, digest, typed_data

# Anvil's first dev key: a well-known test vector, never a real secret.
SECRET = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
OWNER = "0x70997970C51812Dc3A010c7D01B50E20D17Dc79C"


def test_key_derives_the_known_address_and_public_key() -> None:
    key = EnclaveKey.from_secret(SECRET)
    assert key.address == ADDRESS
    assert len(key.public_key) == 64
    assert address_of_public_key(key.public_key) == ADDRESS


def test_repr_never_shows_the_secret() -> None:
    key = EnclaveKey.from_secret(SECRET)
    assert SECRET.hex() not in repr(key)
    assert SECRET.hex() not in str(key)


@pytest.mark.parametrize("job_id", [1, 2**255 + 7])
@pytest.mark.parametrize("output", [b"", b"hello", bytes(range(256)) * 80])
def test_submit_output_digest_matches_eth_account(job_id: int, output: bytes) -> None:
    message = {
        "jobId": job_id,
        "output": output,
        "totalTime": 1234,
        "errorCode": 5,
        "signTimestamp": 1_700_000_000,
    }
    expected = digest(
        typed_data(
            "marlin.oyster.Jobs",
            "SubmitOutput",
            SUBMIT_OUTPUT_FIELDS,
            message,
        )
    )
    assert submit_output_digest(job_id, output, 1234, 5, 1_700_000_000) == expected


def test_register_digest_matches_eth_account() -> None:
    message = {
        "owner": OWNER,
        "jobCapacity": 20,
        "storageCapacity": 1_000_000,
        "env": 1,
        "signTimestamp": 1_700_000_123,
    }
    expected = digest(
        typed_data(
            "marlin.oyster.TeeManager",
            "Register",
            REGISTER_FIELDS,
            message,
        )
    )
    assert register_digest(OWNER, 20, 1_000_000, 1, 1_700_000_123) == expected


def test_known_vector_digest() -> None:
    # Pinned so an accidental change of encoding shows up even if eth-account changed too.
    value = submit_output_digest(1, b"hello", 10, 0, 1_700_000_000)
    assert value.hex() == KNOWN_SUBMIT_DIGEST


# Computed once with eth-account 0.14's encode_typed_data for the same message.
KNOWN_SUBMIT_DIGEST = "439851ba489b30445abc475ab7ad3bfab5f2aee2e27c12ae28a92929a8c63452"


def test_signature_is_65_bytes_v27_28_and_recovers() -> None:
    key = EnclaveKey.from_secret(SECRET)
    for i in range(10):
        digest = submit_output_digest(i, b"x" * i, i, 0, 1)
        sig = key.sign_digest(digest)
        assert len(sig) == 65 and sig[64] in (27, 28)
        assert recover_signer(digest, sig) == ADDRESS
        # Same signature eth-account produces for the same digest (RFC 6979, low-s).
        assert Account.unsafe_sign_hash(digest, SECRET).signature == sig


def private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_rejects_wrong_length_and_missing_file(tmp_path: Path) -> None:
    short = private_file(tmp_path / "short.sec", b"\x01" * 31)
    with pytest.raises(KeyFileError, match="exactly 32 raw bytes, found 31"):
        EnclaveKey.load(short)
    hexed = private_file(tmp_path / "hex.sec", SECRET.hex().encode())
    with pytest.raises(KeyFileError, match="found 64"):
        EnclaveKey.load(hexed)
    zero = private_file(tmp_path / "zero.sec", b"\x00" * 32)
    with pytest.raises(KeyFileError, match="not a valid secp256k1"):
        EnclaveKey.load(zero)
    with pytest.raises(KeyFileError, match="cannot read"):
        EnclaveKey.load(tmp_path / "missing.sec")


def test_keygen_writes_0600_secret_and_public_key(tmp_path: Path) -> None:
    secret, public = tmp_path / "id.sec", tmp_path / "id.pub"
    cmd = [
        sys.executable,
        "-m",
        "executor",
        "keygen",
        "--secret",
        str(secret),
        "--public",
        str(public),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    key = EnclaveKey.load(secret)
    assert public.read_bytes() == key.public_key
    assert key.address in done.stdout
    assert secret.read_bytes().hex() not in done.stdout + done.stderr
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
