"""The enclave's attestation as the production TeeManager takes it: signed by a verifier.

The production TeeManager checks ``registerTeeNode``'s attestation with its attestation verifier
contract: an EIP-712 signature, in the domain ``marlin.oyster.AttestationVerifier`` version 1, over
``Attestation(bytes enclavePubKey,bytes PCR0,bytes PCR1,bytes PCR2,uint256
timestampInMilliseconds)``

by a verifier key that contract knows. How an owner gets one (docs/operator.md):

1. the enclave's attestation server (port 1300 in the enclave, 88:1300 on vsock) answers
   ``GET /attestation/raw`` with the raw Nitro attestation document; its ``public_key`` is the
   enclave key (64 bytes, the executor's signing key);
2. an attestation verifier checks the document against the AWS root and answers
   ``POST /verify/raw`` (the raw document as the body) with JSON holding ``signature``,
   ``public_key``, ``pcr0``, ``pcr1``, ``pcr2`` (hex) and ``timestamp`` (ms);

or the owner saved that JSON (``--attestation-json``). On a local chain whose verifier key the owner
holds, the tool can sign the attestation itself (``self_sign``): that is a test path only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from eth_abi import encode
from eth_utils import keccak

from executor.chain.enclave_key import EnclaveKey, domain_separator, recover_signer, typed_digest
from executor.errors import ExecutorError
from executor.owner.registration import fixed_hex

VERIFIER_DOMAIN = "marlin.oyster.AttestationVerifier"
ATTESTATION_TYPEHASH = keccak(
    b"Attestation(bytes enclavePubKey,bytes PCR0,bytes PCR1,bytes PCR2,"
    b"uint256 timestampInMilliseconds)"
)
PCR_BYTES = 48
HTTP_TIMEOUT_S = 30.0


class AttestationError(ExecutorError, ValueError):
    """The attestation could not be had, or is not one the production TeeManager takes."""


@dataclass(frozen=True)
class SignedAttestation:
    enclave_public_key: bytes
    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    timestamp_ms: int
    signature: bytes

    def digest(self) -> bytes:
        return attestation_digest(
            self.enclave_public_key, self.pcr0, self.pcr1, self.pcr2, self.timestamp_ms
        )

    def verifier_address(self) -> str:
        """The address of the key that signed it (the contract must know it as a verifier)."""
        try:
            return recover_signer(self.digest(), self.signature)
        except ValueError as e:
            raise AttestationError(f"the attestation signature is malformed: {e}") from e


def attestation_digest(
    public_key: bytes, pcr0: bytes, pcr1: bytes, pcr2: bytes, timestamp_ms: int
) -> bytes:
    struct_hash = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "bytes32", "bytes32", "uint256"],
            [
                ATTESTATION_TYPEHASH,
                keccak(public_key),
                keccak(pcr0),
                keccak(pcr1),
                keccak(pcr2),
                timestamp_ms,
            ],
        )
    )
    return typed_digest(domain_separator(VERIFIER_DOMAIN), struct_hash)


def self_sign(
    verifier_key: EnclaveKey,
    public_key: bytes,
    pcrs: tuple[bytes, bytes, bytes],
    timestamp_ms: int | None = None,
) -> SignedAttestation:
    """TEST PATH: an attestation signed with a verifier key the owner holds (a local chain)."""
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    digest = attestation_digest(public_key, *pcrs, stamp)
    return SignedAttestation(public_key, *pcrs, stamp, verifier_key.sign_digest(digest))


def parse_pcrs(text: str) -> tuple[bytes, bytes, bytes]:
    """``PCR0,PCR1,PCR2`` in hex (48 bytes each, as ``nitro-cli build-enclave`` prints them)."""
    parts = [p.strip().removeprefix("0x") for p in text.split(",")]
    if len(parts) != 3:
        raise AttestationError(f"--pcrs takes PCR0,PCR1,PCR2 (three hex values), got {text!r}")
    try:
        pcrs = tuple(bytes.fromhex(p) for p in parts)
    except ValueError:
        raise AttestationError(f"--pcrs: not hex: {text!r}") from None
    for index, pcr in enumerate(pcrs):
        if len(pcr) != PCR_BYTES:
            raise AttestationError(f"--pcrs: PCR{index} must be {PCR_BYTES} bytes, got {len(pcr)}")
    return pcrs[0], pcrs[1], pcrs[2]


def from_verifier_reply(data: Any, where: str) -> SignedAttestation:
    """The verifier's ``/verify/raw`` JSON reply (or a saved copy of it)."""
    if not isinstance(data, dict):
        raise AttestationError(f"{where}: not a JSON object")
    if "pcr0" not in data and "image_id" in data:
        raise AttestationError(
            f"{where}: this verifier signs the image-id format (imageId, timestampMs, publicKey, "
            "userData), but the production TeeManager checks "
            "Attestation(enclavePubKey, PCR0, PCR1, PCR2, timestampInMilliseconds): use a "
            "verifier that signs that format"
        )
    try:
        return SignedAttestation(
            enclave_public_key=fixed_hex(data["public_key"], "public_key", 64),
            pcr0=fixed_hex(data["pcr0"], "pcr0", PCR_BYTES),
            pcr1=fixed_hex(data["pcr1"], "pcr1", PCR_BYTES),
            pcr2=fixed_hex(data["pcr2"], "pcr2", PCR_BYTES),
            timestamp_ms=_timestamp(data.get("timestamp", data.get("timestamp_ms"))),
            signature=fixed_hex(data["signature"], "signature", 65),
        )
    except KeyError as e:
        raise AttestationError(f"{where}: missing field {e}") from e
    except ValueError as e:
        raise AttestationError(f"{where}: {e}") from e


def read_attestation_json(path: Path) -> SignedAttestation:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise AttestationError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise AttestationError(f"{path} is not JSON: {e}") from e
    return from_verifier_reply(data, str(path))


async def fetch_and_verify(attestation_url: str, verifier_url: str) -> SignedAttestation:
    """The enclave's raw attestation document, signed by the verifier at ``verifier_url``."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.get(attestation_url) as response:
                document = await response.read()
                if response.status != 200:
                    raise AttestationError(
                        f"the attestation server {attestation_url} answered {response.status}: "
                        f"{document[:200].decode(errors='replace')}"
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise AttestationError(
                f"cannot fetch the attestation from {attestation_url} ({e or type(e).__name__}); "
                "the enclave's attestation server listens on port 1300 (vsock 88:1300)"
            ) from e
        try:
            async with session.post(
                verifier_url,
                data=document,
                headers={"Content-Type": "application/octet-stream"},
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise AttestationError(
                        f"the attestation verifier {verifier_url} refused the attestation "
                        f"({response.status}): {body[:300].decode(errors='replace')}"
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise AttestationError(
                f"cannot reach the attestation verifier {verifier_url} ({e or type(e).__name__})"
            ) from e
    try:
        reply = json.loads(body)
    except ValueError as e:
        raise AttestationError(f"the verifier {verifier_url} answered no JSON: {e}") from e
    return from_verifier_reply(reply, f"the verifier's reply ({verifier_url})")


def _timestamp(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"timestamp must be a positive integer of milliseconds, got {value!r}")
    return value
