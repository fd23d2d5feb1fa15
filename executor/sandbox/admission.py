"""The queue of jobs waiting for a slot: first come, first served, woken by events, no polling.

A slot is a warm worker (:mod:`.warm`) or, failing that, a free slice for a cold start. A job
that finds one takes it at once, unless jobs already wait (then it queues behind them). Whenever
a slot may have appeared (a warm worker got ready, a slice was released, the warm pool stood
down), :meth:`Admission.wake` hands slots to the waiters in arrival order, until none is left.

The queue is bounded by what bounds the jobs: at most :attr:`SlicePool.capacity` jobs hold a
slot, and each waiter leaves when its deadline passes (the sandbox's timeout cancels the wait,
and the job is answered errorCode 4). A slot handed to a waiter cancelled at that very moment is
given back, never lost.

One case still needs a look now and then: slices locked by *another* process (a local
``oyster-executor run`` next to the daemon) free up without an event here, so while the pool has
seen such a slice, waiters also look again every :data:`FOREIGN_RECHECK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from executor.errors import NoFreeSliceError
from executor.sandbox.cgroups import Slice, SlicePool
from executor.sandbox.warm import WarmPool, WarmWorker

Slot = tuple[WarmWorker | None, Slice | None]
FOREIGN_RECHECK_S = 0.25
"""While slices are locked by another process, how often waiters look again."""


class Admission:
    """Hands slots of ``pool`` (warm workers of ``warm`` first) to jobs, in arrival order."""

    def __init__(self, pool: SlicePool, warm: WarmPool | None) -> None:
        self._pool = pool
        self._warm = warm
        self._waiters: deque[tuple[asyncio.Future[Slot], bytes | None]] = deque()
        self._evicting = False  # a pre-loaded process is being re-armed for a waiting job
        pool.on_release.append(self.wake)
        if warm is not None:
            warm.on_change.append(self.wake)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def take(self, key: bytes | None = None) -> Slot:
        """A slot for one job, waiting in line while there is none; ``NoFreeSliceError`` when no
        slice is in service at all. ``key``: the job's :func:`.loader.preload_key` (a warm
        worker pre-loaded with it is preferred)."""
        if not self._waiters:
            slot = self._try(key)
            if slot is not None:
                return slot
        if self._pool.capacity == 0:
            raise NoFreeSliceError(f"no cgroup slice in service in {self._pool.parent}")
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        entry = (waiter, key)
        self._waiters.append(entry)
        if self._warm is not None:
            self._warm.waiting += 1
        try:
            while True:
                recheck = FOREIGN_RECHECK_S if self._pool.foreign_locked else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(recheck):
                        return await asyncio.shield(waiter)
                self.wake()  # a slice another process held may be free now
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())
            waiter.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            if self._warm is not None:
                self._warm.waiting -= 1
                if self._warm.waiting == 0:
                    self._warm.slice_freed()  # nobody waits: the keeper may arm again

    def wake(self) -> None:
        """Hand every slot there is now to the waiters, first come first served."""
        self._evicting = False
        while self._waiters:
            first, key = self._waiters[0]
            if first.done():  # cancelled meanwhile
                self._waiters.popleft()
                continue
            if self._pool.capacity == 0:
                self._waiters.popleft()
                first.set_exception(
                    NoFreeSliceError(f"no cgroup slice in service in {self._pool.parent}")
                )
                continue
            slot = self._try(key)
            if slot is None:
                return
            self._waiters.popleft()
            first.set_result(slot)

    def _try(self, key: bytes | None) -> Slot | None:
        warm = self._warm
        if warm is not None and warm.active:
            worker = warm.take(key)
            if worker is not None:
                return worker, None
        try:
            return None, self._pool.reserve()
        except NoFreeSliceError:
            pass
        if warm is not None and not self._evicting:
            # Only processes pre-loaded with other codes hold the slices: free one (its
            # release wakes the queue again).
            self._evicting = warm.evict_preloaded(key)
        return None

    def _give_back(self, slot: Slot) -> None:
        worker, slice_ = slot
        if worker is not None:
            assert self._warm is not None
            self._warm.give_back(worker)
        elif slice_ is not None:
            self._pool.unreserve(slice_)
        self.wake()
