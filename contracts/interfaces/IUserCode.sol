// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title The Oyster UserCode contract: user JavaScript lives in transaction calldata.
/// @notice Exactly the production members (docs/protocol.md section 1).
interface IUserCode {
    event CodeCreated(address indexed owner, bytes metadata);

    /// @param inputData the user's JavaScript; nothing is stored in contract state
    function saveCodeInCallData(string calldata inputData, bytes calldata metadata) external;
}
