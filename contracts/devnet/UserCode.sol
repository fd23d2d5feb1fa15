// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {IUserCode} from "../interfaces/IUserCode.sol";

/// @title A development UserCode: the code lives only in the calldata of the saving transaction.
contract UserCode is IUserCode {
    function saveCodeInCallData(string calldata inputData, bytes calldata metadata) external {
        inputData; // read from the transaction by executors, never stored
        emit CodeCreated(msg.sender, metadata);
    }
}
