"""Child exits through pidfds: right exit statuses, and no thread per child (asyncio's default)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from executor.sandbox.workerd import PidfdExitWatcher, use_pidfd_exit_watcher


@pytest.fixture(autouse=True)
def pidfds() -> None:
    use_pidfd_exit_watcher()
    if not isinstance(asyncio.get_child_watcher(), PidfdExitWatcher):
        pytest.skip("this kernel has no pidfds: asyncio's default watcher is kept")


async def test_exit_statuses_come_through() -> None:
    codes = [0, 3, 255]
    procs = [await asyncio.create_subprocess_exec("sh", "-c", f"exit {c}") for c in codes]
    assert [await p.wait() for p in procs] == codes
    killed = await asyncio.create_subprocess_exec("sleep", "30")
    killed.kill()
    assert await killed.wait() == -9


async def test_no_thread_per_child() -> None:
    before = threading.active_count()
    procs = [await asyncio.create_subprocess_exec("sleep", "0.3") for _ in range(8)]
    assert threading.active_count() == before  # the default would hold 8 more threads now
    assert await asyncio.gather(*(p.wait() for p in procs)) == [0] * 8


async def test_children_of_another_loop_are_watched_too() -> None:
    def in_a_thread() -> int:
        async def run() -> int:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
            return await proc.wait()

        return asyncio.run(run())

    assert await asyncio.to_thread(in_a_thread) == 7
