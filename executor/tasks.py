"""A set of background tasks with one owner: spawned here, cancelled and awaited here.

Event handlers must return at once (a slow job never blocks the websocket consumer), so they spawn
tasks; ``TaskSet`` keeps every such task referenced, logs its failure instead of losing it, and lets
the owner wait for or cancel all of them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskSet:
    def __init__(
        self, name: str, *, on_failure: Callable[[BaseException], None] | None = None
    ) -> None:
        """``on_failure`` is told of every task that raised (the supervisor logs and counts
        it); without it, the failure is logged here."""
        self._name = name
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self._on_failure is not None:
            self._on_failure(exc)
        else:
            logger.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def wait(self, timeout_s: float | None, interrupt: asyncio.Event | None = None) -> bool:
        """Wait until every task is done; False if some still run after ``timeout_s`` or once
        ``interrupt`` is set."""
        if not self._tasks:
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        interrupted = None
        if interrupt is not None:
            interrupted = asyncio.ensure_future(interrupt.wait())
        try:
            while self._tasks and not (interrupt and interrupt.is_set()):
                waiters: set[asyncio.Future[Any]] = set(self._tasks)
                if interrupted is not None:
                    waiters.add(interrupted)
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(
                    waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # timed out
                    break
        finally:
            if interrupted is not None:
                interrupted.cancel()
        return not self._tasks

    async def cancel_all(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
