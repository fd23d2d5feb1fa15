"""A log subscription that survives websocket drops, endpoint outages and reorgs.

``LogStream.events()`` yields, in chain order, starting at ``from_block``:

* decoded ``ChainEvent``s, each once, keyed by (block hash, tx hash, log index), so that a log of a
  reorged block that comes back in another block is a new log, and a job id can come back with
  new content;
* ``LogRemoved(event)`` for every event yielded earlier whose block left the canonical chain;
* ``NewHead`` for every head, the chain's clock.

One connection: connect a websocket endpoint, subscribe to the logs filter and to ``newHeads``,
check the blocks of yielded logs against the canonical chain (a reorg may have happened while away),
backfill from the cursor to the head over HTTP (``eth_getLogs``), then stream notifications.

Reorgs are detected from block hashes, because nodes do not always announce them (anvil's
``anvil_reorg`` sends no ``removed: true`` log, only the new head): a head whose hash differs from
the one known for its number, or whose parent hash differs from the known parent, or a log whose
block hash differs from the known one, starts a reconciliation: known hashes are compared with
the canonical ones from the newest down to the fork point, every yielded event above it is
retracted, and the new canonical blocks are backfilled. A ``removed: true`` log is honoured too.
A node that refuses ``newHeads``: the header of each new log's block is read, and a parent hash
that contradicts the known block below starts the same reconciliation (as does every reconnect).
Everything per block is kept only for ``reorg_window`` blocks below the head.

Websocket endpoints are tried in order; one that fails moves the stream to the next. The URLs are
read through a callable at every connection, so a rotated API key takes effect at the next
reconnect (``reconnect()`` forces one). ``health`` counts failures (an error budget) for the
admin API: a stream that keeps failing is reported, and logged at error level, not looped on
silently.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from typing import Any

import aiohttp
from eth_typing import HexStr
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import BlockNotFound, Web3Exception

from executor import redact
from executor.chain.follow.events import (
    ChainEvent,
    EventDecodeError,
    LogPosition,
    NewHead,
    StreamItem,
    decode_log,
)
from executor.chain.follow.window import ChainWindow
from executor.chain.follow.wsmessages import parse_head, parse_log, parse_notification
from executor.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)

BACKFILL_CHUNK_BLOCKS = 2000
REORG_WINDOW_BLOCKS = 128
"""Blocks below the head within which reorgs are followed (older blocks are taken as final)."""
FAILURE_BUDGET = 10
"""Consecutive failed connections after which the stream reports itself unhealthy."""
_TIMESTAMP_CACHE = 512
_MAX_BACKOFF_S = 10.0
_MAX_ERROR_TEXT = 200


class _Reconnect(Exception):
    """Internal: the connection is to be dropped and re-established."""


class _Refused(aiohttp.ClientConnectionError):
    """Internal: the node refused a subscription."""


@dataclass
class StreamHealth:
    """What the admin API and the metrics report about the stream."""

    connected: bool = False
    endpoint: str = ""
    connections: int = 0
    consecutive_failures: int = 0
    failures: int = 0
    reorgs: int = 0
    removed_logs: int = 0
    last_block: int | None = None
    last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures < FAILURE_BUDGET

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


class LogStream:
    def __init__(
        self,
        *,
        ws_urls: Callable[[], Sequence[str]],
        w3: AsyncWeb3,
        addresses: Sequence[str],
        topics: Sequence[Any],
        from_block: int,
        name: str = "logs",
        reorg_window: int = REORG_WINDOW_BLOCKS,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._ws_urls = ws_urls
        self._w3 = w3
        self._filter: dict[str, Any] = {"address": list(addresses), "topics": list(topics)}
        self._cursor = from_block
        self._name = name
        self._ids = itertools.count(1)
        self._reconnect = asyncio.Event()
        self._endpoint = 0
        self._current_url = ""
        self._window = ChainWindow(reorg_window, head=from_block - 1)
        self._timestamps: OrderedDict[str, int] = OrderedDict()
        self._with_heads = True
        self.health = StreamHealth()

    def reconnect(self) -> None:
        """Drop the current connection and reconnect (e.g. after the ws API key rotated)."""
        self._reconnect.set()

    def tracked(self) -> dict[str, int]:
        """Sizes of the per-block and per-log bookkeeping (they stay bounded)."""
        return {**self._window.tracked(), "timestamps": len(self._timestamps)}

    # --- connections -----------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[StreamItem, None]:
        backoff = 0.25
        async with aiohttp.ClientSession() as session:
            while True:
                urls = self._ws_urls()
                self._current_url = urls[self._endpoint % len(urls)]
                try:
                    async with aclosing(self._connection(session)) as connection:
                        async for item in connection:
                            backoff = 0.25
                            yield item
                except _Reconnect:
                    self._reconnect.clear()
                    self.health.connected = False
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError, Web3Exception) as e:
                    self._failed(e, backoff, len(urls))
                except Exception as e:
                    # Whatever the RPC sent, the stream must not die: jobs would go unanswered.
                    logger.exception("%s: unexpected error", self._name)
                    self._failed(e, backoff, len(urls))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _failed(self, e: BaseException, backoff: float, endpoints: int) -> None:
        self._metrics.ws_reconnect()
        health = self.health
        health.connected = False
        health.failures += 1
        health.consecutive_failures += 1
        health.last_error = _describe(e, self._current_url)[:_MAX_ERROR_TEXT]
        if endpoints > 1:
            self._endpoint = (self._endpoint + 1) % endpoints
        log = logger.warning if health.healthy else logger.error
        log(
            "%s: connection to %s lost or failed (%s); %d consecutive failure(s); "
            "reconnecting to endpoint %d/%d in %.2fs from block %d",
            self._name,
            redact.url(self._current_url),
            health.last_error,
            health.consecutive_failures,
            self._endpoint % endpoints + 1,
            endpoints,
            backoff,
            self._cursor,
        )

    async def _connection(self, session: aiohttp.ClientSession) -> AsyncGenerator[StreamItem, None]:
        async with session.ws_connect(
            self._current_url, heartbeat=20.0, max_msg_size=16 * 1024 * 1024
        ) as ws:
            logs_sub = await self._subscribe(ws, ["logs", self._filter])
            heads_sub = await self._subscribe_heads(ws)
            self._with_heads = heads_sub is not None
            self.health.connections += 1
            self.health.endpoint = redact.url(self._current_url)
            logger.info(
                "%s: subscribed on %s (from block %d)",
                self._name,
                self.health.endpoint,
                self._cursor,
            )
            for item in await self._catch_up():
                yield item
            self.health.connected = True
            self.health.consecutive_failures = 0
            reconnect_wait = asyncio.ensure_future(self._reconnect.wait())
            try:
                while True:
                    receive = asyncio.ensure_future(ws.receive())
                    done, _ = await asyncio.wait(
                        {receive, reconnect_wait}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reconnect_wait in done:
                        receive.cancel()
                        raise _Reconnect()
                    msg = receive.result()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise aiohttp.ClientConnectionError(f"websocket closed ({msg.type.name})")
                    sub, result = parse_notification(msg.data)
                    if sub is None:
                        continue
                    if sub == logs_sub:
                        items = await self._on_log(result)
                    elif heads_sub is not None and sub == heads_sub:
                        items = await self._on_head(result)
                    else:
                        logger.warning("%s: ignoring a foreign subscription message", self._name)
                        continue
                    for item in items:
                        yield item
            finally:
                reconnect_wait.cancel()

    async def _subscribe_heads(self, ws: aiohttp.ClientWebSocketResponse) -> str | None:
        """``newHeads``, if the node offers it: without it, reorgs are still found from the
        block hashes of logs and at every reconnect, and the clock from the logs' blocks."""
        try:
            return await self._subscribe(ws, ["newHeads"])
        except _Refused as e:
            logger.warning("%s: %s; following without heads", self._name, e)
            return None

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse, params: list[Any]) -> str:
        request_id = next(self._ids)
        await ws.send_str(
            json.dumps(
                {"jsonrpc": "2.0", "id": request_id, "method": "eth_subscribe", "params": params}
            )
        )
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise aiohttp.ClientConnectionError(f"websocket closed ({msg.type.name})")
                try:
                    reply = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if not isinstance(reply, dict) or reply.get("id") != request_id:
                    continue  # a notification of an earlier subscription: backfill covers it
                if "error" in reply:
                    raise _Refused(f"eth_subscribe {params[0]} refused: {reply['error']}")
                return str(reply["result"])

    # --- chain following -------------------------------------------------------------------------

    async def _catch_up(self) -> list[StreamItem]:
        """After (re)connecting: retract what a reorg removed meanwhile, then backfill."""
        items = await self._reconcile()
        block = await self._w3.eth.get_block("latest")
        head = parse_head(dict(block))
        if head is None:
            raise Web3Exception("the latest block has no number or hash")
        # The head first: backfilled jobs are then judged against the chain's current clock.
        items.append(self._note_head(head))
        items += await self._backfill(head.number)
        return items

    async def _on_head(self, raw: Any) -> list[StreamItem]:
        head = parse_head(raw) if isinstance(raw, dict) else None
        if head is None:
            logger.warning("%s: ignoring a malformed newHeads notification", self._name)
            return []
        parent = raw.get("parentHash")
        items: list[StreamItem] = []
        if self._window.contradicts(head.number, head.block_hash) or self._window.contradicts(
            head.number - 1, parent.lower() if isinstance(parent, str) else None
        ):
            items += await self._reconcile()
            items += await self._backfill(head.number)
        items.append(self._note_head(head))
        return items

    async def _on_log(self, raw: Any) -> list[StreamItem]:
        log = parse_log(raw)
        if log is None:
            return []
        if log.get("removed"):
            return self._removed_log(log)
        event = self._decode(log)
        if event is None:
            return []
        pos = event.position
        if self._window.contradicts(pos.block_number, pos.block_hash) or (
            not self._with_heads and await self._new_block_forks(pos)
        ):
            # The log's block is not the one we know at that height (or does not descend from
            # the one we know below it): find out which is canonical.
            items = await self._reconcile()
            items += await self._backfill(max(self._window.head, pos.block_number))
            return items
        accepted = await self._accept(event)
        return [accepted] if accepted is not None else []

    async def _new_block_forks(self, pos: LogPosition) -> bool:
        """Without newHeads: whether a log's (new) block does not descend from the known one
        below it. Its header is read once per block; the timestamp is kept."""
        if not pos.block_hash or self._window.known_hash(pos.block_number) is not None:
            return False
        try:
            block = await self._w3.eth.get_block(HexStr(pos.block_hash))
        except BlockNotFound:
            return False  # gone already: the log is dropped when its timestamp is looked up
        self._remember_timestamp(pos.block_hash, int(block["timestamp"]))
        parent = block.get("parentHash")
        parent_hash = "0x" + bytes(HexBytes(parent)).hex() if parent is not None else None
        return self._window.contradicts(pos.block_number - 1, parent_hash)

    def _note_head(self, head: NewHead) -> NewHead:
        self._window.note_head(head.number, head.block_hash)
        self._remember_timestamp(head.block_hash, head.timestamp)
        self.health.last_block = self._window.head
        self._metrics.last_block(head.number)
        return head

    async def _reconcile(self) -> list[StreamItem]:
        """Retract every event yielded above the fork point with the canonical chain, and move
        the cursor back to re-read those blocks."""
        reorg = await self._window.reconcile(self._canonical_hash)
        if reorg is None:
            return []
        if reorg.deeper_than_window:
            logger.error(
                "%s: reorg deeper than the %d-block window; re-reading from block %d",
                self._name,
                self._window.size,
                reorg.fork + 1,
            )
        self.health.reorgs += 1
        self.health.removed_logs += len(reorg.removed)
        logger.warning(
            "%s: reorg above block %d: %d log(s) retracted; re-reading from block %d",
            self._name,
            reorg.fork,
            len(reorg.removed),
            reorg.fork + 1,
        )
        self._cursor = min(self._cursor, reorg.fork + 1)
        return list(reorg.removed)

    async def _canonical_hash(self, number: int) -> str | None:
        try:
            block = await self._w3.eth.get_block(number)
        except BlockNotFound:
            return None
        value = block.get("hash")
        return "0x" + bytes(HexBytes(value)).hex() if value is not None else None

    def _removed_log(self, log: dict[str, Any]) -> list[StreamItem]:
        event = self._decode(log)
        removed = self._window.retract(event) if event is not None else None
        if removed is None:
            return []
        self.health.removed_logs += 1
        logger.warning(
            "%s: the node retracted a log (tx %s, block %d)",
            self._name,
            removed.event.position.tx_hash,
            removed.event.position.block_number,
        )
        return [removed]

    async def _backfill(self, head: int) -> list[StreamItem]:
        items: list[StreamItem] = []
        start = self._cursor
        while start <= head:
            end = min(start + BACKFILL_CHUNK_BLOCKS - 1, head)
            logs = await self._w3.eth.get_logs(
                {**self._filter, "fromBlock": start, "toBlock": end}  # type: ignore[typeddict-item]
            )
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                if log.get("removed"):
                    continue
                event = self._decode(dict(log))
                if event is None:
                    continue
                if self._window.contradicts(event.position.block_number, event.position.block_hash):
                    # The chain reorged under us: reconnecting reconciles before reading on.
                    raise _Reconnect()
                accepted = await self._accept(event)
                if accepted is not None:
                    items.append(accepted)
            start = end + 1
        # Logs of the head block may still arrive via the subscription: keep it re-readable.
        self._cursor = max(self._cursor, head)
        self._metrics.last_block(self._cursor)
        return items

    def _decode(self, log: dict[str, Any]) -> ChainEvent | None:
        try:
            return decode_log(log)
        except EventDecodeError as e:
            logger.warning("%s: skipping malformed log: %s", self._name, e)
            return None

    async def _accept(self, event: ChainEvent) -> ChainEvent | None:
        pos = event.position
        if self._window.seen(event):
            return None
        if pos.block_timestamp is None:
            timestamp = await self._timestamp(pos)
            if timestamp is None:
                logger.warning(
                    "%s: dropping a log of block %s, which the node does not know (tx %s)",
                    self._name,
                    pos.block_hash or pos.block_number,
                    pos.tx_hash,
                )
                return None
            event = replace(event, position=replace(pos, block_timestamp=timestamp))
        self._window.add(event)
        if pos.block_number > self._cursor:
            self._cursor = pos.block_number
            self._metrics.last_block(self._cursor)
        return event

    async def _timestamp(self, pos: LogPosition) -> int | None:
        cached = self._timestamps.get(pos.block_hash)
        if cached is not None:
            return cached
        try:
            block = await self._w3.eth.get_block(
                HexStr(pos.block_hash) if pos.block_hash else pos.block_number
            )
        except BlockNotFound:
            return None
        timestamp = int(block["timestamp"])
        self._remember_timestamp(pos.block_hash, timestamp)
        return timestamp

    def _remember_timestamp(self, block_hash: str, timestamp: int) -> None:
        if not block_hash:
            return
        self._timestamps[block_hash] = timestamp
        self._timestamps.move_to_end(block_hash)
        while len(self._timestamps) > _TIMESTAMP_CACHE:
            self._timestamps.popitem(last=False)


def _describe(e: BaseException, url: str) -> str:
    return redact.in_text(str(e) or type(e).__name__, url)
