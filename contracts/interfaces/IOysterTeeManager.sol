// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title What the owner of an executor calls on the production Oyster TeeManager.
/// @notice Written from the production contract's public signatures (functions, events and custom
/// errors, including those a call may revert with in the contracts it calls), not from its source.
/// `oyster-executor owner` uses it; the executor itself needs only ITeeManager.
interface IOysterTeeManager {
    /// @notice What the attestation verifier signs (EIP-712 domain "marlin.oyster.AttestationVerifier").
    struct Attestation {
        bytes enclavePubKey;
        bytes PCR0;
        bytes PCR1;
        bytes PCR2;
        uint256 timestampInMilliseconds;
    }

    event TeeNodeRegistered(
        address indexed enclaveAddress,
        address indexed owner,
        uint256 jobCapacity,
        uint256 storageCapacity,
        uint8 env
    );
    event TeeNodeDeregistered(address indexed enclaveAddress);
    event TeeNodeDrained(address indexed enclaveAddress);
    event TeeNodeRevived(address indexed enclaveAddress);
    event TeeNodeStakeAdded(address indexed enclaveAddress, uint256 addedAmount);
    event TeeNodeStakeRemoved(address indexed enclaveAddress, uint256 removedAmount);
    event EnclaveKeyVerified(address indexed enclaveAddress, bytes32 indexed imageId, bytes enclavePubKey);
    event EnclaveKeyRevoked(address indexed enclaveAddress);

    // TeeManager
    error TeeManagerSignatureTooOld();
    error TeeManagerInvalidSigner();
    error TeeManagerEnclaveAlreadyExists();
    error TeeManagerEnclaveAlreadyDraining();
    error TeeManagerEnclaveAlreadyRevived();
    error TeeManagerEnclaveNotDraining();
    error TeeManagerInvalidEnclaveOwner();
    // its attestation checks
    error AttestationAutherPubkeyLengthInvalid();
    error AttestationAutherPCRsInvalid();
    error AttestationAutherImageNotWhitelisted();
    error AttestationAutherKeyNotVerified();
    error AttestationAutherAttestationTooOld();
    error AttestationVerifierPubkeyLengthInvalid();
    error AttestationVerifierPCRsInvalid();
    error AttestationVerifierImageNotWhitelisted();
    error AttestationVerifierKeyNotVerified();
    error AttestationVerifierAttestationTooOld();
    // the Executors and SecretStore contracts it registers the node with
    error ExecutorsHasPendingJobs();
    error ExecutorsUnsupportedEnv();
    error ExecutorsUnavailableResources();
    error SecretStoreHasOccupiedStorage();
    error SecretStoreUnsupportedEnv();
    // signature recovery and the staking token (OpenZeppelin 5)
    error ECDSAInvalidSignature();
    error ECDSAInvalidSignatureLength(uint256 length);
    error ECDSAInvalidSignatureS(bytes32 s);
    error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed);
    error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed);

    function registerTeeNode(
        bytes memory attestationSignature,
        Attestation memory attestation,
        uint256 jobCapacity,
        uint256 storageCapacity,
        uint8 env,
        uint256 signTimestamp,
        bytes memory signature,
        uint256 stakeAmount
    ) external;

    function drainTeeNode(address enclaveAddress) external;

    function reviveTeeNode(address enclaveAddress) external;

    /// @notice Only a draining node; returns its whole stake to the owner.
    function deregisterTeeNode(address enclaveAddress) external;

    function addTeeNodeStake(address enclaveAddress, uint256 amount) external;

    /// @notice Only a draining node.
    function removeTeeNodeStake(address enclaveAddress, uint256 amount) external;

    function teeNodes(address enclaveAddress)
        external
        view
        returns (uint256 stakeAmount, address owner, uint8 env, bool draining);

    function getTeeNodeOwner(address enclaveAddress) external view returns (address);

    function getDrainingStatus(address enclaveAddress) external view returns (bool);

    function getTeeNodesStake(address[] memory enclaveAddresses) external view returns (uint256[] memory);

    function STAKING_TOKEN() external view returns (address);

    function MIN_STAKE_AMOUNT() external view returns (uint256);

    function ATTESTATION_VERIFIER() external view returns (address);

    /// @notice Seconds; also the maximum age of the registration signature.
    function ATTESTATION_MAX_AGE() external view returns (uint256);
}
