"""Whether the node can serve, with the reasons when it cannot: what the admin API's
``GET /health`` answers (200 or 503) and what the metrics report.

The node cannot serve when, for longer than a grace period, it has no chain connection (the event
stream is down, or the HTTP RPC cannot be read); when the sandbox is broken (jobs keep failing in
it and a canary job, known-good code, fails too; or the warm path stood down); when the gas account
cannot pay for one output; or when a supervised part is down (``parts_down``, a callable mapping
part name to reason, given by whoever supervises the parts).

A node that is merely not registered, or drained, is not unhealthy: its ``status`` says so.
:meth:`NodeHealth.watch` samples the chain, reads the gas balance and runs the canaries in the
background; reading the verdict (:meth:`NodeHealth.reasons`) does no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from eth_utils import to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from executor import redact
from executor.canary import Executes, run_canary
from executor.chain.jobs_contract import SUBMIT_OUTPUT_GAS_BASE
from executor.errors import SandboxError
from executor.outcome import JobOutcome

logger = logging.getLogger(__name__)

CHAIN_GRACE_S = 30.0
"""How long the chain may be unreachable before the node reports itself unable to serve."""
SANDBOX_FAILURE_STREAK = 3
"""Consecutive jobs failing in the sandbox after which a canary decides whether it is broken."""
CANARY_MIN_INTERVAL_S = 30.0
"""At most one canary per this many seconds (a canary takes a slice like a job)."""
GAS_POLL_S = 30.0
TICK_S = 1.0


class WarmState(Protocol):
    available: bool | None


class StreamState(Protocol):
    connected: bool
    last_error: str | None


PartsDown = Callable[[], Mapping[str, str]]


def no_parts_down() -> Mapping[str, str]:
    return {}


@dataclass
class GasState:
    address: str | None = None
    balance_wei: int | None = None
    needed_wei: int | None = None
    """What one output costs at the current gas price (``SUBMIT_OUTPUT_GAS_BASE`` gas)."""


class SandboxWatch:
    """Counts jobs that fail in the sandbox in a row; a canary tells a broken sandbox from
    failing user code (a module that does not start is the user's, a workerd that cannot run is
    the node's)."""

    def __init__(self, sandbox: Executes, *, streak: int = SANDBOX_FAILURE_STREAK) -> None:
        self._sandbox = sandbox
        self._streak = streak
        self.consecutive_failures = 0
        self.broken: str | None = None
        """Why the last canary failed, while it is the latest word on the sandbox."""
        self.canaries = 0
        self._last_canary = -CANARY_MIN_INTERVAL_S
        self._lock = asyncio.Lock()

    async def execute(
        self, code: bytes, inputs: bytes, *, deadline_ms: int, secret_id: int = 0, label: str = ""
    ) -> JobOutcome:
        """The sandbox's ``execute``, counted (what the job runner calls)."""
        try:
            outcome = await self._sandbox.execute(
                code, inputs, deadline_ms=deadline_ms, secret_id=secret_id, label=label
            )
        except SandboxError:
            self.consecutive_failures += 1
            raise
        self.consecutive_failures = 0
        self.broken = None
        return outcome

    @property
    def suspect(self) -> bool:
        return self.consecutive_failures >= self._streak

    async def canary(self, *, force: bool = False) -> None:
        """Run a canary (at most once per :data:`CANARY_MIN_INTERVAL_S` unless ``force``)."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._last_canary < CANARY_MIN_INTERVAL_S:
                return
            self._last_canary = now
            self.canaries += 1
            result = await run_canary(self._sandbox, label="health canary")
        if result.ok:
            self.broken = None
            self.consecutive_failures = 0
            logger.info("health canary %s", result.detail)
        else:
            self.broken = result.detail
            logger.error("health canary FAILED: %s: every job would fail", result.detail)


class NodeHealth:
    def __init__(
        self,
        *,
        version: str,
        stream: Callable[[], StreamState | None],
        sandbox: SandboxWatch | None = None,
        warm: Callable[[], WarmState | None] = lambda: None,
        w3: AsyncWeb3 | None = None,
        gas_address: Callable[[], str | None] = lambda: None,
        parts_down: PartsDown = no_parts_down,
        chain_grace_s: float = CHAIN_GRACE_S,
        gas_poll_s: float = GAS_POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.version = version
        self._stream = stream
        self.sandbox = sandbox
        self._warm = warm
        self._w3 = w3
        self._gas_address = gas_address
        self._parts_down = parts_down
        self._grace_s = chain_grace_s
        self._gas_poll_s = gas_poll_s
        self._clock = clock
        self.gas = GasState()
        self._stream_down_since: float | None = None
        self._rpc_down_since: float | None = None
        self._rpc_error = ""
        self._watch_error = ""
        self._next_gas = 0.0

    # --- the verdict (no I/O) ------------------------------------------------------------------

    def reasons(self) -> dict[str, str]:
        """Part -> why the node cannot serve; empty when it can."""
        now = self._clock()
        found: dict[str, str] = {}
        stream = self._stream()
        if stream is not None and self._stream_down_since is not None:
            down_s = now - self._stream_down_since
            if down_s >= self._grace_s:
                found["chain"] = (
                    f"no websocket connection to the chain for {down_s:.0f}s"
                    f" ({stream.last_error or 'connecting'})"
                )
        if self._rpc_down_since is not None and now - self._rpc_down_since >= self._grace_s:
            found["rpc"] = (
                f"the HTTP RPC cannot be read for {now - self._rpc_down_since:.0f}s "
                f"({self._rpc_error})"
            )
        if self.sandbox is not None and self.sandbox.broken is not None:
            found["sandbox"] = f"a known-good canary job failed: {self.sandbox.broken}"
        warm = self._warm()
        if warm is not None and warm.available is False:
            found["warm"] = "the warm path stood down (see the start-up log): jobs run cold"
        gas = self.gas
        if (
            gas.address is not None
            and gas.balance_wei is not None
            and gas.needed_wei is not None
            and gas.balance_wei < gas.needed_wei
        ):
            found["gas"] = (
                f"gas account {gas.address} holds {gas.balance_wei} wei, less than one output "
                f"costs (about {gas.needed_wei} wei): fund it"
            )
        if self._watch_error:
            found["health"] = self._watch_error
        for part, reason in self._parts_down().items():
            found[f"part:{part}"] = reason
        return found

    def report(self) -> dict[str, Any]:
        reasons = {part: redact.redact(why) for part, why in self.reasons().items()}
        return {
            "healthy": not reasons,
            "reasons": reasons,
            "version": self.version,
            "gas": {
                "address": self.gas.address,
                "balance_wei": self.gas.balance_wei,
                "needed_wei": self.gas.needed_wei,
            },
        }

    # --- the background sampling ---------------------------------------------------------------

    async def watch(self, *, canary_at_start: bool = True) -> None:
        """Sample the chain every second, read the gas balance every :data:`GAS_POLL_S`, run a
        canary at start, whenever jobs keep failing in the sandbox and, while the last canary
        failed, every :data:`CANARY_MIN_INTERVAL_S`. Runs until cancelled."""
        if canary_at_start and self.sandbox is not None:
            await self.sandbox.canary(force=True)
        self._next_gas = 0.0
        while True:
            try:
                await self._tick()
            except Exception as e:  # a bug here must not freeze the health without a word
                logger.exception("health: sampling failed")
                self._watch_error = f"the health sampling failed: {type(e).__name__}: {e}"[:200]
            else:
                self._watch_error = ""
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        self.sample_stream()
        if self._clock() >= self._next_gas or self._gas_address() != self.gas.address:
            read = await self.read_gas()
            # a failed read is retried sooner: the grace period counts from the first one
            pause = self._gas_poll_s if read else min(5.0, self._gas_poll_s)
            self._next_gas = self._clock() + pause
        if self.sandbox is not None and (self.sandbox.suspect or self.sandbox.broken):
            await self.sandbox.canary()  # while broken, retried: the node heals by itself

    def sample_stream(self) -> None:
        stream = self._stream()
        if stream is None or stream.connected:
            self._stream_down_since = None
        elif self._stream_down_since is None:
            self._stream_down_since = self._clock()

    async def read_gas(self) -> bool:
        """The gas account's balance and one output's cost; a failed read counts as the RPC
        being down (``rpc`` after the grace period)."""
        address = self._gas_address()
        self.gas.address = address
        if self._w3 is None:
            return True
        try:
            price = int(await _bounded(self._w3.eth.gas_price))
            self.gas.needed_wei = price * SUBMIT_OUTPUT_GAS_BASE
            if address is not None:
                self.gas.balance_wei = int(
                    await _bounded(self._w3.eth.get_balance(to_checksum_address(address)))
                )
        except (Web3Exception, OSError, TimeoutError, ValueError) as e:
            if self._rpc_down_since is None:
                self._rpc_down_since = self._clock()
            self._rpc_error = redact.redact(f"{type(e).__name__}: {e}")[:200]
            return False
        self._rpc_down_since = None
        return True


async def _bounded(call: Awaitable[Any]) -> Any:
    async with asyncio.timeout(10):
        return await call
