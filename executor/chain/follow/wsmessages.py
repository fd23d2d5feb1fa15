"""Websocket JSON-RPC notifications as an RPC sends them, parsed defensively.

Whatever arrives on the socket is input like any other: a message that is not what it claims to be
is dropped with a warning and never reaches the stream half-parsed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hexbytes import HexBytes

from executor.chain.follow.events import NewHead

logger = logging.getLogger(__name__)


def parse_notification(raw: str) -> tuple[str | None, Any]:
    """(subscription id, result) of an ``eth_subscription`` message, else (None, None)."""
    try:
        msg = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("websocket: ignoring a message that is not JSON")
        return None, None
    if not isinstance(msg, dict) or msg.get("method") != "eth_subscription":
        return None, None
    params = msg.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("subscription"), str):
        logger.warning("websocket: ignoring a malformed subscription message")
        return None, None
    return params["subscription"], params.get("result")


def parse_log(result: Any) -> dict[str, Any] | None:
    if not isinstance(result, dict):
        logger.warning("websocket: ignoring a log notification that is not an object")
        return None
    try:
        for key in ("blockNumber", "logIndex"):
            if isinstance(result.get(key), str):
                result[key] = int(result[key], 16)
    except ValueError:
        logger.warning("websocket: ignoring a log notification with malformed numbers")
        return None
    return result


def parse_head(raw: dict[str, Any]) -> NewHead | None:
    try:
        number, block_hash, timestamp = raw["number"], raw["hash"], raw["timestamp"]
        return NewHead(
            number=int(number, 16) if isinstance(number, str) else int(number),
            block_hash="0x" + bytes(HexBytes(block_hash)).hex(),
            timestamp=int(timestamp, 16) if isinstance(timestamp, str) else int(timestamp),
        )
    except (KeyError, TypeError, ValueError):
        return None
