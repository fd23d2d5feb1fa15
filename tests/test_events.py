"""Decoding chain logs into typed events, and that our event shapes match the contract ABIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_utils import event_abi_to_log_topic

from executor.chain.follow.events import (
    JOB_EVENTS,
    NODE_EVENTS,
    ChainEvent,
    EventDecodeError,
    JobCreated,
    JobResponded,
    TeeNodeRegistered,
    decode_log,
)

ABI_DIR = Path(__file__).parents[1] / "executor" / "abi"
JOBS = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
EXEC = "0x70997970C51812Dc3A010c7D01B50E20D17Dc79C"


def topic(abi_type: str, value: Any) -> bytes:
    return encode([abi_type], [value])


def raw_log(
    event: type[ChainEvent], indexed: list[Any], data: list[Any], **extra: Any
) -> dict[str, Any]:
    return {
        "address": JOBS,
        "blockNumber": 7,
        "logIndex": 3,
        "transactionHash": "0x" + "ab" * 32,
        "topics": [event.topic0()]
        + [topic(t, v) for t, v in zip(event.INDEXED, indexed, strict=True)],
        "data": encode(list(event.DATA), data),
        **extra,
    }


@pytest.mark.parametrize(
    ("file", "events"), [("Jobs.json", JOB_EVENTS), ("TeeManager.json", NODE_EVENTS)]
)
def test_event_shapes_match_the_contract_abi(
    file: str, events: tuple[type[ChainEvent], ...]
) -> None:
    abi = json.loads((ABI_DIR / file).read_text())
    by_name = {e["name"]: e for e in abi if e["type"] == "event"}
    for event in events:
        entry = by_name[event.__name__]
        assert event_abi_to_log_topic(entry) == event.topic0()
        indexed = tuple(i["type"] for i in entry["inputs"] if i["indexed"])
        data = tuple(i["type"] for i in entry["inputs"] if not i["indexed"])
        assert (indexed, data) == (event.INDEXED, event.DATA)


def test_job_created_decodes() -> None:
    log = raw_log(
        JobCreated,
        [5, 1, EXEC],
        [9, b"\x11" * 32, b'{"a":1}', 5000, [EXEC]],
    )
    event = decode_log(log)
    assert isinstance(event, JobCreated)
    assert (event.job_id, event.env, event.job_owner, event.secret_id) == (5, 1, EXEC, 9)
    assert event.codehash == "0x" + "11" * 32
    assert event.code_inputs == b'{"a":1}'
    assert event.deadline_ms == 5000
    assert event.selected_executors == (EXEC,)
    assert event.position.key == (7, 3)
    assert event.position.address == JOBS


def test_job_responded_decodes_from_hex_strings() -> None:
    log = raw_log(JobResponded, [5, EXEC], [b"out", 12, 0, 1])
    log = {
        **log,
        "topics": ["0x" + bytes(t).hex() for t in log["topics"]],
        "data": "0x" + log["data"].hex(),
    }
    event = decode_log(log)
    assert isinstance(event, JobResponded)
    assert (event.job_id, event.executor, event.output, event.output_count) == (5, EXEC, b"out", 1)


def test_unknown_event_is_none() -> None:
    assert decode_log({"topics": [b"\x01" * 32], "data": b""}) is None
    assert decode_log({"topics": [], "data": b""}) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda log: {**log, "topics": log["topics"][:-1]},
        lambda log: {**log, "data": log["data"][:-5]},
        lambda log: {**log, "data": b"\xff" * 31},
        lambda log: {k: v for k, v in log.items() if k != "blockNumber"},
    ],
)
def test_malformed_logs_raise_a_decode_error(mangle: Any) -> None:
    log = raw_log(TeeNodeRegistered, [EXEC, EXEC], [20, 0, 1])
    assert isinstance(decode_log(log), TeeNodeRegistered)
    with pytest.raises(EventDecodeError, match="TeeNodeRegistered"):
        decode_log(mangle(log))
