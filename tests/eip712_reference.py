"""The reference EIP-712 encoding, from eth-account: independent of the project's own signer, so
tests that use it check our digests and the contracts against a third implementation."""

from __future__ import annotations

from typing import Any

from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak

REGISTER_FIELDS = [
    {"name": "owner", "type": "address"},
    {"name": "jobCapacity", "type": "uint256"},
    {"name": "storageCapacity", "type": "uint256"},
    {"name": "env", "type": "uint8"},
    {"name": "signTimestamp", "type": "uint256"},
]
SUBMIT_OUTPUT_FIELDS = [
    {"name": "jobId", "type": "uint256"},
    {"name": "output", "type": "bytes"},
    {"name": "totalTime", "type": "uint256"},
    {"name": "errorCode", "type": "uint8"},
    {"name": "signTimestamp", "type": "uint256"},
]


def typed_data(
    domain_name: str, primary: str, fields: list[Any], message: dict[str, Any]
) -> SignableMessage:
    """A domain with only name and version "1" (docs/protocol.md §2)."""
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                ],
                primary: fields,
            },
            "primaryType": primary,
            "domain": {"name": domain_name, "version": "1"},
            "message": message,
        }
    )


def digest(signable: SignableMessage) -> bytes:
    """The 32 bytes that get signed: keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct)."""
    return keccak(b"\x19" + signable.version + signable.header + signable.body)
