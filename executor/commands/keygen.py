"""``oyster-executor keygen``: write a new enclave key pair."""

from __future__ import annotations

import argparse
from pathlib import Path

from executor.chain.enclave_key import EnclaveKey
from executor.errors import KeyFileError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="write a new secp256k1 enclave key pair",
        description="Write a new enclave key: the 32-byte raw secret (mode 0600) and the 64-byte "
        "raw public key. Refuses to overwrite existing files.",
    )
    parser.add_argument("--secret", type=Path, required=True, help="secret key file to create")
    parser.add_argument("--public", type=Path, required=True, help="public key file to create")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    for path in (args.secret, args.public):
        if path.exists():
            raise KeyFileError(path, "already exists; refusing to overwrite a key")
    key = EnclaveKey.generate()
    try:
        key.write_secret(args.secret)
        args.public.write_bytes(key.public_key)
    except OSError as e:
        raise KeyFileError(e.filename or args.secret, f"cannot write: {e.strerror or e}") from e
    print(f"enclave address: {key.address}")
    print(f"secret key:      {args.secret} (mode 0600; never share it)")
    print(f"public key:      {args.public} (0x{key.public_key.hex()})")
    return 0
