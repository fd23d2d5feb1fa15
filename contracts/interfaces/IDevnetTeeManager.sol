// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title What the owner of an executor calls on the development TeeManager (contracts/devnet).
/// @notice Registration by the enclave's signature alone: no attestation, no stake.
/// `oyster-executor owner` uses it; tests check that the devnet contract has every member.
interface IDevnetTeeManager {
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

    error TeeManagerInvalidPublicKeyLength(uint256 length);
    error TeeManagerNodeAlreadyRegistered(address enclaveAddress);
    error TeeManagerSignatureTooOld(uint256 signTimestamp, uint256 blockTimestamp);
    error TeeManagerInvalidSigner(address signer, address enclaveAddress);
    error TeeManagerNodeNotFound(address enclaveAddress);
    error TeeManagerNotNodeOwner(address caller, address owner);
    error TeeManagerNodeAlreadyDraining(address enclaveAddress);
    error TeeManagerNodeNotDraining(address enclaveAddress);

    /// @param enclavePubKey 64-byte uncompressed secp256k1 public key, without the 0x04 prefix
    function registerTeeNode(
        bytes calldata enclavePubKey,
        uint256 jobCapacity,
        uint256 storageCapacity,
        uint8 env,
        uint256 signTimestamp,
        bytes calldata signature
    ) external;

    function drainTeeNode(address enclaveAddress) external;

    function reviveTeeNode(address enclaveAddress) external;

    function deregisterTeeNode(address enclaveAddress) external;

    function getTeeNode(address enclaveAddress)
        external
        view
        returns (address owner, uint256 jobCapacity, uint256 storageCapacity, uint8 env, bool draining);

    /// @notice Seconds; a registration signature older than this is rejected.
    function SIGN_MAX_AGE() external view returns (uint256);
}
