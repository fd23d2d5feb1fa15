// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {IJobs} from "../interfaces/IJobs.sol";
import {Eip712, TeeManager} from "./TeeManager.sol";

/// @title A development Jobs contract: job creation, output submission and timeout slashing.
/// @notice Output signatures, the submission window and the signature age are checked exactly as in
/// production; there is no payment or stake, and selection is simply the first active nodes of the
/// environment that have a free job slot (or an explicit list, so that tests can create jobs nobody
/// answers). Where a daemon or a dApp can tell, it behaves like production: job ids start at 0,
/// `totalTime` is clamped to the deadline, the first output calls the job owner's
/// `oysterResultCall` and a slash of an unanswered job its `oysterFailureCall`, each with all the
/// gas that remains, and a submission costs gas of the same order (see SETTLEMENT_SLOTS).
contract Jobs is IJobs {
    string public constant DOMAIN_NAME = "marlin.oyster.Jobs";
    bytes32 public constant SUBMIT_OUTPUT_TYPEHASH = keccak256(
        "SubmitOutput(uint256 jobId,bytes output,uint256 totalTime,uint8 errorCode,uint256 signTimestamp)"
    );

    bytes32 public immutable DOMAIN_SEPARATOR;
    TeeManager public immutable TEE_MANAGER;
    /// @notice Seconds after the deadline during which outputs are still accepted.
    uint256 public immutable EXECUTION_BUFFER_TIME;
    uint256 public immutable NO_OF_NODES_TO_SELECT;
    /// @notice An output signature older than this many seconds is rejected.
    uint256 public immutable SIGN_MAX_AGE;

    struct Job {
        address jobOwner;
        uint8 env;
        uint8 outputCount;
        uint256 execStartTime;
        uint256 deadline;
        address[] selectedExecutors;
    }

    /// @dev Per job and executor: 0 = not selected, SELECTED, RESPONDED.
    uint8 private constant SELECTED = 1;
    uint8 private constant RESPONDED = 2;

    /// @notice Storage slots written per accepted output, standing in for production's payments
    /// and the executor's release and reputation update (~300k gas there): a gas bound tuned on
    /// this contract must not be one that fails on production.
    uint256 public constant SETTLEMENT_SLOTS = 12;

    /// @notice The number of jobs created, which is the next job's id: ids start at 0.
    uint256 public jobCount;
    /// @notice Per executor, the jobs `createJob` gave it that it has not answered and that were
    /// not slashed (`createJobWithExecutors` reserves nothing): below its job capacity it is free.
    mapping(address => uint256) public activeJobs;
    mapping(uint256 => bool) private reserved;
    mapping(uint256 => mapping(address => mapping(uint256 => uint256))) private settlements;

    event JobResultCallbackCalled(uint256 indexed jobId, bool success);
    event JobFailureCallbackCalled(uint256 indexed jobId, bool success);
    mapping(uint256 => Job) private jobs;
    mapping(uint256 => mapping(address => uint8)) private executorStatus;

    error JobsInvalidNoOfNodesToSelect(uint256 noOfNodesToSelect);
    error JobsNoActiveNodes(uint8 env);
    error JobsExecutorsUnavailable(uint8 env);
    error JobsNotSelf(address caller);
    error JobsNoExecutors();
    error JobsTooManyExecutors(uint256 count);
    error JobsDuplicateExecutor(address executor);
    error JobsJobNotFound(uint256 jobId);
    error JobsExecutionWindowClosed(uint256 jobId);
    error JobsSignatureTooOld(uint256 signTimestamp, uint256 blockTimestamp);
    error JobsNotSelectedExecutor(uint256 jobId, address signer);
    error JobsExecutorNotActive(address signer);
    error JobsOutputAlreadySubmitted(uint256 jobId, address executor);
    error JobsDeadlineNotOver(uint256 jobId);
    error JobsNothingToSlash(uint256 jobId);

    constructor(
        address teeManager,
        uint256 executionBufferTime,
        uint256 noOfNodesToSelect,
        uint256 signMaxAge
    ) {
        // outputCount is a uint8 in JobResponded
        if (noOfNodesToSelect == 0 || noOfNodesToSelect > type(uint8).max) {
            revert JobsInvalidNoOfNodesToSelect(noOfNodesToSelect);
        }
        DOMAIN_SEPARATOR = Eip712.domainSeparator(DOMAIN_NAME);
        TEE_MANAGER = TeeManager(teeManager);
        EXECUTION_BUFFER_TIME = executionBufferTime;
        NO_OF_NODES_TO_SELECT = noOfNodesToSelect;
        SIGN_MAX_AGE = signMaxAge;
    }

    /// @notice Creates a job for the first NO_OF_NODES_TO_SELECT active nodes of `env` that have a
    /// free job slot (fewer if fewer are free); reverts when none is free, as production does.
    /// @param deadline the execution deadline in milliseconds
    function createJob(
        uint8 env,
        uint256 secretId,
        bytes32 codehash,
        bytes calldata codeInputs,
        uint256 deadline
    ) external returns (uint256 jobId) {
        address[] memory active = TEE_MANAGER.nodesOfEnv(env);
        if (active.length == 0) revert JobsNoActiveNodes(env);
        address[] memory free = new address[](active.length);
        uint256 count;
        for (uint256 i; i < active.length && count < NO_OF_NODES_TO_SELECT; ++i) {
            (, uint256 jobCapacity,,,) = TEE_MANAGER.getTeeNode(active[i]);
            if (activeJobs[active[i]] < jobCapacity) free[count++] = active[i];
        }
        if (count == 0) revert JobsExecutorsUnavailable(env);
        address[] memory selected = new address[](count);
        for (uint256 i; i < count; ++i) {
            selected[i] = free[i];
            ++activeJobs[free[i]];
        }
        jobId = _createJob(env, secretId, codehash, codeInputs, deadline, selected);
        reserved[jobId] = true;
    }

    /// @notice Creates a job for the named executors, registered or not (for tests).
    function createJobWithExecutors(
        uint8 env,
        uint256 secretId,
        bytes32 codehash,
        bytes calldata codeInputs,
        uint256 deadline,
        address[] calldata executors
    ) external returns (uint256 jobId) {
        if (executors.length == 0) revert JobsNoExecutors();
        if (executors.length > type(uint8).max) revert JobsTooManyExecutors(executors.length);
        return _createJob(env, secretId, codehash, codeInputs, deadline, executors);
    }

    function submitOutput(
        bytes calldata _signature,
        uint256 _jobId,
        bytes calldata _output,
        uint256 _totalTime,
        uint8 _errorCode,
        uint256 _signTimestamp
    ) external {
        Job storage job = _existingJob(_jobId);
        if (_windowClosed(job)) revert JobsExecutionWindowClosed(_jobId);
        if (block.timestamp > _signTimestamp + SIGN_MAX_AGE) {
            revert JobsSignatureTooOld(_signTimestamp, block.timestamp);
        }
        bytes32 structHash = keccak256(
            abi.encode(
                SUBMIT_OUTPUT_TYPEHASH, _jobId, keccak256(_output), _totalTime, _errorCode, _signTimestamp
            )
        );
        address signer = Eip712.recover(DOMAIN_SEPARATOR, structHash, _signature);
        uint8 status = executorStatus[_jobId][signer];
        if (status == 0) revert JobsNotSelectedExecutor(_jobId, signer);
        if (status == RESPONDED) revert JobsOutputAlreadySubmitted(_jobId, signer);
        if (!TEE_MANAGER.isActive(signer)) revert JobsExecutorNotActive(signer);

        executorStatus[_jobId][signer] = RESPONDED;
        if (reserved[_jobId]) --activeJobs[signer];
        uint8 outputCount = ++job.outputCount;
        uint256 totalTime = _totalTime > job.deadline ? job.deadline : _totalTime;
        emit JobResponded(_jobId, signer, _output, totalTime, _errorCode, outputCount);
        if (outputCount == 1) {
            // All the gas left, as production: the job owner's callback decides what an output costs.
            (bool success,) = job.jobOwner.call(
                abi.encodeWithSignature(
                    "oysterResultCall(uint256,bytes,uint8,uint256)", _jobId, _output, _errorCode, totalTime
                )
            );
            emit JobResultCallbackCalled(_jobId, success);
        }
        // After the callback, in an inner call as production's payments and executor release: a
        // callback that ate the gas makes that call run out, and the whole transaction revert
        // with gas used below its limit (the 1/64 kept is returned), not just the callback.
        this.settle(_jobId, signer);
    }

    /// @notice The bookkeeping of one accepted output; only this contract may call it.
    function settle(uint256 jobId, address executor) external {
        if (msg.sender != address(this)) revert JobsNotSelf(msg.sender);
        for (uint256 i; i < SETTLEMENT_SLOTS; ++i) {
            settlements[jobId][executor][i] = block.timestamp + i;
        }
    }

    /// @notice After the window closed, emits SlashedOnExecutionTimeout once per selected executor
    /// that did not respond, then deletes the job. Reverts when every executor responded, so a
    /// successful call always emits at least one event.
    function slashOnExecutionTimeout(uint256 _jobId) external {
        Job storage job = _existingJob(_jobId);
        if (!_windowClosed(job)) revert JobsDeadlineNotOver(_jobId);
        address[] memory selected = job.selectedExecutors;
        if (job.outputCount == selected.length) revert JobsNothingToSlash(_jobId);
        bool unanswered = job.outputCount == 0;
        address jobOwner = job.jobOwner;
        bool release = reserved[_jobId];
        delete reserved[_jobId];
        for (uint256 i; i < selected.length; ++i) {
            if (executorStatus[_jobId][selected[i]] != RESPONDED) {
                if (release) --activeJobs[selected[i]];
                emit SlashedOnExecutionTimeout(_jobId, selected[i]);
            }
        }
        delete jobs[_jobId];
        if (unanswered) {
            // The second argument is the slashed stake paid to the owner: there is none here.
            (bool success,) =
                jobOwner.call(abi.encodeWithSignature("oysterFailureCall(uint256,uint256)", _jobId, 0));
            emit JobFailureCallbackCalled(_jobId, success);
        }
    }

    /// @notice The job's state; reverts with JobsJobNotFound for an unknown or slashed job.
    function getJob(uint256 jobId)
        external
        view
        returns (
            address jobOwner,
            uint8 env,
            uint256 execStartTime,
            uint256 deadline,
            uint8 outputCount,
            address[] memory selectedExecutors
        )
    {
        Job storage job = _existingJob(jobId);
        return (job.jobOwner, job.env, job.execStartTime, job.deadline, job.outputCount, job.selectedExecutors);
    }

    function hasResponded(uint256 jobId, address executor) external view returns (bool) {
        return executorStatus[jobId][executor] == RESPONDED;
    }

    function _createJob(
        uint8 env,
        uint256 secretId,
        bytes32 codehash,
        bytes calldata codeInputs,
        uint256 deadline,
        address[] memory selected
    ) private returns (uint256 jobId) {
        jobId = jobCount++;
        for (uint256 i; i < selected.length; ++i) {
            if (executorStatus[jobId][selected[i]] != 0) revert JobsDuplicateExecutor(selected[i]);
            executorStatus[jobId][selected[i]] = SELECTED;
        }
        Job storage job = jobs[jobId];
        job.jobOwner = msg.sender;
        job.env = env;
        job.execStartTime = block.timestamp;
        job.deadline = deadline;
        job.selectedExecutors = selected;
        emit JobCreated(jobId, env, msg.sender, secretId, codehash, codeInputs, deadline, selected);
    }

    function _existingJob(uint256 jobId) private view returns (Job storage job) {
        job = jobs[jobId];
        if (job.jobOwner == address(0)) revert JobsJobNotFound(jobId);
    }

    /// @dev docs/protocol.md section 3: outputs are accepted until execStartTime + deadline + buffer (ms).
    function _windowClosed(Job storage job) private view returns (bool) {
        return block.timestamp * 1000 > job.execStartTime * 1000 + job.deadline + EXECUTION_BUFFER_TIME * 1000;
    }
}
