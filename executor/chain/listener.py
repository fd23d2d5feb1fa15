"""A log subscription that survives websocket drops: subscribe, backfill, dedupe, reconnect.

``LogStream.events()`` yields decoded ``ChainEvent``s in chain order, starting at ``from_block``:

1. connect the websocket and ``eth_subscribe`` to the logs filter (new logs are buffered by the
   socket from this moment on);
2. backfill from the cursor to the current head with ``eth_getLogs`` over HTTP;
3. stream the subscription's notifications.

A log is yielded once, keyed by (tx hash, log index), however many of the steps report it. When the
socket drops, the stream reconnects with back-off and backfills from the last block it saw, so a
drop loses nothing. The websocket URL is read through a callable at every connection so that a
rotated API key takes effect at the next reconnect (``reconnect()`` forces one).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import Any

import aiohttp
from web3 import AsyncWeb3
from web3.exceptions import Web3Exception

from executor.chain.events import ChainEvent, EventDecodeError, decode_log
from executor.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)

BACKFILL_CHUNK_BLOCKS = 2000
_DEDUPE_KEEP_BLOCKS = 256
_MAX_BACKOFF_S = 10.0


class _Reconnect(Exception):
    """Internal: the connection is to be dropped and re-established."""


class LogStream:
    def __init__(
        self,
        *,
        ws_url: Callable[[], str],
        w3: AsyncWeb3,
        addresses: Sequence[str],
        topics: Sequence[Any],
        from_block: int,
        name: str = "logs",
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._ws_url = ws_url
        self._w3 = w3
        self._filter: dict[str, Any] = {"address": list(addresses), "topics": list(topics)}
        self._cursor = from_block
        self._seen: dict[tuple[str, int], int] = {}
        self._name = name
        self._ids = itertools.count(1)
        self._reconnect = asyncio.Event()
        self._current_url = ""

    def reconnect(self) -> None:
        """Drop the current connection and reconnect (e.g. after the ws API key rotated)."""
        self._reconnect.set()

    async def events(self) -> AsyncGenerator[ChainEvent, None]:
        backoff = 0.25
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with aclosing(self._connection(session)) as connection:
                        async for event in connection:
                            backoff = 0.25
                            yield event
                except _Reconnect:
                    self._reconnect.clear()
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    logger.warning(
                        "%s: websocket lost (%s); reconnecting in %.2fs from block %d",
                        self._name,
                        _describe(e, self._current_url),
                        backoff,
                        self._cursor,
                    )
                except Web3Exception as e:
                    logger.warning(
                        "%s: backfill failed (%s); retrying in %.2fs", self._name, e, backoff
                    )
                except Exception:
                    # Whatever the RPC sent, the stream must not die: jobs would go unanswered.
                    logger.exception(
                        "%s: unexpected error; reconnecting in %.2fs", self._name, backoff
                    )
                self._metrics.ws_reconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _connection(self, session: aiohttp.ClientSession) -> AsyncGenerator[ChainEvent, None]:
        self._current_url = self._ws_url()
        async with session.ws_connect(
            self._current_url, heartbeat=20.0, max_msg_size=16 * 1024 * 1024
        ) as ws:
            sub_id = await self._subscribe(ws)
            logger.info("%s: subscribed (from block %d)", self._name, self._cursor)
            for event in await self._backfill():
                yield event
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
                    log = _notification_log(msg.data, sub_id)
                    if log is None:
                        continue
                    accepted = self._accept(log)
                    if accepted is not None:
                        yield accepted
            finally:
                reconnect_wait.cancel()

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        request_id = next(self._ids)
        await ws.send_str(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "method": "eth_subscribe",
                    "params": ["logs", self._filter],
                }
            )
        )
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise aiohttp.ClientConnectionError(f"websocket closed ({msg.type.name})")
                reply = json.loads(msg.data)
                if reply.get("id") != request_id:
                    continue
                if "error" in reply:
                    raise aiohttp.ClientConnectionError(f"eth_subscribe refused: {reply['error']}")
                return str(reply["result"])

    async def _backfill(self) -> list[ChainEvent]:
        head = await self._w3.eth.block_number
        events: list[ChainEvent] = []
        start = self._cursor
        while start <= head:
            end = min(start + BACKFILL_CHUNK_BLOCKS - 1, head)
            logs = await self._w3.eth.get_logs(
                {**self._filter, "fromBlock": start, "toBlock": end}  # type: ignore[typeddict-item]
            )
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                event = self._accept(dict(log))
                if event is not None:
                    events.append(event)
            start = end + 1
        if head + 1 > self._cursor:
            # Logs of the head block may still arrive via the subscription: keep it re-readable.
            self._cursor = max(self._cursor, head)
        self._metrics.last_block(self._cursor)
        return events

    def _accept(self, log: dict[str, Any]) -> ChainEvent | None:
        if log.get("removed"):
            logger.warning(
                "%s: ignoring removed (reorged) log in tx %s",
                self._name,
                log.get("transactionHash"),
            )
            return None
        try:
            event = decode_log(log)
        except EventDecodeError as e:
            logger.warning("%s: skipping malformed log: %s", self._name, e)
            return None
        if event is None:
            return None
        pos = event.position
        key = (pos.tx_hash, pos.log_index)
        if key in self._seen:
            return None
        self._seen[key] = pos.block_number
        if pos.block_number > self._cursor:
            self._cursor = pos.block_number
            self._metrics.last_block(self._cursor)
            self._prune()
        return event

    def _prune(self) -> None:
        if len(self._seen) < 4 * _DEDUPE_KEEP_BLOCKS:
            return
        horizon = self._cursor - _DEDUPE_KEEP_BLOCKS
        self._seen = {k: b for k, b in self._seen.items() if b >= horizon}


def _notification_log(raw: str, sub_id: str) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("websocket: ignoring a message that is not JSON")
        return None
    if not isinstance(msg, dict) or msg.get("method") != "eth_subscription":
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or params.get("subscription") != sub_id:
        logger.warning("websocket: ignoring a malformed or foreign subscription message")
        return None
    if not isinstance(params.get("result"), dict):
        logger.warning("websocket: ignoring a log notification that is not an object")
        return None
    result: dict[str, Any] = params["result"]
    try:
        for key in ("blockNumber", "logIndex"):
            if isinstance(result.get(key), str):
                result[key] = int(result[key], 16)
    except ValueError:
        logger.warning("websocket: ignoring a log notification with malformed numbers")
        return None
    return result


def redact_url(url: str) -> str:
    """The URL with its last path segment (where the ws API key lives) masked."""
    scheme, sep, rest = url.partition("://")
    if not sep or "/" not in rest:
        return url
    head, _, last = rest.rpartition("/")
    return f"{scheme}://{head}/***" if last else url


def _describe(e: BaseException, url: str) -> str:
    text = str(e) or type(e).__name__
    return text.replace(url, redact_url(url)) if url else text
