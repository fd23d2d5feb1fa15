"""JSON-RPC reads straight to the provider, for the few calls made once per block or per output.

web3's request pipeline (middlewares, request and result formatters: checksummed addresses,
HexBytes, AttributeDicts for every field and log of a receipt) costs more CPU than the request
itself; a burst of outputs on a fast chain makes several such reads per job. These helpers send the
same JSON-RPC request through the same provider (so failover and timeouts are unchanged), return
the raw JSON result (through ``executor.chain.rpc.call``), and read only the quantities the
caller needs.

A JSON-RPC error is raised as ``RpcCallError``, a ``Web3RPCError`` as web3 would raise it, so
callers classify it the same way (``policy.classify_rpc_error``).
"""

from __future__ import annotations

from typing import Any

from web3 import AsyncWeb3

from executor.chain.rpc import call

__all__ = ["block_header", "call", "nonce", "quantity", "receipt", "transaction_block"]


def quantity(value: Any, what: str) -> int:
    """A JSON-RPC quantity (``"0x1a"``) as an int; ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, str) and value.startswith(("0x", "0X")):
        try:
            return int(value, 16)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value  # some nodes answer plain numbers
    raise ValueError(f"the node answered {what} = {value!r}, not a hex quantity")


async def block_header(w3: AsyncWeb3, block: str) -> tuple[int, int, int]:
    """(number, timestamp, base fee or 0) of ``block`` ("latest", "pending", or a hex number)."""
    found = await call(w3, "eth_getBlockByNumber", [block, False])
    if not isinstance(found, dict):
        raise ValueError(f"the node has no block {block!r}")
    base_fee = found.get("baseFeePerGas")
    return (
        quantity(found.get("number"), "block number"),
        quantity(found.get("timestamp"), "block timestamp"),
        0 if base_fee is None else quantity(base_fee, "baseFeePerGas"),
    )


async def nonce(w3: AsyncWeb3, address: str, block: str) -> int:
    """``eth_getTransactionCount`` of ``address`` at ``block`` ("latest" or "pending")."""
    return quantity(await call(w3, "eth_getTransactionCount", [address, block]), "nonce")


async def receipt(w3: AsyncWeb3, tx_hash: str) -> tuple[int, bool, int | None] | None:
    """(block number, succeeded, gas used) of a mined transaction; ``None`` if the node has no
    receipt (gas used is None if the node omits it)."""
    found = await call(w3, "eth_getTransactionReceipt", [tx_hash])
    if found is None:
        return None
    if not isinstance(found, dict):
        raise ValueError(f"the node answered a receipt that is not an object: {found!r:.100}")
    if found.get("blockNumber") is None:
        return None  # some nodes answer pending transactions with a receipt without a block
    block = quantity(found.get("blockNumber"), "receipt blockNumber")
    used = found.get("gasUsed")
    gas_used = None if used is None else quantity(used, "receipt gasUsed")
    return block, quantity(found.get("status"), "receipt status") == 1, gas_used


async def transaction_block(w3: AsyncWeb3, tx_hash: str) -> int | bool | None:
    """``False`` if the node does not know the transaction, ``None`` if it is pending, else the
    number of the block holding it."""
    found = await call(w3, "eth_getTransactionByHash", [tx_hash])
    if found is None:
        return False
    if not isinstance(found, dict):
        raise ValueError(f"the node answered a transaction that is not an object: {found!r:.100}")
    block = found.get("blockNumber")
    return None if block is None else quantity(block, "transaction blockNumber")
