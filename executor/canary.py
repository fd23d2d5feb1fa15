"""A canary job: known-good code run through the sandbox exactly as a real job runs.

``doctor`` runs it on the warm and the cold path before the node serves; the daemon's health runs
it at start-up and whenever jobs keep failing in the sandbox, to tell a broken sandbox (every job
would fail: 503) from user code that fails (the node is fine). It takes a slice like any job and
answers within :data:`CANARY_DEADLINE_MS`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from executor.errors import SandboxError
from executor.outcome import ErrorCode, JobOutcome

CANARY_CODE = b"""export default {
  async fetch(request) {
    return new Response("canary:" + (await request.text()));
  }
};
"""
CANARY_DEADLINE_MS = 10_000


class Executes(Protocol):
    async def execute(
        self, code: bytes, inputs: bytes, *, deadline_ms: int, secret_id: int = 0, label: str = ""
    ) -> JobOutcome: ...


@dataclass(frozen=True)
class CanaryResult:
    ok: bool
    detail: str
    """What happened, one line (the time taken, or why it failed)."""


async def run_canary(sandbox: Executes, *, label: str = "canary") -> CanaryResult:
    """Run the canary job once; never raises for a sandbox failure."""
    nonce = secrets.token_hex(8).encode()
    try:
        outcome = await sandbox.execute(
            CANARY_CODE, nonce, deadline_ms=CANARY_DEADLINE_MS, label=label
        )
    except SandboxError as e:
        return CanaryResult(False, str(e))
    except OSError as e:
        return CanaryResult(False, f"{type(e).__name__}: {e}")
    if outcome.error_code is not ErrorCode.OK or outcome.output != b"canary:" + nonce:
        return CanaryResult(
            False,
            f"answered error code {int(outcome.error_code)} ({outcome.error_code.name}) with "
            f"{outcome.output[:80]!r}, expected an echo of its input",
        )
    return CanaryResult(True, f"answered in {outcome.total_time_ms} ms")
