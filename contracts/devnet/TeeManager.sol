// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {ITeeManager} from "../interfaces/ITeeManager.sol";

/// @title EIP-712 digests and strict secp256k1 signature recovery for the devnet contracts.
/// @notice Both Oyster domains hold ONLY name and version "1": no chainId, no verifyingContract.
library Eip712 {
    bytes32 internal constant DOMAIN_TYPEHASH = keccak256("EIP712Domain(string name,string version)");

    /// @dev secp256k1n / 2: a larger s is the malleable twin of a valid signature.
    uint256 internal constant HALF_CURVE_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    error SignatureInvalidLength(uint256 length);
    error SignatureMalleable();
    error SignatureInvalidV(uint8 v);
    error SignatureInvalid();

    function domainSeparator(string memory name) internal pure returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256(bytes(name)), keccak256("1")));
    }

    /// @notice Recovers the signer of `structHash` in `domain` from 65 bytes r || s || v.
    /// @dev Reverts on a wrong length, a high s, a v other than 27/28, or an unrecoverable key.
    function recover(bytes32 domain, bytes32 structHash, bytes calldata signature)
        internal
        pure
        returns (address signer)
    {
        if (signature.length != 65) revert SignatureInvalidLength(signature.length);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_CURVE_ORDER) revert SignatureMalleable();
        if (v != 27 && v != 28) revert SignatureInvalidV(v);
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", domain, structHash));
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert SignatureInvalid();
    }
}

