"""Who plays which part on the test chain, and raw JSON-RPC calls to anvil (its ``evm_*``,
``anvil_*`` and ``txpool_*`` methods, which web3 does not wrap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3
from web3.types import RPCEndpoint

from oyster_devnet.accounts import DEV_ACCOUNTS, DevAccount


@dataclass(frozen=True)
class Roles:
    """The devnet accounts by role; every test that needs one takes it from here."""

    deployer: DevAccount
    """Deploys the devnet contracts (the ``devnet`` fixture)."""
    owner: DevAccount
    """Owns the executor node: initializes it and registers it on chain."""
    gas: DevAccount
    """The executor's gas account: pays for its outputs and slashes."""
    user: DevAccount
    """Stores code and creates jobs."""
    spare: tuple[DevAccount, ...]
    """The others, for a second gas key, another owner or plain transfers."""


ROLES = Roles(
    deployer=DEV_ACCOUNTS[0],
    owner=DEV_ACCOUNTS[1],
    gas=DEV_ACCOUNTS[2],
    user=DEV_ACCOUNTS[3],
    spare=tuple(DEV_ACCOUNTS[4:]),
)


class Rpc:
    """``await rpc("evm_mine")``: one JSON-RPC call on a node, its ``result``; an error answer
    fails the test, naming the method."""

    def __init__(self, w3: AsyncWeb3[Any]) -> None:
        self.w3 = w3

    async def __call__(self, method: str, *params: Any) -> Any:
        response = await self.w3.provider.make_request(RPCEndpoint(method), list(params))
        assert "error" not in response, f"{method}{params!r}: {response['error']}"
        return response.get("result")
