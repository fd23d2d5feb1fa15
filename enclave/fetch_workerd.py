"""Fetch the workerd binary and its config schema pinned by package-lock.json (image build step).

The image needs only two files of the npm package ``workerd``: the native binary of
``@cloudflare/workerd-linux-64`` and ``workerd.capnp``. Installing Node and running ``npm ci``
for them would add ~100 MB of build packages; instead this reads the exact version and the
``integrity`` (SHA-512) of both packages from ``package-lock.json``, downloads their tarballs from
the npm registry and refuses any whose hash differs from the lock. Standard library only.

    python3 fetch_workerd.py package-lock.json DEST_BIN DEST_SCHEMA [--registry URL]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

BINARY_PACKAGE = "@cloudflare/workerd-linux-64"
SCHEMA_PACKAGE = "workerd"


def locked(lock: dict, name: str) -> tuple[str, str]:
    """The locked version and SRI integrity of ``name``."""
    entry = lock.get("packages", {}).get(f"node_modules/{name}")
    if not entry or "version" not in entry or "integrity" not in entry:
        raise SystemExit(
            f"fetch_workerd: {name} is not pinned (with integrity) in package-lock.json"
        )
    return entry["version"], entry["integrity"]


def tarball_url(registry: str, name: str, version: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return f"{registry.rstrip('/')}/{name}/-/{base}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, name: str) -> None:
    algo, _, expected = integrity.partition("-")
    if algo not in ("sha512", "sha384", "sha256"):
        raise SystemExit(f"fetch_workerd: {name}: unsupported integrity algorithm {algo!r}")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise SystemExit(
            f"fetch_workerd: {name}: tarball hash {algo}-{actual} differs from the lock"
        )


def member(data: bytes, path: str, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            extracted = tar.extractfile(f"package/{path}")
        except KeyError:
            extracted = None
        if extracted is None:
            raise SystemExit(f"fetch_workerd: {name} has no {path}")
        return extracted.read()


def fetch(registry: str, name: str, version: str, integrity: str) -> bytes:
    url = tarball_url(registry, name, version)
    with urllib.request.urlopen(url, timeout=300) as response:
        data: bytes = response.read()
    check_integrity(data, integrity, name)
    print(f"fetch_workerd: {name}@{version} ({len(data)} bytes) matches the lock", file=sys.stderr)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("dest_bin", type=Path)
    parser.add_argument("dest_schema", type=Path)
    parser.add_argument("--registry", default="https://registry.npmjs.org")
    args = parser.parse_args(argv)
    lock = json.loads(args.lock.read_text())
    version, integrity = locked(lock, BINARY_PACKAGE)
    binary = member(
        fetch(args.registry, BINARY_PACKAGE, version, integrity), "bin/workerd", BINARY_PACKAGE
    )
    version, integrity = locked(lock, SCHEMA_PACKAGE)
    schema = member(
        fetch(args.registry, SCHEMA_PACKAGE, version, integrity), "workerd.capnp", SCHEMA_PACKAGE
    )
    for dest, content, mode in ((args.dest_bin, binary, 0o755), (args.dest_schema, schema, 0o644)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        dest.chmod(mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
