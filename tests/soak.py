"""The soak test: many jobs in blocks on a real anvil, the CPU kept busy by other processes and
the daemon's websocket cut now and then, counting jobs lost (no JobResponded of this node) and
doubled (more than one mined submitOutput of this node for one job).

``tests/test_soak.py`` runs a bounded version in the suite; a long run from the checkout::

    .venv/bin/python -m tests.soak --jobs 3000 --per-block 20 --burn 1 --cut-every 3 [--slices 4]

prints the figures (jobs, lost, doubled, duration, load) and exits 1 if any job was lost or
doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from web3 import AsyncHTTPProvider, AsyncWeb3

from benchmarks.chain import JobSender, subscribe_responses
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import start_anvil
from oyster_devnet.contracts import deploy_devnet
from oyster_devnet.node_setup import init_and_register, write_node_files
from tests.fault_helpers import lost_and_duplicated, responses_of, submit_output_txs
from tests.node_helpers import CODE_ECHO, running_daemon, wait_registered
from tests.sandbox_helpers import slice_parent
from tests.ws_proxy import WsProxy, running_ws_proxy

OWNER, GAS, USER = DEV_ACCOUNTS[1], DEV_ACCOUNTS[2], DEV_ACCOUNTS[3]
DEADLINE_MS = 10_000
EXECUTION_BUFFER_S = 10
"""The output window: long enough for a loaded machine, short enough for a lost job to show."""


@dataclass
class SoakFigures:
    jobs: int = 0
    lost: list[int] = field(default_factory=list)
    doubled: list[int] = field(default_factory=list)
    late: int = 0
    """Jobs whose output had not arrived when their block's wait ended (then found, or lost)."""
    cuts: int = 0
    connections: int = 0
    duration_s: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    parts_down: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs in {self.duration_s:.0f}s: lost={len(self.lost)} {self.lost[:10]} "
            f"doubled={len(self.doubled)} {self.doubled[:10]} late={self.late}; "
            f"{self.cuts} websocket cuts ({self.connections} connections); "
            f"load average at the end {self.load[0]:.1f} {self.load[1]:.1f} {self.load[2]:.1f}; "
            f"parts down {self.parts_down or 'none'}"
        )


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """``count`` processes that spin on a core each until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def cutting(proxy: WsProxy, every_s: float, figures: SoakFigures) -> AsyncIterator[None]:
    async def cut() -> None:
        while True:
            await asyncio.sleep(every_s)
            await proxy.drop_all()
            figures.cuts += 1

    task = asyncio.create_task(cut())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def soak(
    folder: Path,
    *,
    jobs: int,
    per_block: int,
    burn: int,
    cut_every_s: float,
    slices: int = 0,
    block_wait_s: float = 60.0,
    progress: bool = False,
) -> SoakFigures:
    """``slices`` > 0: the daemon runs its jobs in that many cgroup slices (warm), else
    unconfined (cold, one workerd per job)."""
    figures = SoakFigures()
    with contextlib.ExitStack() as stack:
        parent = stack.enter_context(slice_parent(count=slices)) if slices else None
        return await _soak(
            folder, figures, jobs, per_block, burn, cut_every_s, parent, block_wait_s, progress
        )


async def _soak(
    folder: Path,
    figures: SoakFigures,
    jobs: int,
    per_block: int,
    burn: int,
    cut_every_s: float,
    parent: Path | None,
    block_wait_s: float,
    progress: bool,
) -> SoakFigures:
    async with start_anvil() as anvil:
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        try:
            devnet = await deploy_devnet(
                w3,
                DEV_ACCOUNTS[0],
                execution_buffer_time=EXECUTION_BUFFER_S,
                num_selected_executors=1,
            )
            async with running_ws_proxy(anvil.ws_url, keys={""}) as proxy:
                files = write_node_files(folder / "node", anvil, devnet, ws_url=proxy.url)
                async with running_daemon(files, cgroup_parent=parent) as daemon:
                    await init_and_register(daemon.admin_url, devnet, owner=OWNER, gas=GAS)
                    await wait_registered(daemon)
                    me = files.key.address
                    codehash = await devnet.save_code(USER, CODE_ECHO)
                    start_block = await w3.eth.block_number
                    sender = await JobSender.create(devnet, USER, me)
                    job_ids: list[int] = []
                    began = time.monotonic()
                    async with (
                        subscribe_responses(anvil.ws_url, devnet, me) as responses,
                        cutting(proxy, cut_every_s, figures),
                    ):
                        with cpu_burners(burn):
                            while len(job_ids) < jobs:
                                count = min(per_block, jobs - len(job_ids))
                                raws = [
                                    sender.sign(codehash, b"%d" % (len(job_ids) + i), DEADLINE_MS)
                                    for i in range(count)
                                ]
                                await devnet.set_automine(False)
                                try:
                                    hashes = [await sender.send(raw) for raw in raws]
                                    block = await w3.eth.block_number + 1
                                    await devnet.mine()
                                finally:
                                    await devnet.set_automine(True)
                                ids = await sender.job_ids_in_block(block, hashes)
                                job_ids += ids
                                for job_id in ids:  # each block's answers awaited
                                    try:
                                        await responses.wait(job_id, block_wait_s)
                                    except TimeoutError:
                                        figures.late += 1
                                if progress and len(job_ids) % (per_block * 10) == 0:
                                    print(
                                        f"  {len(job_ids)} jobs, {figures.late} late, "
                                        f"{figures.cuts} cuts, {time.monotonic() - began:.0f}s",
                                        flush=True,
                                    )
                    figures.duration_s = time.monotonic() - began
                    figures.load = os.getloadavg()
                    figures.parts_down = daemon.supervisor.parts_down()
                    figures.connections = proxy.connections
                    answered = {r.job_id for r in await responses_of(devnet, me, start_block)}
                    txs = await submit_output_txs(devnet, GAS.address, start_block)
        finally:
            await w3.provider.disconnect()  # type: ignore[attr-defined]
    figures.jobs = len(job_ids)
    figures.lost = [j for j in job_ids if j not in answered]
    _, figures.doubled = lost_and_duplicated(job_ids, txs)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--per-block", type=int, default=20)
    parser.add_argument("--burn", type=int, default=1, help="CPU-spinning processes")
    parser.add_argument("--cut-every", type=float, default=3.0, help="seconds between ws cuts")
    parser.add_argument(
        "--slices", type=int, default=0, help="cgroup slices for the jobs (0: unconfined, cold)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # clean up (anvil, slices) as on Ctrl-C
    with tempfile.TemporaryDirectory(prefix="oyster-soak-") as folder:
        figures = asyncio.run(
            soak(
                Path(folder),
                jobs=args.jobs,
                per_block=args.per_block,
                burn=args.burn,
                cut_every_s=args.cut_every,
                slices=args.slices,
                progress=True,
            )
        )
    print(figures.summary())
    return 1 if figures.lost or figures.doubled else 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
