"""What the fault-injection tests count on chain: submitOutput transactions and responses."""

from __future__ import annotations

from collections import Counter
from typing import Any

from eth_utils import function_signature_to_4byte_selector
from hexbytes import HexBytes

from executor.chain.follow.events import JobResponded, decode_log
from oyster_devnet.contracts import Devnet

SUBMIT_OUTPUT = function_signature_to_4byte_selector(
    "submitOutput(bytes,uint256,bytes,uint256,uint8,uint256)"
)


def address_topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


async def submit_output_txs(devnet: Devnet, sender: str, from_block: int) -> Counter[int]:
    """Job id -> number of mined submitOutput transactions sent by ``sender``."""
    counts: Counter[int] = Counter()
    head = await devnet.w3.eth.block_number
    for number in range(from_block, head + 1):
        block: Any = await devnet.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            data = bytes(HexBytes(tx["input"]))
            if (
                tx["from"] == sender
                and tx["to"] == devnet.jobs_address
                and data[:4] == SUBMIT_OUTPUT
            ):
                counts[int.from_bytes(data[36:68], "big")] += 1
    return counts


async def responses_of(devnet: Devnet, enclave: str, from_block: int) -> list[JobResponded]:
    """Every JobResponded emitted for ``enclave`` since ``from_block``, in chain order."""
    logs = await devnet.w3.eth.get_logs(
        {
            "address": devnet.jobs_address,
            "fromBlock": from_block,
            "toBlock": "latest",
            "topics": ["0x" + JobResponded.topic0().hex(), None, address_topic(enclave)],  # type: ignore[list-item]
        }
    )
    events = [decode_log(dict(log)) for log in logs]
    return [e for e in events if isinstance(e, JobResponded)]


def lost_and_duplicated(job_ids: list[int], answered: Counter[int]) -> tuple[list[int], list[int]]:
    lost = [j for j in job_ids if answered[j] == 0]
    duplicated = [j for j in job_ids if answered[j] > 1]
    return lost, duplicated
