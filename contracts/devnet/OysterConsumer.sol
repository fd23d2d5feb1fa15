// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

interface IJobsCreate {
    function createJob(uint8 env, uint256 secretId, bytes32 codehash, bytes calldata codeInputs, uint256 deadline)
        external
        returns (uint256 jobId);
}

/// @title A sample dApp contract that owns Oyster jobs and keeps what their callbacks bring.
/// @notice `request` creates a job owned by this contract; the Jobs contract then calls
/// `oysterResultCall` with the first output (or `oysterFailureCall` when the job is slashed
/// unanswered), forwarding all the gas left: what the callback does is paid by the executor's
/// transaction, which is why executors estimate it. `burnPerCall` and `failCalls` make the
/// callback costly or failing, for tests of exactly that.
contract OysterConsumer {
    struct Result {
        bool received;
        bool failed;
        uint8 errorCode;
        uint256 totalTime;
        bytes output;
    }

    address public immutable JOBS;
    mapping(uint256 => Result) private results;
    uint256 public resultCount;
    /// @notice Gas the callback burns on purpose (0: none).
    uint256 public burnPerCall;
    /// @notice Whether the callback reverts (after burning).
    bool public failCalls;

    event ResultStored(uint256 indexed jobId, uint8 errorCode, uint256 outputLength);
    event FailureStored(uint256 indexed jobId);

    error OysterConsumerNotJobs(address caller);
    error OysterConsumerRefused(uint256 jobId);

    constructor(address jobs) {
        JOBS = jobs;
    }

    function setBehaviour(uint256 burn, bool fail) external {
        burnPerCall = burn;
        failCalls = fail;
    }

    /// @notice Creates a job (env 1) owned by this contract.
    /// @param deadline the execution deadline in milliseconds
    function request(bytes32 codehash, bytes calldata codeInputs, uint256 deadline) external returns (uint256) {
        return IJobsCreate(JOBS).createJob(1, 0, codehash, codeInputs, deadline);
    }

    function oysterResultCall(uint256 jobId, bytes calldata output, uint8 errorCode, uint256 totalTime) external {
        if (msg.sender != JOBS) revert OysterConsumerNotJobs(msg.sender);
        _behave(jobId);
        Result storage r = results[jobId];
        r.received = true;
        r.errorCode = errorCode;
        r.totalTime = totalTime;
        r.output = output;
        ++resultCount;
        emit ResultStored(jobId, errorCode, output.length);
    }

    function oysterFailureCall(uint256 jobId, uint256 /* slashedAmount */ ) external {
        if (msg.sender != JOBS) revert OysterConsumerNotJobs(msg.sender);
        _behave(jobId);
        results[jobId].failed = true;
        emit FailureStored(jobId);
    }

    /// @notice What the callbacks stored for `jobId`.
    function resultOf(uint256 jobId)
        external
        view
        returns (bool received, bool failed, uint8 errorCode, uint256 totalTime, bytes memory output)
    {
        Result storage r = results[jobId];
        return (r.received, r.failed, r.errorCode, r.totalTime, r.output);
    }

    function _behave(uint256 jobId) private view {
        uint256 stop = gasleft() > burnPerCall ? gasleft() - burnPerCall : 0;
        while (gasleft() > stop) {}
        if (failCalls) revert OysterConsumerRefused(jobId);
    }
}
