"""The log stream on a real anvil: reorgs (which anvil does not announce in the logs
subscription), ``removed: true`` logs, websocket endpoint failover and chain timestamps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager

from executor.chain.follow.events import (
    JOB_EVENTS,
    JobCreated,
    LogRemoved,
    NewHead,
    StreamItem,
)
from executor.chain.follow.listener import LogStream
from executor.chain.rpc import RpcEndpoints
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import AnvilNode
from oyster_devnet.contracts import Devnet
from oyster_devnet.tools import free_port
from tests.chain_helpers import Rpc
from tests.polling import wait_until
from tests.relay import running_relay
from tests.ws_proxy import running_ws_proxy

USER = DEV_ACCOUNTS[3]
NOBODY = "0x" + "12" * 20


def job_stream(devnet: Devnet, ws_urls: list[str], from_block: int) -> LogStream:
    return LogStream(
        ws_urls=lambda: ws_urls,
        w3=devnet.w3,
        addresses=[devnet.jobs_address],
        topics=[["0x" + e.topic0().hex() for e in JOB_EVENTS]],
        from_block=from_block,
        name="test",
    )


class Collector:
    """Runs a stream in the background and keeps what it yields (heads apart)."""

    def __init__(self, events: AsyncGenerator[StreamItem, None]) -> None:
        self.items: list[StreamItem] = []
        self.heads: list[NewHead] = []
        self._events = events
        self._changed = asyncio.Event()

    async def run(self) -> None:
        async with aclosing(self._events) as stream:
            async for item in stream:
                if isinstance(item, NewHead):
                    self.heads.append(item)
                else:
                    self.items.append(item)
                self._changed.set()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[StreamItem]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


@asynccontextmanager
async def collecting(stream: LogStream) -> AsyncIterator[Collector]:
    collector = Collector(stream.events())
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def reorg(devnet: Devnet, depth: int) -> None:
    """Replace the last ``depth`` blocks with empty ones; their transactions are gone."""
    await Rpc(devnet.w3)("anvil_reorg", depth, [])
    devnet.sender.forget_nonces()


async def subscribed(stream: LogStream) -> None:
    """Until the stream has subscribed (jobs created before would be backfilled, not pushed)."""
    await wait_until(lambda: stream.health.connections >= 1, timeout=10, what="the subscription")


async def new_job(devnet: Devnet, codehash: str, inputs: bytes) -> int:
    return await devnet.create_job(
        USER, codehash=codehash, code_inputs=inputs, deadline_ms=5000, executors=[NOBODY]
    )


async def test_a_reorged_job_is_retracted_and_its_replacement_yielded(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, "x")
    stream = job_stream(devnet, [anvil.ws_url], await devnet.w3.eth.block_number + 1)
    async with collecting(stream) as seen:
        await subscribed(stream)
        first = await new_job(devnet, codehash, b"old content")
        (old,) = await seen.wait_for(1)
        assert isinstance(old, JobCreated) and old.code_inputs == b"old content"
        chain_block = await devnet.w3.eth.get_block(old.position.block_number)
        assert old.position.block_timestamp == chain_block["timestamp"]

        # The job's block is replaced by an empty one: anvil announces only the new head.
        await reorg(devnet, 1)
        removed = (await seen.wait_for(2))[1]
        assert removed == LogRemoved(old)

        # The job counter went back with the chain: the same id names new content.
        second = await new_job(devnet, codehash, b"new content")
        assert second == first
        replacement = (await seen.wait_for(3))[2]
        assert isinstance(replacement, JobCreated)
        assert replacement.job_id == first and replacement.code_inputs == b"new content"
        assert replacement.position.block_hash != old.position.block_hash
    assert stream.health.reorgs == 1 and stream.health.removed_logs == 1


async def test_a_deeper_reorg_while_disconnected_is_found_on_reconnect(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, "x")
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        stream = job_stream(devnet, [proxy.url], await devnet.w3.eth.block_number + 1)
        async with collecting(stream) as seen:
            await subscribed(stream)
            kept = await new_job(devnet, codehash, b"kept")
            lost = [await new_job(devnet, codehash, f"lost {i}".encode()) for i in range(2)]
            await seen.wait_for(3)
            proxy.down = True
            await proxy.drop_all()
            await reorg(devnet, 2)
            proxy.down = False
            items = await seen.wait_for(5)
    retracted = [i.event for i in items[3:] if isinstance(i, LogRemoved)]
    assert [e.job_id for e in retracted if isinstance(e, JobCreated)] == lost[::-1]
    assert all(isinstance(i, JobCreated) for i in items[:3])
    assert kept not in [e.job_id for e in retracted if isinstance(e, JobCreated)]


async def test_a_removed_log_sent_by_the_node_is_honoured(anvil: AnvilNode, devnet: Devnet) -> None:
    codehash = await devnet.save_code(USER, "x")
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        stream = job_stream(devnet, [proxy.url], await devnet.w3.eth.block_number + 1)
        async with collecting(stream) as seen:
            await subscribed(stream)
            await new_job(devnet, codehash, b"x")
            (job,) = await seen.wait_for(1)
            assert isinstance(job, JobCreated)
            (log,) = await devnet.w3.eth.get_logs(
                {"address": devnet.jobs_address, "fromBlock": job.position.block_number}
            )
            raw = json.loads(devnet.w3.to_json(log))  # type: ignore[arg-type]
            raw["removed"] = True
            raw["blockNumber"] = hex(raw["blockNumber"])
            raw["logIndex"] = hex(raw["logIndex"])
            await proxy.inject_log(raw)
            (_, removed) = await seen.wait_for(2)
    assert removed == LogRemoved(job)


async def test_a_dead_websocket_endpoint_fails_over_to_the_next(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, "x")
    dead = f"ws://127.0.0.1:{free_port()}/"
    stream = job_stream(devnet, [dead, anvil.ws_url], await devnet.w3.eth.block_number + 1)
    async with collecting(stream) as seen:
        job_id = await new_job(devnet, codehash, b"x")
        (job,) = await seen.wait_for(1)
    assert isinstance(job, JobCreated) and job.job_id == job_id
    assert stream.health.failures >= 1 and stream.health.connections >= 1
    assert stream.health.endpoint == anvil.ws_url
    assert stream.health.last_error and "127.0.0.1" in stream.health.last_error


async def test_without_new_heads_a_reorg_is_found_from_the_next_log(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, "x")
    async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
        proxy.refuse_heads = True
        stream = job_stream(devnet, [proxy.url], await devnet.w3.eth.block_number + 1)
        async with collecting(stream) as seen:
            await subscribed(stream)
            first = await new_job(devnet, codehash, b"old")
            (old,) = await seen.wait_for(1)
            await reorg(devnet, 1)
            assert await new_job(devnet, codehash, b"new") == first
            items = await seen.wait_for(3)
    assert proxy.head_subscriptions == []
    assert items[1] == LogRemoved(old)
    replacement = items[2]
    assert isinstance(replacement, JobCreated) and replacement.code_inputs == b"new"


async def test_block_timestamps_are_fetched_when_the_node_omits_them(
    anvil: AnvilNode, devnet: Devnet
) -> None:
    codehash = await devnet.save_code(USER, "x")
    backfilled = await new_job(devnet, codehash, b"before")
    async with (
        running_ws_proxy(anvil.ws_url, keys={""}) as ws,
        running_relay(anvil.http_url) as http,
    ):
        ws.strip_block_timestamps = http.strip_block_timestamps = True
        rpc = RpcEndpoints([http.url])
        try:
            stream = LogStream(
                ws_urls=lambda: [ws.url],
                w3=rpc.w3,
                addresses=[devnet.jobs_address],
                topics=[["0x" + e.topic0().hex() for e in JOB_EVENTS]],
                from_block=await devnet.w3.eth.block_number,
            )
            async with collecting(stream) as seen:
                await seen.wait_for(1)
                streamed = await new_job(devnet, codehash, b"after")
                items = await seen.wait_for(2)
        finally:
            await rpc.close()
    # Heads and fork checks may already have taught the stream a block's timestamp; what is left
    # is read at most once per block.
    assert http.requests["eth_getBlockByHash"] <= 2
    for item, job_id in zip(items, [backfilled, streamed], strict=True):
        assert isinstance(item, JobCreated) and item.job_id == job_id
        block = await devnet.w3.eth.get_block(item.position.block_number)
        assert item.position.block_timestamp == block["timestamp"]
