"""The admission queue on real cgroup slices: first come first served, woken by the release itself
(no timer), bounded by each job's deadline, and a slot handed to a job cancelled at that moment is
given back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.errors import NoFreeSliceError
from executor.sandbox.admission import Admission
from executor.sandbox.cgroups import SlicePool
from tests.sandbox_helpers import slice_parent


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=2) as path:
        yield path


async def _settle() -> None:
    for _ in range(5):  # let the woken tasks run (a few loop iterations, no timer)
        await asyncio.sleep(0)


async def test_waiters_are_served_in_arrival_order_by_the_release_itself(parent: Path) -> None:
    pool = SlicePool.discover(parent)
    admission = Admission(pool, None)
    held = [(await admission.take())[1] for _ in range(2)]
    assert all(s is not None for s in held)
    waiters = [asyncio.ensure_future(admission.take()) for _ in range(3)]
    await _settle()
    assert admission.waiting == 3 and not any(w.done() for w in waiters)
    first = held[0]
    assert first is not None
    await pool.release(first)
    assert admission.waiting == 2  # handed over inside the release, before any timer could fire
    await _settle()
    assert [w.done() for w in waiters] == [True, False, False]
    assert waiters[0].result() == (None, first)
    for slice_ in (held[1], first):
        assert slice_ is not None
        await pool.release(slice_)
    await _settle()
    assert all(w.done() for w in waiters)
    for waiter in waiters[1:]:
        _, slice_ = waiter.result()
        assert slice_ is not None
        await pool.release(slice_)
    assert pool.free_count == 2 and admission.waiting == 0


async def test_a_waiter_leaves_the_queue_at_its_deadline(parent: Path) -> None:
    pool = SlicePool.discover(parent)
    admission = Admission(pool, None)
    held = [(await admission.take())[1] for _ in range(2)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await admission.take()
    assert admission.waiting == 0
    for slice_ in held:
        assert slice_ is not None
        await pool.release(slice_)


async def test_a_slot_handed_to_a_cancelled_waiter_is_given_back(parent: Path) -> None:
    pool = SlicePool.discover(parent)
    admission = Admission(pool, None)
    held = [(await admission.take())[1] for _ in range(2)]
    waiter = asyncio.ensure_future(admission.take())
    await _settle()
    slice_ = held[0]
    assert slice_ is not None
    await pool.release(slice_)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.free_count == 1  # the slice came back
    assert held[1] is not None
    await pool.release(held[1])
    assert pool.free_count == 2


async def test_no_slice_in_service_fails_at_once(parent: Path) -> None:
    pool = SlicePool.discover(parent)
    for s in pool.slices:
        pool._take_out_of_service(s, "test")
    with pytest.raises(NoFreeSliceError):
        await Admission(pool, None).take()
