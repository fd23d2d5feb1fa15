"""What the chain's contracts require of a node before it registers (read, never assumed).

The production SecretStore computes ``storageCapacity - SECRET_MANAGER.GLOBAL_MAX_SECRET_SIZE()``
on every output, slash and revive of a node: a node registered with a storage capacity below the
SecretManager's ``GLOBAL_MAX_SECRET_SIZE`` (0, for a node without a secret store) reverts with an
arithmetic panic on every output, and is slashed for every job it is selected for. The chain is
found from the TeeManager: ``SECRET_STORE()`` -> ``SECRET_MANAGER()`` ->
``GLOBAL_MAX_SECRET_SIZE()``. Contracts that expose no such chain (the devnet's) require nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from eth_utils import function_signature_to_4byte_selector, to_checksum_address

EthCall = Callable[[str, bytes], Awaitable[bytes | None]]
"""``eth_call`` of (contract, calldata) on the latest block: the returned bytes, or None when the
call reverts or the address has no such function (transport errors raise)."""

_SECRET_STORE = function_signature_to_4byte_selector("SECRET_STORE()")
_SECRET_MANAGER = function_signature_to_4byte_selector("SECRET_MANAGER()")
_GLOBAL_MAX_SECRET_SIZE = function_signature_to_4byte_selector("GLOBAL_MAX_SECRET_SIZE()")


def _word(data: bytes | None) -> int | None:
    if data is None or len(data) != 32:
        return None
    return int.from_bytes(data, "big")


def _address(data: bytes | None) -> str | None:
    value = _word(data)
    if value is None or value == 0 or value >> 160:
        return None
    return to_checksum_address(value.to_bytes(20, "big"))


async def min_storage_capacity(eth_call: EthCall, tee_manager: str) -> int | None:
    """The least storage capacity a node must register with, or None when the contracts do not
    say (no secret store behind the TeeManager)."""
    store = _address(await eth_call(tee_manager, _SECRET_STORE))
    if store is None:
        return None
    manager = _address(await eth_call(store, _SECRET_MANAGER))
    if manager is None:
        return None
    return _word(await eth_call(manager, _GLOBAL_MAX_SECRET_SIZE))


def storage_capacity_problem(storage_capacity: int, required: int | None) -> str | None:
    """Why registering with ``storage_capacity`` cannot work (None if it can)."""
    if required is None or storage_capacity >= required:
        return None
    have = "no secret store" if storage_capacity == 0 else "a secret store"
    return (
        f"storage capacity {storage_capacity} ({have}) is below the chain's "
        f"GLOBAL_MAX_SECRET_SIZE {required}: the SecretStore contract would revert every output, "
        f"slash and revive of this node (arithmetic underflow), and it would be slashed for every "
        f"job; run a secret store with at least {required} bytes of capacity "
        f"(secret_store_config_port)"
    )
