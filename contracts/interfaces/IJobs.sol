// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title The members of the Oyster serverless Jobs contract that the executor uses.
/// @notice Exactly the production events and functions (docs/protocol.md section 1); the production
/// contract adds staking, payments and executor selection, which the executor does not depend on.
interface IJobs {
    /// @param deadline the execution deadline in milliseconds
    /// @param codehash the hash of the transaction that stored the code
    event JobCreated(
        uint256 indexed jobId,
        uint8 indexed env,
        address indexed jobOwner,
        uint256 secretId,
        bytes32 codehash,
        bytes codeInputs,
        uint256 deadline,
        address[] selectedExecutors
    );

    event JobResponded(
        uint256 indexed jobId,
        address indexed executor,
        bytes output,
        uint256 totalTime,
        uint8 errorCode,
        uint8 outputCount
    );

    event SlashedOnExecutionTimeout(uint256 indexed jobId, address indexed enclaveAddress);

    /// @param _signature 65 bytes r || s || v over the EIP-712 SubmitOutput message
    /// @param _signTimestamp unix seconds at which the enclave signed
    function submitOutput(
        bytes calldata _signature,
        uint256 _jobId,
        bytes calldata _output,
        uint256 _totalTime,
        uint8 _errorCode,
        uint256 _signTimestamp
    ) external;

    function slashOnExecutionTimeout(uint256 _jobId) external;
}
