"""The tests' one way to wait for a condition that no event announces: poll it, asynchronously.

Where the code under test offers an event (an ``asyncio.Event``, a queue, a websocket message, a
process exit), await that instead. Where a test must show that something does *not* happen, wait
for the event that proves the opposite (a later job answered, a block mined) rather than sleeping;
only where a quiet period is itself the point, sleep briefly and say so in a comment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.1


async def wait_until(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float = 20.0,  # noqa: ASYNC109 - a polling helper, not a cancellable call
    what: str = "the condition",
    interval: float = DEFAULT_INTERVAL_S,
) -> T:
    """Call ``probe`` (sync or async) until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds with "timed out after Ns waiting for <what>". The
    event loop runs between calls, so the code under test makes progress meanwhile.
    """
    give_up = time.monotonic() + timeout
    while True:
        value: Any = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
