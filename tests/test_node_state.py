"""The follower's bookkeeping without a chain: chain-time timeouts, reorg retractions, and bounds
on everything kept per job or per log (many thousands of synthetic jobs pushed through)."""

from __future__ import annotations

import asyncio

from eth_abi import encode

from executor.chain.clock import ChainClock
from executor.chain.follow.events import JobCreated, JobResponded, LogPosition, LogRemoved, NewHead
from executor.chain.follow.listener import REORG_WINDOW_BLOCKS, LogStream
from executor.node import (
    JOB_HORIZON_BLOCKS,
    MAX_TRACKED_JOBS,
    ChainFollower,
    NodeStatus,
)
from executor.tasks import TaskSet
from executor.timeouts import MAX_TIMERS, TimeoutWatch

ME = "0x" + "AB" * 20
JOBS = "0x" + "CD" * 20
OTHER = "0x1111111111111111111111111111111111111111"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def position(block: int, index: int = 0, *, ts: int = 1_700_000_000, tag: str = "a") -> LogPosition:
    return LogPosition(
        address=JOBS,
        block_number=block,
        log_index=index,
        tx_hash="0x" + f"{tag}{block:08x}{index:04x}".ljust(64, "0"),
        block_hash="0x" + f"{tag}{block:08x}".ljust(64, "0"),
        block_timestamp=ts,
    )


def job(
    job_id: int,
    block: int,
    *,
    selected: tuple[str, ...] = (ME,),
    inputs: bytes = b"x",
    tag: str = "a",
    ts: int = 1_700_000_000,
) -> JobCreated:
    return JobCreated(
        position(block, tag=tag, ts=ts),
        job_id=job_id,
        env=1,
        job_owner=OTHER,
        secret_id=0,
        codehash="0x" + "00" * 32,
        code_inputs=inputs,
        deadline_ms=1000,
        selected_executors=selected,
    )


def responded(job_id: int, block: int, count: int = 1) -> JobResponded:
    return JobResponded(position(block, 1), job_id, ME, b"out", 5, 0, count)


class Harness:
    def __init__(self, *, run_forever: bool = False) -> None:
        self.ran: list[JobCreated] = []
        self.cancelled: list[JobCreated] = []
        self.slashed: list[int] = []
        self.run_forever = run_forever
        self.executions = TaskSet("jobs")
        self.timers = TaskSet("timers")
        self.clock = ChainClock(monotonic=FakeMonotonic())

        async def slash(job_id: int) -> bool:
            self.slashed.append(job_id)
            return True

        self.watch = TimeoutWatch(
            slash=slash,
            execution_buffer_time_s=2,
            num_selected_executors=1,
            tasks=self.timers,
            clock=self.clock,
        )
        self.follower = ChainFollower(
            enclave_address=ME,
            owner=lambda: OTHER,
            tee_manager="0x" + "EE" * 20,
            jobs_contract=JOBS,
            run_job=self.run_job,
            watch=self.watch,
            tasks=self.executions,
        )
        self.follower.status = NodeStatus.ACTIVE

    async def run_job(self, created: JobCreated) -> None:
        self.ran.append(created)
        if self.run_forever:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(created)
                raise

    async def close(self) -> None:
        await self.executions.cancel_all()
        await self.timers.cancel_all()


def test_chain_clock_follows_heads_and_the_monotonic_clock_between_them() -> None:
    mono = FakeMonotonic()
    clock = ChainClock(monotonic=mono, wall=lambda: 42.0)
    assert clock.now_ms() == 42_000  # no block seen yet: the host's wall clock
    clock.observe(100)
    mono.now += 2.5
    assert clock.now_ms() == 102_500
    clock.observe(101)  # older than what the monotonic clock says: ignored
    assert clock.now_ms() == 102_500
    clock.observe(200)  # the chain jumped ahead (evm_increaseTime): believed
    assert clock.now_ms() == 200_000


async def test_timeouts_are_due_by_chain_time_not_by_when_the_job_was_seen() -> None:
    h = Harness()
    h.clock.observe(10_000)
    # deadline 1000 ms + buffer 2 s + 1 s: due 4 s after the job's block.
    assert h.watch.due_in_s(1000, 10_000) == 4.0
    assert h.watch.due_in_s(1000, 9_998) == 2.0
    assert h.watch.due_in_s(1000, 9_000) == 0.0  # backfilled after an outage: due at once
    assert h.watch.due_in_s(1000, None) == 4.0  # no block time known: counted from now
    h.follower.handle(job(7, 1, selected=(OTHER,), ts=9_000))
    await asyncio.sleep(0.05)
    assert h.slashed == [7] and list(h.watch.slashed) == [7]
    await h.close()


async def test_a_job_whose_window_closed_before_it_was_seen_is_not_executed() -> None:
    h = Harness()
    h.follower.handle(NewHead(50, "0x" + "99" * 32, 10_000))
    h.follower.handle(job(1, 40, ts=9_000))
    h.follower.handle(job(2, 49, ts=9_999))
    await asyncio.sleep(0)
    assert [j.job_id for j in h.ran] == [2]
    await h.close()


