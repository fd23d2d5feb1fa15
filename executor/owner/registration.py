"""The node's signed registration message, from its admin API or from a saved copy.

``GET /signed-registration-message`` answers ``job_capacity``, ``storage_capacity``,
``sign_timestamp``, ``env``, ``owner``, ``signature`` and ``enclave_public_key``; a file saved from
``oyster-executor admin init`` (``{"tee_details": ..., "registration_message": ...}``) or from
``admin register-message`` holds the same. Before anything is sent, the message is checked against
the owner's key: the enclave's signature must recover to the enclave's address for this owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from executor.chain.enclave_key import address_of_public_key, recover_signer, register_digest
from executor.errors import ExecutorError


class RegistrationMessageError(ExecutorError, ValueError):
    """The registration message is missing, malformed, or not for this owner."""


@dataclass(frozen=True)
class RegistrationMessage:
    job_capacity: int
    storage_capacity: int
    sign_timestamp: int
    env: int
    owner: str
    signature: bytes
    enclave_public_key: bytes

    @property
    def enclave_address(self) -> str:
        return address_of_public_key(self.enclave_public_key)

    @classmethod
    def from_json(cls, data: Any, where: str) -> RegistrationMessage:
        """From the endpoint's JSON (``tee_details`` may supply the public key, as older nodes
        put it only there)."""
        if isinstance(data, dict) and "registration_message" in data:
            inner = dict(data["registration_message"])
            inner.setdefault(
                "enclave_public_key", (data.get("tee_details") or {}).get("enclave_public_key")
            )
            data = inner
        if not isinstance(data, dict):
            raise RegistrationMessageError(f"{where}: not a JSON object")
        try:
            parsed = cls(
                job_capacity=_int(data, "job_capacity"),
                storage_capacity=_int(data, "storage_capacity"),
                sign_timestamp=_int(data, "sign_timestamp"),
                env=_int(data, "env"),
                owner=to_checksum_address(str(data["owner"])),
                signature=fixed_hex(data["signature"], "signature", 65),
                enclave_public_key=fixed_hex(data["enclave_public_key"], "enclave_public_key", 64),
            )
        except KeyError as e:
            raise RegistrationMessageError(f"{where}: missing field {e}") from e
        except ValueError as e:
            raise RegistrationMessageError(f"{where}: {e}") from e
        return parsed

    def check(self, owner: str) -> None:
        """The message must be for ``owner`` and signed by the enclave it names."""
        if to_checksum_address(owner) != self.owner:
            raise RegistrationMessageError(
                f"the node was initialized with owner {self.owner}, but the owner key is "
                f"{to_checksum_address(owner)}: use that owner's key (the owner is set once, "
                "by `oyster-executor admin init`)"
            )
        digest = register_digest(
            self.owner, self.job_capacity, self.storage_capacity, self.env, self.sign_timestamp
        )
        try:
            signer = recover_signer(digest, self.signature)
        except ValueError as e:
            raise RegistrationMessageError(f"bad registration signature: {e}") from e
        if signer != self.enclave_address:
            raise RegistrationMessageError(
                f"the registration signature is by {signer}, not by the enclave "
                f"{self.enclave_address} whose public key the message carries"
            )


def read_message_file(path: Path) -> RegistrationMessage:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise RegistrationMessageError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise RegistrationMessageError(f"{path} is not JSON: {e}") from e
    return RegistrationMessage.from_json(data, str(path))


def _int(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def fixed_hex(value: Any, name: str, size: int) -> bytes:
    """``value`` as exactly ``size`` bytes of hex (``0x`` optional); KeyError(name) if None,
    ValueError naming ``name`` if it is not hex or not that long."""
    if value is None:
        raise KeyError(name)
    text = str(value).removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{name} is not hex: {value!r}") from None
    if len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(raw)}")
    return raw
