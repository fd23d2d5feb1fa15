"""A job read back from the chain, for ``replay`` and ``verify``: its ``JobCreated``, the
``JobResponded`` logs that answered it, and contract state at a given block.

All of it comes from an RPC and is only as true as that RPC: ``replay`` holds the code to its hash
(``executor.chain.code``) and ``verify`` holds each output to the enclave's signature inside the
transaction that submitted it. Logs are decoded by the daemon's own decoders
(``executor.chain.follow.events``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_typing import HexStr
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3Exception
from web3.types import BlockIdentifier

from executor.chain.follow.events import EventDecodeError, JobCreated, JobResponded, decode_log
from executor.errors import ChainError

_ZERO_ADDRESS = "0x" + "00" * 20
_WEB3_ERRORS = (Web3Exception, aiohttp.ClientError, OSError, TimeoutError, ValueError)


class JobNotFound(ChainError):
    """No ``JobCreated`` log for this job id on this Jobs contract."""


@dataclass(frozen=True)
class JobRecord:
    created: JobCreated
    created_at: int
    """Unix seconds: the timestamp of the JobCreated block (the contract's ``execStartTime``)."""
    responses: tuple[JobResponded, ...]
    """The JobResponded logs after ``created``, in chain order."""
    superseded: tuple[JobCreated, ...]
    """Earlier JobCreated logs with the same id (a redeployed or reset contract)."""


def _job_topic(job_id: int) -> str:
    return "0x" + job_id.to_bytes(32, "big").hex()


async def _logs(w3: AsyncWeb3[Any], address: str, topics: list[Any], from_block: int) -> list[Any]:
    try:
        return list(
            await w3.eth.get_logs(
                {
                    "address": to_checksum_address(address),
                    "topics": topics,
                    "fromBlock": from_block,
                    "toBlock": "latest",
                }
            )
        )
    except _WEB3_ERRORS as e:
        raise ChainError(
            f"eth_getLogs from block {from_block} failed: {str(e)[:200]} (an RPC that limits "
            "the block range of eth_getLogs needs --from-block near the job's block)"
        ) from e


def _decoded(raw: Sequence[Any], kind: type[Any]) -> list[Any]:
    events = []
    for log in raw:
        try:
            event = decode_log(log)
        except EventDecodeError as e:
            raise ChainError(f"the RPC served a malformed {kind.__name__} log: {e}") from e
        if isinstance(event, kind):
            events.append(event)
    return sorted(events, key=lambda e: e.position.key)


async def read_job(w3: AsyncWeb3[Any], jobs: str, job_id: int, *, from_block: int = 0) -> JobRecord:
    """The job's JobCreated (the latest, if the id was created more than once) and its outputs."""
    topic = _job_topic(job_id)
    created: list[JobCreated] = _decoded(
        await _logs(w3, jobs, ["0x" + JobCreated.topic0().hex(), topic], from_block), JobCreated
    )
    if not created:
        raise JobNotFound(
            f"job {job_id}: no JobCreated on the Jobs contract {to_checksum_address(jobs)} "
            f"from block {from_block} to the head (wrong id, contract or chain?)"
        )
    job = created[-1]
    responded: list[JobResponded] = _decoded(
        await _logs(
            w3, jobs, ["0x" + JobResponded.topic0().hex(), topic], job.position.block_number
        ),
        JobResponded,
    )
    responses = tuple(r for r in responded if r.position.key > job.position.key)
    created_at = job.position.block_timestamp
    if created_at is None:
        created_at = await block_timestamp(w3, job.position.block_number)
    return JobRecord(job, created_at, responses, tuple(created[:-1]))


async def block_timestamp(w3: AsyncWeb3[Any], number: int) -> int:
    try:
        block = await w3.eth.get_block(number)
    except _WEB3_ERRORS as e:
        raise ChainError(f"eth_getBlockByNumber {number} failed: {str(e)[:200]}") from e
    return int(block["timestamp"])


async def call_view(
    w3: AsyncWeb3[Any],
    to: str,
    signature: str,
    args: Sequence[Any],
    out_types: Sequence[str],
    *,
    block: int | str = "latest",
) -> list[Any] | None:
    """``eth_call`` of a view function at ``block``; None when the contract reverts or has no such
    function (empty or undecodable answer); ``ChainError`` when the RPC cannot answer (e.g. a
    node without the state of an old block)."""
    arg_types = signature[signature.index("(") + 1 : -1]
    data = function_signature_to_4byte_selector(signature) + encode(
        [t for t in arg_types.split(",") if t], list(args)
    )
    try:
        answer = await w3.eth.call(
            {"to": to_checksum_address(to), "data": HexStr("0x" + data.hex())},
            block_identifier=cast(BlockIdentifier, block),
        )
    except ContractLogicError:
        return None
    except _WEB3_ERRORS as e:
        raise ChainError(f"eth_call {signature} at block {block} failed: {str(e)[:200]}") from e
    try:
        return list(decode(list(out_types), bytes(answer)))
    except (DecodingError, OverflowError, ValueError):
        return None


async def enclave_owner(
    w3: AsyncWeb3[Any], tee_manager: str, enclave: str, *, block: int | str
) -> str | None:
    """The owner of a registered enclave at ``block`` per the TeeManager; None: not registered.

    The production TeeManager answers ``getTeeNodeOwner``, the devnet one ``ownerOf``.
    """
    for signature in ("getTeeNodeOwner(address)", "ownerOf(address)"):
        values = await call_view(w3, tee_manager, signature, [enclave], ["address"], block=block)
        if values is not None:
            owner = str(values[0]).lower()
            return None if owner == _ZERO_ADDRESS else to_checksum_address(owner)
    raise ChainError(
        f"the TeeManager {to_checksum_address(tee_manager)} answers neither getTeeNodeOwner nor "
        f"ownerOf at block {block} (wrong address?)"
    )


async def jobs_constant(
    w3: AsyncWeb3[Any], jobs: str, name: str, *, block: int | str = "latest"
) -> int | None:
    """A uint256 constant of the Jobs contract (``SIGN_MAX_AGE``, ``EXECUTION_BUFFER_TIME``)."""
    values = await call_view(w3, jobs, f"{name}()", [], ["uint256"], block=block)
    return None if values is None else int(values[0])
