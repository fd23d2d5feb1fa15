"""The admin API's request bodies, validated in full before anything is forwarded or applied.

Whoever reaches the admin socket is not trusted to send well-formed input. Each body must be a JSON
object holding exactly the expected fields, each a string of the expected form; anything else is
an ``AdminError`` (400) naming the field and the problem, raised before any side effect. Messages
never quote the submitted value (it may be a key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from executor.chain.transactions import account_from_key
from executor.errors import AdminError

MAX_BODY_BYTES = 64 * 1024
MAX_WS_API_KEY_CHARS = 256
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")
_WS_API_KEY = re.compile(r"[A-Za-z0-9_-]*")
ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class ImmutableConfig:
    owner_address_hex: str
    """As submitted (forwarded to the secret store unchanged)."""
    owner: str
    """Checksummed."""


@dataclass(frozen=True, repr=False)
class MutableConfig:
    executor_gas_key: str
    secret_store_gas_key: str
    ws_api_key: str
    gas_account: LocalAccount

    def __repr__(self) -> str:
        return f"MutableConfig(executor gas address {self.gas_account.address})"


def parse_immutable(raw: bytes) -> ImmutableConfig:
    body = _json_object(raw, ("owner_address_hex",))
    value = body["owner_address_hex"]
    address = hex_bytes(value, "owner_address_hex", 20)
    if address == bytes(20):
        raise AdminError("field 'owner_address_hex': the zero address cannot own an executor")
    return ImmutableConfig(owner_address_hex=value, owner=to_checksum_address(address))


def parse_mutable(raw: bytes, *, store_key_required: bool = True) -> MutableConfig:
    """``store_key_required=False`` (no secret store configured) lets ``secret_store_gas_key``
    be empty, as the admin client sends it by default; a non-empty one is still checked."""
    body = _json_object(raw, ("executor_gas_key", "secret_store_gas_key", "ws_api_key"))
    ws_api_key = body["ws_api_key"]
    if not _WS_API_KEY.fullmatch(ws_api_key):
        raise AdminError("API key contains invalid characters! (allowed: A-Z a-z 0-9 - _)")
    if len(ws_api_key) > MAX_WS_API_KEY_CHARS:
        raise AdminError(f"field 'ws_api_key': longer than {MAX_WS_API_KEY_CHARS} characters")
    gas_account = private_key(body["executor_gas_key"], "executor_gas_key")
    if body["secret_store_gas_key"] or store_key_required:
        private_key(body["secret_store_gas_key"], "secret_store_gas_key")
    return MutableConfig(
        executor_gas_key=body["executor_gas_key"],
        secret_store_gas_key=body["secret_store_gas_key"],
        ws_api_key=ws_api_key,
        gas_account=gas_account,
    )


def hex_bytes(value: str, field: str, length: int) -> bytes:
    """``length`` bytes of hex, with or without ``0x``; nothing else (no spaces, no signs)."""
    digits = value[2:] if value.startswith(("0x", "0X")) else value
    if not _HEX_DIGITS.fullmatch(digits) or len(digits) % 2:
        raise AdminError(f"field '{field}' is not a valid hex string")
    raw = bytes.fromhex(digits)
    if len(raw) != length:
        raise AdminError(f"field '{field}' must be {length} bytes long, got {len(raw)}")
    return raw


def private_key(value: str, field: str) -> LocalAccount:
    hex_bytes(value, field, 32)
    try:
        return account_from_key(value)
    except ValueError as e:
        raise AdminError(f"field '{field}' is not a valid secp256k1 private key") from e


def _json_object(raw: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    if len(raw) > MAX_BODY_BYTES:
        raise AdminError(f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are here
        raise AdminError(f"request body is not valid JSON: {_reason(e)}") from e
    if not isinstance(body, dict):
        raise AdminError("request body must be a JSON object")
    unexpected = sorted(set(body) - set(fields))
    if unexpected:
        names = ", ".join(repr(name[:40]) for name in unexpected[:5])
        raise AdminError(f"unexpected field(s) {names}; expected only {', '.join(fields)}")
    for field in fields:
        if field not in body:
            raise AdminError(f"field '{field}' is required and must be a string")
        if not isinstance(body[field], str):
            raise AdminError(f"field '{field}' must be a string, got {_json_type(body[field])}")
    return body


class _DuplicateField(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateField(f"field {key[:40]!r} appears twice")
        result[key] = value
    return result


def _reason(e: BaseException) -> str:
    if isinstance(e, _DuplicateField):
        return str(e)
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at position {e.pos}"  # never the document itself
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return type(e).__name__


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
