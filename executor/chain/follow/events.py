"""Typed chain events and their decoding from raw logs (docs/protocol.md §1).

Decoding is strict: a log whose topics or data do not fit its event's shape raises
``EventDecodeError`` (the listener logs it and carries on), so a malformed or spoofed log never
reaches job handling half-parsed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_utils import keccak
from eth_utils import to_checksum_address as _to_checksum_address
from hexbytes import HexBytes

from executor.chain.follow.abi_decode import decode
from executor.errors import ExecutorError


class EventDecodeError(ExecutorError, ValueError):
    """A log claimed to be one of our events but does not decode as one."""


@dataclass(frozen=True)
class LogPosition:
    """Where a log sits in the chain; (block_number, log_index) orders logs, tx_hash names them.

    ``block_hash`` tells whether the block is still the one on the canonical chain (reorgs);
    ``block_timestamp`` (unix seconds) is the chain time of the block, when the node reported it
    (``blockTimestamp``, which newer nodes and anvil include in logs), else None.
    """

    address: str
    block_number: int
    log_index: int
    tx_hash: str
    block_hash: str = ""
    block_timestamp: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


@dataclass(frozen=True)
class ChainEvent:
    """Base of all decoded events. Subclasses declare their Solidity signature and field order."""

    SIGNATURE: ClassVar[str]
    INDEXED: ClassVar[tuple[str, ...]]
    DATA: ClassVar[tuple[str, ...]]

    position: LogPosition

    @classmethod
    def topic0(cls) -> bytes:
        return keccak(text=cls.SIGNATURE)


@dataclass(frozen=True)
class JobCreated(ChainEvent):
    SIGNATURE = "JobCreated(uint256,uint8,address,uint256,bytes32,bytes,uint256,address[])"
    INDEXED = ("uint256", "uint8", "address")
    DATA = ("uint256", "bytes32", "bytes", "uint256", "address[]")

    job_id: int
    env: int
    job_owner: str
    secret_id: int
    codehash: str
    code_inputs: bytes
    deadline_ms: int
    selected_executors: tuple[str, ...]


@dataclass(frozen=True)
class JobResponded(ChainEvent):
    SIGNATURE = "JobResponded(uint256,address,bytes,uint256,uint8,uint8)"
    INDEXED = ("uint256", "address")
    DATA = ("bytes", "uint256", "uint8", "uint8")

    job_id: int
    executor: str
    output: bytes
    total_time_ms: int
    error_code: int
    output_count: int


@dataclass(frozen=True)
class TeeNodeRegistered(ChainEvent):
    SIGNATURE = "TeeNodeRegistered(address,address,uint256,uint256,uint8)"
    INDEXED = ("address", "address")
    DATA = ("uint256", "uint256", "uint8")

    enclave_address: str
    owner: str
    job_capacity: int
    storage_capacity: int
    env: int


@dataclass(frozen=True)
class TeeNodeDrained(ChainEvent):
    SIGNATURE = "TeeNodeDrained(address)"
    INDEXED = ("address",)
    DATA = ()

    enclave_address: str


@dataclass(frozen=True)
class TeeNodeRevived(ChainEvent):
    SIGNATURE = "TeeNodeRevived(address)"
    INDEXED = ("address",)
    DATA = ()

    enclave_address: str


@dataclass(frozen=True)
class TeeNodeDeregistered(ChainEvent):
    SIGNATURE = "TeeNodeDeregistered(address)"
    INDEXED = ("address",)
    DATA = ()

    enclave_address: str


@dataclass(frozen=True)
class LogRemoved:
    """A log yielded earlier whose block is no longer on the canonical chain (a reorg)."""

    event: ChainEvent


@dataclass(frozen=True)
class NewHead:
    """A new canonical head: the chain's clock (``timestamp``, unix seconds) and its tip."""

    number: int
    block_hash: str
    timestamp: int


StreamItem = ChainEvent | LogRemoved | NewHead
"""What a log stream yields: events in chain order, retractions of reorged ones, and heads."""


JOB_EVENTS: tuple[type[ChainEvent], ...] = (JobCreated, JobResponded)
NODE_EVENTS: tuple[type[ChainEvent], ...] = (
    TeeNodeRegistered,
    TeeNodeDrained,
    TeeNodeRevived,
    TeeNodeDeregistered,
)
_BY_TOPIC0: dict[bytes, type[ChainEvent]] = {e.topic0(): e for e in JOB_EVENTS + NODE_EVENTS}


@functools.lru_cache(maxsize=4096)
def _checksummed(value: str | bytes) -> str:
    return _to_checksum_address(value)


def to_checksum_address(value: Any) -> str:
    """EIP-55 form of an address. Logs name the same few addresses over and over (the contract,
    the executors, job owners), and each checksum is a keccak: they are remembered."""
    if isinstance(value, str | bytes):
        return _checksummed(value)
    return _to_checksum_address(value)


def _as_bytes(value: Any) -> bytes:
    return bytes(HexBytes(value))


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return int(value, 16) if value.startswith(("0x", "0X")) else int(value)
    return int(value)


def _normalize(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if abi_type == "address[]":
        return tuple(to_checksum_address(v) for v in value)
    if abi_type == "bytes32":
        return "0x" + bytes(value).hex()
    if abi_type == "bytes":
        return bytes(value)
    return value


def decode_log(log: Mapping[str, Any]) -> ChainEvent | None:
    """Decode a raw log (as returned by eth_getLogs / a logs subscription).

    Returns None for logs of events we do not know; raises EventDecodeError for logs that carry a
    known topic0 but a shape that does not fit.
    """
    if not isinstance(log, Mapping):
        raise EventDecodeError(f"a log must be an object, got {type(log).__name__}")
    topics: Sequence[Any] = log.get("topics") or []
    if not isinstance(topics, list | tuple):
        raise EventDecodeError(f"log topics must be a list, got {type(topics).__name__}")
    if not topics:
        return None
    try:
        topic0 = _as_bytes(topics[0])
    except (TypeError, ValueError) as e:
        raise EventDecodeError(f"log topic0 is not hex data: {type(e).__name__}") from e
    event_type = _BY_TOPIC0.get(topic0)
    if event_type is None:
        return None
    try:
        position = LogPosition(
            address=to_checksum_address(log["address"]),
            block_number=int(log["blockNumber"]),
            log_index=int(log["logIndex"]),
            tx_hash="0x" + _as_bytes(log["transactionHash"]).hex(),
            block_hash="0x" + _as_bytes(log["blockHash"]).hex() if log.get("blockHash") else "",
            block_timestamp=_optional_int(log.get("blockTimestamp")),
        )
        if len(topics) != 1 + len(event_type.INDEXED):
            raise EventDecodeError(
                f"{event_type.__name__} log has {len(topics) - 1} indexed topics, "
                f"expected {len(event_type.INDEXED)}"
            )
        indexed = [
            decode([t], _as_bytes(topic))[0]
            for t, topic in zip(event_type.INDEXED, topics[1:], strict=True)
        ]
        data = decode(event_type.DATA, _as_bytes(log.get("data") or b""))
        values = [
            _normalize(t, v)
            for t, v in zip(event_type.INDEXED + event_type.DATA, [*indexed, *data], strict=True)
        ]
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # AbiDecodeError: ValueError
        if isinstance(e, EventDecodeError):
            raise
        raise EventDecodeError(f"malformed {event_type.__name__} log: {e}") from e
    return event_type(position, *values)
