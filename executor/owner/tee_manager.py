"""The two TeeManager flavours, told apart by their interface, behind one owner's API.

- ``DevnetTeeManager`` (``contracts/devnet/TeeManager.sol``): ``registerTeeNode(enclavePubKey,
  jobCapacity, storageCapacity, env, signTimestamp, signature)``; it answers ``SIGN_MAX_AGE()``
  and ``getTeeNode(address)``.
- ``OysterTeeManager`` (production): ``registerTeeNode(attestationSignature, attestation,
  jobCapacity, storageCapacity, env, signTimestamp, signature, stakeAmount)`` after approving the
  stake; it answers ``STAKING_TOKEN()``, ``MIN_STAKE_AMOUNT()`` and ``ATTESTATION_VERIFIER()``.
  Deregistration and stake withdrawal need a draining node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from executor.owner.attestation import SignedAttestation
from executor.owner.chain import OwnerChain, OwnerTxError, RevertNames, load_abi
from executor.owner.registration import RegistrationMessage

ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class NodeState:
    enclave_address: str
    owner: str | None
    """None: not registered."""
    draining: bool
    stake: int | None
    """Production only (base units of the staking token)."""

    def describe(self) -> str:
        if self.owner is None:
            return f"enclave {self.enclave_address}: not registered"
        state = "draining" if self.draining else "active"
        stake = "" if self.stake is None else f", stake {self.stake}"
        return f"enclave {self.enclave_address}: registered, {state}, owner {self.owner}{stake}"


class TeeManagerFlavour:
    """What both flavours offer the owner."""

    kind: str
    needs_attestation: bool

    def __init__(self, chain: OwnerChain, address: str, abi_name: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.contract(self.address, abi_name)
        self.reverts = RevertNames(load_abi(abi_name), load_abi("StakingToken"))

    async def state(self, enclave_address: str) -> NodeState:
        raise NotImplementedError

    async def _send(self, function: str, *args: Any) -> str:
        receipt = await self.chain.transact(self.contract, function, *args, reverts=self.reverts)
        return str(receipt["transactionHash"].to_0x_hex())

    async def drain(self, enclave_address: str) -> str:
        return await self._send("drainTeeNode", to_checksum_address(enclave_address))

    async def revive(self, enclave_address: str) -> str:
        return await self._send("reviveTeeNode", to_checksum_address(enclave_address))

    async def deregister(self, enclave_address: str) -> str:
        return await self._send("deregisterTeeNode", to_checksum_address(enclave_address))


class DevnetTeeManager(TeeManagerFlavour):
    kind = "devnet"
    needs_attestation = False

    def __init__(self, chain: OwnerChain, address: str) -> None:
        super().__init__(chain, address, "DevnetTeeManager")

    async def sign_max_age(self) -> int:
        return int(await self.chain.call(self.contract, "SIGN_MAX_AGE"))

    async def state(self, enclave_address: str) -> NodeState:
        owner, _, _, _, draining = await self.chain.call(
            self.contract, "getTeeNode", to_checksum_address(enclave_address)
        )
        registered = int(owner, 16) != 0
        return NodeState(
            to_checksum_address(enclave_address),
            to_checksum_address(owner) if registered else None,
            bool(draining),
            None,
        )

    async def register(self, message: RegistrationMessage) -> str:
        return await self._send(
            "registerTeeNode",
            message.enclave_public_key,
            message.job_capacity,
            message.storage_capacity,
            message.env,
            message.sign_timestamp,
            message.signature,
        )


class OysterTeeManager(TeeManagerFlavour):
    kind = "production"
    needs_attestation = True

    def __init__(self, chain: OwnerChain, address: str) -> None:
        super().__init__(chain, address, "OysterTeeManager")

    async def _send(self, function: str, *args: Any) -> str:
        try:
            return await super()._send(function, *args)
        except OwnerTxError as e:
            if function == "reviveTeeNode" and "0x11" in str(e):
                raise OwnerTxError(
                    f"{e}: the production SecretStore underflows reviving a node whose storage "
                    "capacity is below the SecretManager's GLOBAL_MAX_SECRET_SIZE (a node "
                    "without a secret store reports 0)"
                ) from e
            raise

    async def staking_token(self) -> Any:
        token = await self.chain.call(self.contract, "STAKING_TOKEN")
        return self.chain.contract(token, "StakingToken")

    async def min_stake(self) -> int:
        return int(await self.chain.call(self.contract, "MIN_STAKE_AMOUNT"))

    async def max_age(self) -> int:
        return int(await self.chain.call(self.contract, "ATTESTATION_MAX_AGE"))

    async def state(self, enclave_address: str) -> NodeState:
        stake, owner, _, draining = await self.chain.call(
            self.contract, "teeNodes", to_checksum_address(enclave_address)
        )
        registered = int(owner, 16) != 0
        return NodeState(
            to_checksum_address(enclave_address),
            to_checksum_address(owner) if registered else None,
            bool(draining),
            int(stake) if registered else None,
        )

    async def ensure_allowance(self, amount: int) -> str | None:
        """Approves the TeeManager to take ``amount`` of the owner's tokens, if it may not yet.

        Returns the approval's tx hash, or None when the allowance already covers it.
        """
        token = await self.staking_token()
        owner = self.chain.owner_address
        balance = int(await self.chain.call(token, "balanceOf", owner))
        if balance < amount:
            raise OwnerTxError(
                f"the owner {owner} holds {balance} of the staking token {token.address}, "
                f"less than the stake {amount}: fund it first"
            )
        allowance = int(await self.chain.call(token, "allowance", owner, self.address))
        if allowance >= amount:
            return None
        receipt = await self.chain.transact(
            token, "approve", self.address, amount, reverts=self.reverts
        )
        return str(receipt["transactionHash"].to_0x_hex())

    async def register(
        self, message: RegistrationMessage, attestation: SignedAttestation, stake: int
    ) -> str:
        return await self._send(
            "registerTeeNode",
            attestation.signature,
            (
                attestation.enclave_public_key,
                attestation.pcr0,
                attestation.pcr1,
                attestation.pcr2,
                attestation.timestamp_ms,
            ),
            message.job_capacity,
            message.storage_capacity,
            message.env,
            message.sign_timestamp,
            message.signature,
            stake,
        )

    async def add_stake(self, enclave_address: str, amount: int) -> str:
        return await self._send("addTeeNodeStake", to_checksum_address(enclave_address), amount)

    async def withdraw_stake(self, enclave_address: str, amount: int) -> str:
        return await self._send("removeTeeNodeStake", to_checksum_address(enclave_address), amount)


async def detect_tee_manager(chain: OwnerChain, address: str) -> TeeManagerFlavour:
    """The flavour of the TeeManager at ``address``, by the view calls only it answers."""
    try:
        checksummed = to_checksum_address(address)
    except ValueError as e:
        raise OwnerTxError(f"--tee-manager {address!r} is not an address") from e
    if not await chain.has_code(checksummed):
        raise OwnerTxError(
            f"no contract at {checksummed} on {chain.rpc_url}: wrong address or wrong chain?"
        )
    production = OysterTeeManager(chain, checksummed)
    if all(
        [
            await chain.answers(production.contract, "STAKING_TOKEN"),
            await chain.answers(production.contract, "MIN_STAKE_AMOUNT"),
            await chain.answers(production.contract, "teeNodes", ZERO_ADDRESS),
        ]
    ):
        return production
    devnet = DevnetTeeManager(chain, checksummed)
    if await chain.answers(devnet.contract, "SIGN_MAX_AGE") and await chain.answers(
        devnet.contract, "getTeeNode", ZERO_ADDRESS
    ):
        return devnet
    raise OwnerTxError(
        f"the contract at {checksummed} is not a TeeManager: it answers neither the production "
        "Oyster one's STAKING_TOKEN()/teeNodes(address) nor the devnet one's "
        "SIGN_MAX_AGE()/getTeeNode(address)"
    )
