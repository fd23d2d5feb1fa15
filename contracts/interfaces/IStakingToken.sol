// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title The ERC-20 members `oyster-executor owner` uses on the staking token (POND).
interface IStakingToken {
    event Approval(address indexed owner, address indexed spender, uint256 value);

    function approve(address spender, uint256 value) external returns (bool);

    function allowance(address owner, address spender) external view returns (uint256);

    function balanceOf(address account) external view returns (uint256);

    function decimals() external view returns (uint8);

    function symbol() external view returns (string memory);
}
