// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title The members of the Oyster TeeManager contract that the executor uses.
/// @notice Exactly the production events (docs/protocol.md section 1); the production contract adds
/// attestation checks and staking, which the executor does not depend on.
interface ITeeManager {
    event TeeNodeRegistered(
        address indexed enclaveAddress,
        address indexed owner,
        uint256 jobCapacity,
        uint256 storageCapacity,
        uint8 env
    );

    event TeeNodeDrained(address indexed enclaveAddress);

    event TeeNodeRevived(address indexed enclaveAddress);

    event TeeNodeDeregistered(address indexed enclaveAddress);
}
