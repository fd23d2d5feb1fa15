"""Following the chain: the Jobs and TeeManager events, in chain order, through reconnects,
endpoint failover and reorgs.

``LogStream`` (``listener``) subscribes to the contracts' logs and to new heads over websocket,
backfills what it missed, and retracts what a reorg removed (``window``: the recent blocks and
their logs); ``wsmessages`` parses the websocket frames, ``events`` (with ``abi_decode``) decodes
logs into typed events, ``job_history`` reads one job's logs (replay, verify), and
``read_node_record`` (``resume``) rebuilds a node's state from the chain after a restart.
"""

from executor.chain.follow.events import (
    JOB_EVENTS,
    NODE_EVENTS,
    ChainEvent,
    EventDecodeError,
    JobCreated,
    JobResponded,
    LogPosition,
    LogRemoved,
    NewHead,
    StreamItem,
    TeeNodeDeregistered,
    TeeNodeDrained,
    TeeNodeRegistered,
    TeeNodeRevived,
    decode_log,
)
from executor.chain.follow.job_history import (
    JobNotFound,
    JobRecord,
    block_timestamp,
    call_view,
    enclave_owner,
    jobs_constant,
    read_job,
)
from executor.chain.follow.listener import REORG_WINDOW_BLOCKS, LogStream, StreamHealth
from executor.chain.follow.resume import JOB_LOOKBACK_BLOCKS, NodeRecord, read_node_record

__all__ = [
    "JOB_EVENTS",
    "JOB_LOOKBACK_BLOCKS",
    "NODE_EVENTS",
    "REORG_WINDOW_BLOCKS",
    "ChainEvent",
    "EventDecodeError",
    "JobCreated",
    "JobNotFound",
    "JobRecord",
    "JobResponded",
    "LogPosition",
    "LogRemoved",
    "LogStream",
    "NewHead",
    "NodeRecord",
    "StreamHealth",
    "StreamItem",
    "TeeNodeDeregistered",
    "TeeNodeDrained",
    "TeeNodeRegistered",
    "TeeNodeRevived",
    "block_timestamp",
    "call_view",
    "decode_log",
    "enclave_owner",
    "jobs_constant",
    "read_job",
    "read_node_record",
]
