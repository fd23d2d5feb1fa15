"""Find the workerd binary without a source checkout.

Looked for, in order: ``$OYSTER_WORKERD_BIN``; ``workerd`` on ``$PATH`` (the enclave image links
it there); the native binary the npm ``workerd`` package puts under ``./node_modules``, then under
the ``node_modules`` of the checkout this package runs from (a development checkout after ``make
setup``, whatever the working directory). ``oyster-executor run``, ``oyster-devnet`` and the tests
all find it here. The npm ``.bin/workerd`` wrapper is a node script that
does not forward signals, so the native binary is preferred over it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from executor.errors import ExecutorError

ENV_OVERRIDE = "OYSTER_WORKERD_BIN"
NPM_NATIVE = Path("node_modules/@cloudflare/workerd-linux-64/bin/workerd")
CHECKOUT = Path(__file__).resolve().parents[2]
"""The folder holding ``executor/``: a checkout's root when run from one."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_workerd(cwd: Path | None = None) -> Path:
    """The workerd binary to run; ``ExecutorError`` naming every place looked at if none."""
    looked: list[str] = []
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        if _executable(Path(override)):
            return Path(override)
        looked.append(f"${ENV_OVERRIDE}={override}")
    on_path = shutil.which("workerd")
    if on_path:
        return Path(on_path)
    looked.append("workerd on $PATH")
    for folder in dict.fromkeys([cwd or Path.cwd(), CHECKOUT]):
        local = folder / NPM_NATIVE
        if _executable(local):
            return local
        looked.append(str(local))
    raise ExecutorError(
        f"workerd binary not found (looked at {', '.join(looked)}); install the npm package "
        f"`workerd`, put the binary on $PATH, set {ENV_OVERRIDE}, or pass --workerd"
    )