async def test_a_reorged_job_is_cancelled_and_its_replacement_runs_on_its_own_content() -> None:
    h = Harness(run_forever=True)
    old = job(5, 10, inputs=b"old", tag="a")
    h.follower.handle(old)
    await asyncio.sleep(0)
    assert h.ran == [old] and h.watch.running == {5}
    h.follower.handle(LogRemoved(old))
    await asyncio.sleep(0)
    assert h.cancelled == [old] and h.watch.running == frozenset()
    new = job(5, 10, inputs=b"new", tag="b")
    h.follower.handle(new)
    await asyncio.sleep(0)
    assert h.ran == [old, new] and h.watch.running == {5}
    # The same log again (a reconnect's backfill) is not a new job.
    h.follower.handle(new)
    await asyncio.sleep(0)
    assert h.ran == [old, new]
    await h.close()


async def test_jobs_answered_before_a_restart_are_not_executed_again() -> None:
    h = Harness()
    h.follower.resume(NodeStatus.ACTIVE, answered={3})
    h.follower.handle(job(3, 1))
    h.follower.handle(job(4, 2))
    await asyncio.sleep(0)
    assert [j.job_id for j in h.ran] == [4]
    await h.close()


async def test_the_follower_bookkeeping_stays_bounded() -> None:
    h = Harness()
    total = 20_000
    for i in range(1, total + 1):
        h.follower.handle(NewHead(i, "0x" + f"{i:064x}", 1_700_000_000 + i))
        h.follower.handle(job(i, i, selected=(ME,) if i % 2 else (OTHER,), ts=1_700_000_000 + i))
        if i % 10:
            h.follower.handle(responded(i, i))
        if i % 1000 == 0:
            await asyncio.sleep(0)  # let executions finish as they would
    await asyncio.sleep(0.01)
    sizes = h.follower.tracked()
    print(f"after {total} jobs: follower {sizes}, executions={len(h.executions)}")
    assert sizes["jobs"] <= min(MAX_TRACKED_JOBS, JOB_HORIZON_BLOCKS + 1)
    assert sizes["current"] <= sizes["jobs"]
    assert len(h.ran) == total // 2
    # Unanswered jobs (1 in 10) wait for their timeout; the rest left the running set.
    assert sizes["timers"] <= total // 10
    assert len(h.watch.slashed) <= h.watch.slashed.maxlen  # type: ignore[operator]
    await h.close()


def raw_log(block: int, index: int, tag: str = "a") -> dict[str, object]:
    created = job(block, block, tag=tag)
    pos = created.position
    topics = [
        JobCreated.topic0(),
        encode(["uint256"], [block]),
        encode(["uint8"], [1]),
        encode(["address"], [OTHER]),
    ]
    data = encode(list(JobCreated.DATA), [0, b"\x00" * 32, b"x", 1000, [ME]])
    return {
        "address": JOBS,
        "blockNumber": hex(block),
        "logIndex": hex(index),
        "transactionHash": pos.tx_hash,
        "blockHash": pos.block_hash,
        "blockTimestamp": hex(1_700_000_000 + block),
        "topics": ["0x" + t.hex() for t in topics],
        "data": "0x" + data.hex(),
    }


async def test_the_listener_bookkeeping_stays_bounded() -> None:
    # No RPC is needed: every log carries its block timestamp and no reorg is reported.
    stream = LogStream(
        ws_urls=lambda: ["ws://unused/"],
        w3=None,  # type: ignore[arg-type]
        addresses=[JOBS],
        topics=[],
        from_block=1,
    )
    total = 2_000
    yielded = 0
    for block in range(1, total + 1):
        head = {
            "number": hex(block),
            "hash": position(block).block_hash,
            "parentHash": position(block - 1).block_hash,
            "timestamp": hex(block),
        }
        await stream._on_head(head)
        for index in range(2):
            yielded += len(await stream._on_log(raw_log(block, index)))
        # A duplicate (a reconnect's overlap) is not yielded twice.
        yielded += len(await stream._on_log(raw_log(block, 0)))
    sizes = stream.tracked()
    print(f"after {2 * total} logs: listener {sizes}")
    assert yielded == 2 * total
    assert sizes["hashes"] <= REORG_WINDOW_BLOCKS + 1
    assert sizes["yielded_blocks"] <= REORG_WINDOW_BLOCKS + 1
    assert sizes["seen"] <= 2 * (REORG_WINDOW_BLOCKS + 1) + 64
    assert sizes["timestamps"] <= 512


async def test_a_reorged_response_puts_the_job_back_in_the_running_set() -> None:
    h = Harness()
    created = job(9, 10, selected=(OTHER,))
    h.follower.handle(created)
    answer = responded(9, 11)
    h.follower.handle(answer)
    assert h.watch.running == frozenset()
    h.follower.handle(LogRemoved(answer))
    assert h.watch.running == {9}
    h.follower.handle(responded(9, 12))  # mined again
    assert h.watch.running == frozenset()
    await h.close()


async def test_the_timeout_watch_itself_is_bounded() -> None:
    h = Harness()
    h.clock.observe(10_000)
    h.watch.start(1, 10**30, 10_000)  # a deadline of 10^30 ms: never watched
    assert h.watch.running == frozenset()
    for job_id in range(2, MAX_TIMERS + 10):
        h.watch.start(job_id, 60_000, 10_000)
    assert len(h.watch.running) == MAX_TIMERS
    await h.close()
