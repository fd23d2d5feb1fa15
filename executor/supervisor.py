"""The daemon's supervisor: every long-lived part runs under it, and nothing dies unnoticed.

A *part* is a named piece of the daemon that must keep running: a loop (the transaction manager's,
the warm keeper), a group of one-shot background tasks (warm arming and retiring), or something
that only reports its health (the event stream). The supervisor:

- logs every failure of a part with its traceback, and counts it (metrics);
- restarts a loop that raised, after a short backoff, within an error budget: a part that failed
  ``max_failures`` times within ``window_s`` stays down (silverback's ``max_exceptions``), and so
  does a loop that cannot be restarted;
- reports a group of one-shot tasks down while ``max_failures`` of its tasks failed within
  ``window_s``, and any part whose health check names a reason (e.g. "20 consecutive failed
  ticks");
- tells which parts are down (``parts_down()``: part name -> reason) and the state of each part
  (``parts()``: the admin API's ``GET /``), and exports ``oyster_executor_part_up{part}``,
  ``oyster_executor_part_failures_total{part}`` and ``oyster_executor_part_restarts_total{part}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from executor.metrics import NO_METRICS, Metrics
from executor.tasks import TaskSet

logger = logging.getLogger(__name__)

MAX_FAILURES = 5
"""Failures of one part within ``FAILURE_WINDOW_S`` after which it stays down."""
FAILURE_WINDOW_S = 60.0
RESTART_BACKOFF_S = 0.5
"""The first restart's delay; it doubles with each failure in the window, up to 10 s."""
MAX_BACKOFF_S = 10.0
_MAX_ERROR_TEXT = 200

Health = Callable[[], str | None]
"""A part's own health check: ``None`` when it is fine, else why it is not."""


@dataclass
class _Part:
    name: str
    restart: bool = False
    health: Health | None = None
    task: asyncio.Task[None] | None = None
    failures: deque[float] = field(default_factory=deque)
    """Monotonic times of the failures within the window."""
    failed: int = 0
    restarts: int = 0
    last_error: str | None = None
    down: str | None = None
    """Why the part stays down (it gave up), else None."""

    def recent_failures(self, now: float, window_s: float) -> int:
        while self.failures and now - self.failures[0] > window_s:
            self.failures.popleft()
        return len(self.failures)


class Supervisor:
    def __init__(
        self,
        *,
        metrics: Metrics = NO_METRICS,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        backoff_s: float = RESTART_BACKOFF_S,
    ) -> None:
        self._metrics = metrics
        self._max_failures = max_failures
        self._window_s = window_s
        self._backoff_s = backoff_s
        self._parts: dict[str, _Part] = {}
        metrics.watch_parts(self)

    # --- registering parts -----------------------------------------------------------------

    def run(
        self,
        name: str,
        loop: Callable[[], Coroutine[Any, Any, None]],
        *,
        restart: bool = True,
        health: Health | None = None,
    ) -> asyncio.Task[None]:
        """Run ``loop()`` as the part ``name``: when it raises, log it and (``restart``) call it
        again within the error budget. Cancel the returned task to stop the part; a ``loop``
        that returns has stopped on purpose (not down)."""
        part = self._part(name, health)
        part.restart, part.down = restart, None
        part.task = asyncio.create_task(self._supervise(part, loop), name=f"part:{name}")
        return part.task

    def tasks(self, name: str) -> TaskSet:
        """A group of one-shot tasks: each failure is logged and counted as part ``name``'s."""
        part = self._part(name, None)
        return TaskSet(name, on_failure=lambda exc: self._failed(part, exc))

    def watch(self, name: str, health: Health) -> None:
        """A part that runs elsewhere and only reports its health."""
        self._part(name, health)

    def _part(self, name: str, health: Health | None) -> _Part:
        part = self._parts.get(name)
        if part is None:
            part = self._parts[name] = _Part(name)
        if health is not None:
            part.health = health
        return part

    # --- state ---------------------------------------------------------------------------------

    def parts_down(self) -> dict[str, str]:
        """Every part that is down, with the reason (empty: all is well)."""
        return {name: reason for name in self._parts if (reason := self._down(name)) is not None}

    def parts(self) -> dict[str, dict[str, Any]]:
        """Each part's state, for the admin API's ``GET /``."""
        return {
            name: {
                "up": (reason := self._down(name)) is None,
                "reason": reason,
                "failures": part.failed,
                "restarts": part.restarts,
                "last_error": part.last_error,
            }
            for name, part in self._parts.items()
        }

    def _down(self, name: str) -> str | None:
        part = self._parts[name]
        if part.down is not None:
            return part.down
        if part.task is None:  # a group of tasks, or a watched part
            recent = part.recent_failures(time.monotonic(), self._window_s)
            if recent >= self._max_failures:
                return f"{recent} failures in {self._window_s:.0f}s: {part.last_error}"
        if part.health is not None:
            try:
                return part.health()
            except Exception as e:  # a health check must not break the health report
                return f"health check failed: {type(e).__name__}: {e}"[:_MAX_ERROR_TEXT]
        return None

    # --- running -------------------------------------------------------------------------------

    async def _supervise(self, part: _Part, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed(part, e)
                recent = part.recent_failures(time.monotonic(), self._window_s)
                if not part.restart or recent >= self._max_failures:
                    part.down = (
                        f"stopped after {recent} failure(s) in {self._window_s:.0f}s: "
                        f"{part.last_error}"
                        if part.restart
                        else f"stopped: {part.last_error}"
                    )
                    logger.critical("part %s is DOWN: %s", part.name, part.down)
                    return
                delay = min(self._backoff_s * 2 ** (recent - 1), MAX_BACKOFF_S)
                logger.warning("restarting part %s in %.1fs", part.name, delay)
                await asyncio.sleep(delay)
                part.restarts += 1
                self._metrics.part_restarted(part.name)

    def _failed(self, part: _Part, exc: BaseException) -> None:
        part.failed += 1
        part.failures.append(time.monotonic())
        part.last_error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_TEXT]
        self._metrics.part_failed(part.name)
        logger.error("part %s failed: %s", part.name, part.last_error, exc_info=exc)

    async def close(self) -> None:
        """Cancel every part still running and wait for them."""
        tasks = [p.task for p in self._parts.values() if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