/// @title A development TeeManager: registration by enclave signature, without attestation or stake.
/// @notice The enclave address is derived from the enclave's public key the way production derives
/// it from the attestation, and the Register signature is checked exactly as in production.
contract TeeManager is ITeeManager {
    string public constant DOMAIN_NAME = "marlin.oyster.TeeManager";
    bytes32 public constant REGISTER_TYPEHASH = keccak256(
        "Register(address owner,uint256 jobCapacity,uint256 storageCapacity,uint8 env,uint256 signTimestamp)"
    );

    bytes32 public immutable DOMAIN_SEPARATOR;
    /// @notice A registration signature older than this many seconds is rejected.
    uint256 public immutable SIGN_MAX_AGE;

    struct TeeNode {
        address owner;
        uint256 jobCapacity;
        uint256 storageCapacity;
        uint8 env;
        bool draining;
    }

    mapping(address => TeeNode) private nodes;
    /// @dev Registered enclaves in registration order (swap-and-pop on removal).
    address[] private enclaves;
    mapping(address => uint256) private enclaveIndexPlusOne;

    error TeeManagerInvalidPublicKeyLength(uint256 length);
    error TeeManagerNodeAlreadyRegistered(address enclaveAddress);
    error TeeManagerSignatureTooOld(uint256 signTimestamp, uint256 blockTimestamp);
    error TeeManagerInvalidSigner(address signer, address enclaveAddress);
    error TeeManagerNodeNotFound(address enclaveAddress);
    error TeeManagerNotNodeOwner(address caller, address owner);
    error TeeManagerNodeAlreadyDraining(address enclaveAddress);
    error TeeManagerNodeNotDraining(address enclaveAddress);

    constructor(uint256 signMaxAge) {
        DOMAIN_SEPARATOR = Eip712.domainSeparator(DOMAIN_NAME);
        SIGN_MAX_AGE = signMaxAge;
    }

    /// @param enclavePubKey 64-byte uncompressed secp256k1 public key, without the 0x04 prefix
    /// @param signature the enclave's EIP-712 Register signature, owner = msg.sender
    function registerTeeNode(
        bytes calldata enclavePubKey,
        uint256 jobCapacity,
        uint256 storageCapacity,
        uint8 env,
        uint256 signTimestamp,
        bytes calldata signature
    ) external {
        if (enclavePubKey.length != 64) revert TeeManagerInvalidPublicKeyLength(enclavePubKey.length);
        address enclaveAddress = address(uint160(uint256(keccak256(enclavePubKey))));
        if (nodes[enclaveAddress].owner != address(0)) {
            revert TeeManagerNodeAlreadyRegistered(enclaveAddress);
        }
        if (block.timestamp > signTimestamp + SIGN_MAX_AGE) {
            revert TeeManagerSignatureTooOld(signTimestamp, block.timestamp);
        }
        bytes32 structHash = keccak256(
            abi.encode(REGISTER_TYPEHASH, msg.sender, jobCapacity, storageCapacity, env, signTimestamp)
        );
        address signer = Eip712.recover(DOMAIN_SEPARATOR, structHash, signature);
        if (signer != enclaveAddress) revert TeeManagerInvalidSigner(signer, enclaveAddress);

        nodes[enclaveAddress] = TeeNode(msg.sender, jobCapacity, storageCapacity, env, false);
        enclaves.push(enclaveAddress);
        enclaveIndexPlusOne[enclaveAddress] = enclaves.length;
        emit TeeNodeRegistered(enclaveAddress, msg.sender, jobCapacity, storageCapacity, env);
    }

    function drainTeeNode(address enclaveAddress) external {
        TeeNode storage node = _ownedNode(enclaveAddress);
        if (node.draining) revert TeeManagerNodeAlreadyDraining(enclaveAddress);
        node.draining = true;
        emit TeeNodeDrained(enclaveAddress);
    }

    function reviveTeeNode(address enclaveAddress) external {
        TeeNode storage node = _ownedNode(enclaveAddress);
        if (!node.draining) revert TeeManagerNodeNotDraining(enclaveAddress);
        node.draining = false;
        emit TeeNodeRevived(enclaveAddress);
    }

    /// @notice Removes the node whatever its state (production would first wait for its stake).
    function deregisterTeeNode(address enclaveAddress) external {
        _ownedNode(enclaveAddress);
        uint256 index = enclaveIndexPlusOne[enclaveAddress] - 1;
        address last = enclaves[enclaves.length - 1];
        enclaves[index] = last;
        enclaveIndexPlusOne[last] = index + 1;
        enclaves.pop();
        delete enclaveIndexPlusOne[enclaveAddress];
        delete nodes[enclaveAddress];
        emit TeeNodeDeregistered(enclaveAddress);
    }

    function isRegistered(address enclaveAddress) public view returns (bool) {
        return nodes[enclaveAddress].owner != address(0);
    }

    /// @notice Registered and not draining: the node may be selected and may submit outputs.
    function isActive(address enclaveAddress) public view returns (bool) {
        TeeNode storage node = nodes[enclaveAddress];
        return node.owner != address(0) && !node.draining;
    }

    function ownerOf(address enclaveAddress) external view returns (address) {
        return nodes[enclaveAddress].owner;
    }

    function getTeeNode(address enclaveAddress)
        external
        view
        returns (address owner, uint256 jobCapacity, uint256 storageCapacity, uint8 env, bool draining)
    {
        TeeNode storage node = nodes[enclaveAddress];
        return (node.owner, node.jobCapacity, node.storageCapacity, node.env, node.draining);
    }

    /// @notice The active (registered, not draining) nodes of `env`, in registration order
    /// (a deregistration moves the last registered node into the freed place).
    function nodesOfEnv(uint8 env) external view returns (address[] memory result) {
        uint256 count;
        for (uint256 i; i < enclaves.length; ++i) {
            if (_activeIn(enclaves[i], env)) ++count;
        }
        result = new address[](count);
        uint256 next;
        for (uint256 i; i < enclaves.length; ++i) {
            if (_activeIn(enclaves[i], env)) result[next++] = enclaves[i];
        }
    }

    function _activeIn(address enclaveAddress, uint8 env) private view returns (bool) {
        TeeNode storage node = nodes[enclaveAddress];
        return node.env == env && !node.draining;
    }

    function _ownedNode(address enclaveAddress) private view returns (TeeNode storage node) {
        node = nodes[enclaveAddress];
        if (node.owner == address(0)) revert TeeManagerNodeNotFound(enclaveAddress);
        if (node.owner != msg.sender) revert TeeManagerNotNodeOwner(msg.sender, node.owner);
    }
}
