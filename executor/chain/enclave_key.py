"""The enclave key: loading, addresses, EIP-712 digests and signatures (docs/protocol.md §2).

Both EIP-712 domains have only ``name`` and ``version`` (no chainId, no verifyingContract), so the
digests are computed here directly rather than through a generic typed-data encoder. The
``Register`` digest lives here; the Jobs contract's ``SubmitOutput`` digest lives with the rest of
that contract's calls in ``executor.chain.jobs_contract``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from coincurve import PrivateKey, PublicKey
from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from executor import redact
from executor.errors import KeyFileError

SECRET_KEY_BYTES = 32

_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version)")
_REGISTER_TYPEHASH = keccak(
    b"Register(address owner,uint256 jobCapacity,uint256 storageCapacity,uint8 env,"
    b"uint256 signTimestamp)"
)

TEE_MANAGER_DOMAIN = "marlin.oyster.TeeManager"


def domain_separator(name: str, version: str = "1") -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32"],
            [_DOMAIN_TYPEHASH, keccak(name.encode()), keccak(version.encode())],
        )
    )


_TEE_MANAGER_SEPARATOR = domain_separator(TEE_MANAGER_DOMAIN)


def typed_digest(separator: bytes, struct_hash: bytes) -> bytes:
    """``keccak256(0x19 0x01 || domainSeparator || hashStruct)``."""
    return keccak(b"\x19\x01" + separator + struct_hash)


def register_digest(
    owner: str, job_capacity: int, storage_capacity: int, env: int, sign_timestamp: int
) -> bytes:
    """EIP-712 digest of ``Register`` in the ``marlin.oyster.TeeManager`` domain."""
    struct_hash = keccak(
        encode(
            ["bytes32", "address", "uint256", "uint256", "uint8", "uint256"],
            [_REGISTER_TYPEHASH, owner, job_capacity, storage_capacity, env, sign_timestamp],
        )
    )
    return typed_digest(_TEE_MANAGER_SEPARATOR, struct_hash)


def address_of_public_key(public_key: bytes) -> str:
    """Checksummed address of a 64-byte uncompressed public key (no 0x04 prefix)."""
    if len(public_key) != 64:
        raise ValueError(f"public key must be 64 bytes, got {len(public_key)}")
    return to_checksum_address(keccak(public_key)[-20:])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Address that produced a 65-byte ``r || s || v`` signature over ``digest``."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        raise ValueError("signature must be 65 bytes r || s || v with v = 27 or 28")
    rsv = signature[:64] + bytes([signature[64] - 27])
    public = PublicKey.from_signature_and_message(rsv, digest, hasher=None)
    return address_of_public_key(public.format(compressed=False)[1:])


@dataclass(frozen=True, repr=False)
class EnclaveKey:
    """The enclave's signing key. ``repr`` and ``str`` never show the secret."""

    _private: PrivateKey

    @classmethod
    def from_secret(cls, secret: bytes) -> EnclaveKey:
        if len(secret) != SECRET_KEY_BYTES:
            raise ValueError(f"secret must be {SECRET_KEY_BYTES} bytes, got {len(secret)}")
        try:
            return cls(PrivateKey(secret))
        except ValueError as e:
            raise ValueError("secret is not a valid secp256k1 scalar") from e

    @classmethod
    def generate(cls) -> EnclaveKey:
        return cls(PrivateKey())

    @classmethod
    def load(cls, path: Path) -> EnclaveKey:
        """Read a file of exactly 32 raw bytes (``enclave_signer_file``), private to its owner.

        A key file that group or others may read (or write) is refused: whoever else can read it
        can sign outputs in the enclave's name, so the daemon must not run with it.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise KeyFileError(path, f"cannot read: {e.strerror or e}") from e
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise KeyFileError(
                path, f"is {what}; enclave_signer_file must name the key file itself"
            )
        with os.fdopen(fd, "rb") as f:
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    path,
                    f"is accessible by group or others (mode {mode:04o}); refusing to use it. "
                    f"Make it private to its owner: chmod 600 {path}",
                )
            secret = f.read(4096)  # enough to report the size of a wrong file
        if len(secret) != SECRET_KEY_BYTES:
            raise KeyFileError(
                path, f"must hold exactly {SECRET_KEY_BYTES} raw bytes, found {len(secret)}"
            )
        try:
            key = cls.from_secret(secret)
        except ValueError as e:
            raise KeyFileError(path, str(e)) from e
        redact.register_secret(secret.hex())  # should any code path ever format it
        return key

    @property
    def public_key(self) -> bytes:
        """64-byte uncompressed public key without the 0x04 prefix."""
        return self._private.public_key.format(compressed=False)[1:]

    @property
    def address(self) -> str:
        return address_of_public_key(self.public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte ``r || s || v`` signature with v = 27 or 28 (low-s, as coincurve produces)."""
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        rsv = self._private.sign_recoverable(digest, hasher=None)
        return rsv[:64] + bytes([rsv[64] + 27])

    def sign_registration(
        self, owner: str, job_capacity: int, storage_capacity: int, env: int, sign_timestamp: int
    ) -> bytes:
        return self.sign_digest(
            register_digest(owner, job_capacity, storage_capacity, env, sign_timestamp)
        )

    def write_secret(self, path: Path) -> None:
        """Write the 32 raw secret bytes to a new file readable only by its owner (0600)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "wb") as f:
            f.write(self._private.secret)

    def __repr__(self) -> str:
        return f"EnclaveKey(address={self.address})"

    __str__ = __repr__
