"""The user's side of the end-to-end benchmark: pre-signed createJob transactions, and an
independent websocket subscription that timestamps every JobResponded of one enclave."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import websockets
from eth_account import Account
from hexbytes import HexBytes
from web3 import AsyncWeb3

from executor.chain.transactions import reads as rawrpc
from oyster_devnet.accounts import DevAccount
from oyster_devnet.contracts import Devnet

CREATE_JOB_GAS = 1_000_000
MAX_FEE = 50 * 10**9
PRIORITY_FEE = 10**9


@dataclass
class JobSender:
    """Signs createJobWithExecutors transactions ahead of time, with a local nonce."""

    devnet: Devnet
    user: DevAccount
    executor: str
    chain_id: int
    nonce: int

    @classmethod
    async def create(cls, devnet: Devnet, user: DevAccount, executor: str) -> JobSender:
        w3 = devnet.w3
        nonce = await w3.eth.get_transaction_count(user.address, "pending")
        return cls(devnet, user, executor, await w3.eth.chain_id, nonce)

    def sign(self, codehash: str, inputs: bytes, deadline_ms: int) -> bytes:
        data = self.devnet.jobs.encode_abi(
            "createJobWithExecutors",
            args=[1, 0, HexBytes(codehash), inputs, deadline_ms, [self.executor]],
        )
        tx: dict[str, Any] = {
            "to": self.devnet.jobs_address,
            "data": data,
            "gas": CREATE_JOB_GAS,
            "maxFeePerGas": MAX_FEE,
            "maxPriorityFeePerGas": PRIORITY_FEE,
            "nonce": self.nonce,
            "chainId": self.chain_id,
            "type": 2,
        }
        self.nonce += 1
        return bytes(Account.sign_transaction(tx, self.user.private_key).raw_transaction)

    async def send(self, raw: bytes) -> HexBytes:
        """``eth_sendRawTransaction`` without web3's formatters: inside the measured window."""
        return HexBytes(
            await rawrpc.call(self.devnet.w3, "eth_sendRawTransaction", ["0x" + raw.hex()])
        )

    async def job_ids(self, tx_hashes: list[HexBytes]) -> list[int]:
        """The job id each (mined) createJob transaction created."""
        w3: AsyncWeb3[Any] = self.devnet.w3
        topic = HexBytes(self.devnet.jobs.events["JobCreated"].topic)
        ids = []
        for tx_hash in tx_hashes:
            receipt = await w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=30, poll_latency=0.005
            )
            if receipt["status"] != 1:
                raise RuntimeError(f"createJob {tx_hash.to_0x_hex()} reverted")
            for log in receipt["logs"]:
                if log["topics"] and log["topics"][0] == topic:
                    ids.append(int.from_bytes(log["topics"][1], "big"))
        return ids

    async def job_ids_in_block(self, block: int, tx_hashes: list[HexBytes]) -> list[int]:
        """The job ids the given createJob transactions created, mined from ``block`` on: one
        ``eth_getLogs`` (a burst's 60 receipts would cost the node and this process CPU that bare
        workerd does not pay, inside the measured window). Transactions the block had no room for
        are found in the following ones, by their receipts."""
        w3: AsyncWeb3[Any] = self.devnet.w3
        topic = HexBytes(self.devnet.jobs.events["JobCreated"].topic)
        logs = await w3.eth.get_logs(
            {
                "fromBlock": block,
                "toBlock": "latest",
                "address": self.devnet.jobs.address,
                "topics": [topic],
            }
        )
        by_tx = {
            bytes(lg["transactionHash"]): int.from_bytes(lg["topics"][1], "big") for lg in logs
        }
        missing = [h for h in tx_hashes if bytes(h) not in by_tx]
        for tx_hash, job_id in zip(missing, await self.job_ids(missing), strict=True):
            by_tx[bytes(tx_hash)] = job_id
        return [by_tx[bytes(h)] for h in tx_hashes]


@dataclass
class Responses:
    """Arrival times (``time.perf_counter()``, and wall clock) of JobResponded, by job id."""

    arrived: dict[int, tuple[float, float]] = field(default_factory=dict)
    error_codes: dict[int, int] = field(default_factory=dict)
    _waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    _any: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, job_id: int, error_code: int) -> None:
        self.arrived.setdefault(job_id, (time.perf_counter(), time.time()))
        self.error_codes[job_id] = error_code
        self._any.set()
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_new(self, known: set[int], timeout_s: float = 60) -> int:
        """The id of the first job whose JobResponded arrives that is not in ``known`` (waits):
        with one job in flight, its id, known without asking the node during the measurement."""
        async with asyncio.timeout(timeout_s):
            while True:
                fresh = self.arrived.keys() - known
                if fresh:
                    return min(fresh, key=lambda j: self.arrived[j][0])
                self._any.clear()
                await self._any.wait()

    async def wait(self, job_id: int, timeout_s: float = 60) -> float:
        """The arrival time of ``job_id``'s JobResponded (waits for it)."""
        if job_id not in self.arrived:
            waiter = self._waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
            async with asyncio.timeout(timeout_s):
                await waiter
        return self.arrived[job_id][0]


@contextlib.asynccontextmanager
async def subscribe_responses(
    ws_url: str, devnet: Devnet, executor: str
) -> AsyncIterator[Responses]:
    """JobResponded logs of ``executor`` on their own websocket, timestamped on arrival."""
    responses = Responses()
    topic0 = devnet.jobs.events["JobResponded"].topic
    executor_topic = "0x" + bytes(12).hex() + executor.lower().removeprefix("0x")
    async with websockets.connect(ws_url, max_size=None) as ws:
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_subscribe",
            "params": [
                "logs",
                {"address": devnet.jobs_address, "topics": [topic0, None, executor_topic]},
            ],
        }
        await ws.send(json.dumps(request))
        reply = json.loads(await ws.recv())
        if "result" not in reply:
            raise RuntimeError(f"eth_subscribe failed: {reply}")

        async def read() -> None:
            async for message in ws:
                log = json.loads(message).get("params", {}).get("result")
                if not log or log.get("removed"):
                    continue
                job_id = int(log["topics"][1], 16)
                data = bytes.fromhex(log["data"][2:])
                # (bytes output, uint256 totalTime, uint8 errorCode, uint8 outputCount)
                error_code = int.from_bytes(data[64:96], "big")
                responses.record(job_id, error_code)

        reader = asyncio.ensure_future(read())
        try:
            yield responses
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader
