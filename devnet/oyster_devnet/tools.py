"""Locate the native binaries that the npm packages in node_modules ship.

The ``node_modules/.bin`` wrappers are node scripts that do not forward signals (SIGKILL to the
anvil wrapper leaves anvil running), so the project always spawns the native binaries directly.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from executor.errors import ExecutorError
from executor.sandbox.locate import find_workerd

REPO_ROOT = Path(__file__).resolve().parents[2]

_NATIVE = {"anvil": "@foundry-rs/anvil-linux-amd64/bin/anvil"}


def native_binary(name: str) -> Path:
    """Path of the native ``anvil`` binary; ``OYSTER_ANVIL_BIN`` overrides it."""
    override = os.environ.get(f"OYSTER_{name.upper()}_BIN")
    candidates = [Path(override)] if override else []
    candidates.append(REPO_ROOT / "node_modules" / _NATIVE[name])
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ExecutorError(
        f"{name} binary not found (looked at {', '.join(map(str, candidates))}); run `make setup`"
    )


def workerd_binary() -> Path:
    """Found as ``oyster-executor run`` finds it (``executor.sandbox.locate``)."""
    return find_workerd(cwd=REPO_ROOT)


def anvil_binary() -> Path:
    return native_binary("anvil")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a race with other binders remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
