"""End-to-end benchmark: the whole daemon on a local anvil against bare workerd, in the same run.

Run with ``make bench`` (or ``.venv/bin/python -m benchmarks.e2e --help``). The daemon is a real
``oyster-executor serve`` subprocess (its own enclave key, registered on the devnet contracts,
jobs confined to real cgroup slices). A user account sends pre-signed ``createJobWithExecutors``
transactions naming this enclave; an independent websocket subscription timestamps each
``JobResponded`` of the enclave as it arrives. Measured, interleaved with bare workerd (spawn, one
request, kill; the same JavaScript and input) so that the ratios hold on a noisy machine:

- latency: one job at a time, from sending createJob to its JobResponded arriving (p50/p90),
  each right after a plain bare workerd run as a user would time one (spawn, try the port every
  1 ms, one POST, SIGKILL: ``benchmarks.run.plain_bare``); targets p50 <= 0.5 x bare p50 and
  p90 <= 1.0 x bare p90;
- throughput: a burst of N jobs mined in one block (automine off, then ``evm_mine``), jobs/s until
  the last JobResponded, against N bare workerd runs at the same parallelism (the slice count);
- memory: the daemon's RSS idle (registered, slices armed), and its growth over ``--rss-jobs``
  further jobs (reported per 1000 jobs).

``--compare-cold`` also measures a daemon with ``warm_workers = 0`` (every job spawns workerd),
``--profile`` samples each daemon with py-spy during the latency runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from web3 import AsyncHTTPProvider, AsyncWeb3

from benchmarks.chain import JobSender, Responses, subscribe_responses
from benchmarks.cpu import CpuMeter, wait_quiet
from benchmarks.daemon import (
    DaemonProcess,
    job_phases,
    outcome_times,
    profile_summary,
    py_spy,
    running_daemon,
)
from benchmarks.run import (
    CODE,
    INPUT,
    bare_workerd,
    make_slices,
    plain_bare,
    remove_slices,
    workerd_version,
)
from oyster_devnet.accounts import DEV_ACCOUNTS
from oyster_devnet.anvil import start_anvil
from oyster_devnet.contracts import Devnet, deploy_devnet
from oyster_devnet.tools import workerd_binary

USER = DEV_ACCOUNTS[3]
DEADLINE_MS = 5000


@dataclass
class Figures:
    latency: list[float] = field(default_factory=list)  # s, daemon, one job at a time
    bare_latency: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)  # jobs/s, daemon burst
    executed: list[float] = field(default_factory=list)  # jobs/s until the last output tx sent
    bare_throughput: list[float] = field(default_factory=list)
    rss_idle: float = 0.0
    rss_before: float = 0.0
    rss_after: float = 0.0
    rss_jobs: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)  # py-spy summary, latency runs
    burst_profile: list[str] = field(default_factory=list)  # py-spy summary, bursts
    burst_cpu: list[dict[str, float]] = field(default_factory=list)  # CPU s per part, per burst
    bare_cpu: list[dict[str, float]] = field(default_factory=list)
    burst_busy: list[float] = field(default_factory=list)  # machine busy share during a burst
    burst_warm: list[int] = field(default_factory=list)  # jobs of each burst that ran warm
    bare_busy: list[float] = field(default_factory=list)


@dataclass
class Bench:
    devnet: Devnet
    codehash: str
    workerd: Path
    folder: Path
    capacity: int
    anvil_pid: int
    slices: Path

    async def one_job(self, sender: JobSender, responses: Responses) -> tuple[int, float, float]:
        raw = sender.sign(self.codehash, INPUT, DEADLINE_MS)
        known = set(responses.arrived)
        wall, started = time.time(), time.perf_counter()
        tx_hash = await sender.send(raw)
        # Nothing else is asked of the node until the answer is in: the harness must not compete
        # with the daemon for the CPU (bare workerd's harness does nothing meanwhile either).
        answered = await responses.wait_new(known)
        arrived = responses.arrived[answered][0]
        (job_id,) = await sender.job_ids([tx_hash])
        if answered != job_id:
            raise RuntimeError(f"job {answered} answered while job {job_id} was the one sent")
        if responses.error_codes[job_id] != 0:
            raise RuntimeError(f"job {job_id} answered error code {responses.error_codes[job_id]}")
        return job_id, wall, arrived - started

    async def burst(
        self, sender: JobSender, responses: Responses, count: int, meter: CpuMeter | None = None
    ) -> tuple[float, float, list[int]]:
        """Jobs/s of a burst of ``count`` jobs in one block; the wall time it was mined; its ids.

        ``meter`` measures the CPU from the mining of the block to the last JobResponded."""
        raws = [sender.sign(self.codehash, INPUT, DEADLINE_MS) for _ in range(count)]
        await self.devnet.set_automine(False)
        try:
            hashes = [await sender.send(raw) for raw in raws]
            block = await self.devnet.w3.eth.block_number + 1
            if meter is not None:
                meter.start()
            started, wall = time.perf_counter(), time.time()
            await self.devnet.mine()
        finally:
            await self.devnet.set_automine(True)  # the daemon's submissions get mined at once
        job_ids = await sender.job_ids_in_block(block, hashes)
        last = max([await responses.wait(job_id, timeout_s=120) for job_id in job_ids])
        if meter is not None:
            meter.stop()
        failed = [j for j in job_ids if responses.error_codes[j] != 0]
        if failed:
            raise RuntimeError(f"burst jobs {failed} did not answer error code 0")
        return count / (last - started), wall, job_ids

    async def bare_one(self) -> float:
        """The plain baseline (:func:`benchmarks.run.plain_bare`), as a user would time it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, plain_bare, self.workerd, self.folder)

    async def bare_burst(self, count: int) -> float:
        gate = asyncio.Semaphore(self.capacity)

        async def one() -> None:
            async with gate:
                await bare_workerd(self.workerd, self.folder)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def measure(
    bench: Bench, daemon: DaemonProcess, responses: Responses, args: argparse.Namespace
) -> Figures:
    figures = Figures(rss_idle=daemon.rss_mib())
    sender = await JobSender.create(bench.devnet, USER, daemon.files.key.address)
    for _ in range(3):  # warm-up: first-use costs of both sides
        await bench.one_job(sender, responses)
        await bench.bare_one()
    sent_wall: dict[int, float] = {}
    profile = bench.folder / f"profile-{daemon.pid}.txt"
    burst_profiles: list[Path] = []
    daemon_meter = CpuMeter(
        pids={"daemon": daemon.pid, "anvil": bench.anvil_pid},
        cgroups={"workerd (slices)": bench.slices},
        own="benchmark",
    )
    bare_meter = CpuMeter(own="workerd + benchmark")
    async with py_spy(daemon.pid, profile) if args.profile else _nothing():
        # As a user would measure: one job at a time, each right after a plain bare workerd run
        # of the same JavaScript; nothing waits for the daemon's background work (re-arming the
        # slice the previous job used) to finish, so whatever of it lands on a job shows.
        await wait_quiet(daemon_meter)
        for _ in range(args.runs):
            figures.bare_latency.append(await bench.bare_one())
            job_id, wall, seconds = await bench.one_job(sender, responses)
            sent_wall[job_id] = wall
            figures.latency.append(seconds)
    arrived_wall = {j: responses.arrived[j][1] for j in sent_wall}
    figures.phases = job_phases(daemon.log_text(), sent_wall, arrived_wall)
    for round_ in range(args.burst_rounds):
        burst_profiles.append(bench.folder / f"profile-burst-{round_}-{daemon.pid}.txt")
        await wait_quiet(daemon_meter)  # every slice armed again
        runs_before = await daemon.sandbox_runs()
        async with py_spy(daemon.pid, burst_profiles[-1]) if args.profile else _nothing():
            rate, mined_wall, job_ids = await bench.burst(
                sender, responses, args.burst, daemon_meter
            )
        figures.burst_cpu.append(daemon_meter.used)
        runs_after = await daemon.sandbox_runs()
        figures.burst_warm.append(runs_after.get("warm", 0) - runs_before.get("warm", 0))
        figures.burst_busy.append(daemon_meter.machine_share)
        figures.throughput.append(rate)
        last_outcome = max(outcome_times(daemon.log_text(), job_ids).values())
        figures.executed.append(len(job_ids) / (last_outcome - mined_wall))
        await wait_quiet(daemon_meter)  # the daemon armed its slices again
        bare_meter.start()
        figures.bare_throughput.append(await bench.bare_burst(args.burst))
        figures.bare_cpu.append(bare_meter.stop())
        figures.bare_busy.append(bare_meter.machine_share)
    if args.profile:
        figures.profile = profile_summary([profile])
        figures.burst_profile = profile_summary(burst_profiles)
    await asyncio.sleep(1.0)
    figures.rss_before = daemon.rss_mib()
    done = 0
    while done < args.rss_jobs:
        batch = min(2 * bench.capacity, args.rss_jobs - done)
        await bench.burst(sender, responses, batch)
        done += batch
    await asyncio.sleep(1.0)
    figures.rss_after, figures.rss_jobs = daemon.rss_mib(), done
    return figures


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def report(results: dict[str, Figures], args: argparse.Namespace, workerd: Path) -> None:
    print(
        f"\nend to end, {args.runs} sequential jobs + {args.burst_rounds} bursts of {args.burst} "
        f"per daemon, interleaved with bare workerd; {args.slices} slices; "
        f"workerd {workerd_version(workerd)}\n"
    )
    print("| measure | daemon | bare workerd | daemon / bare | target |")
    print("|---|---:|---:|---:|---|")
    for name, f in results.items():
        for label, q in (("p50", 0.5), ("p90", 0.9)):
            d, b = pct(f.latency, q), pct(f.bare_latency, q)
            target = "<= 0.5" if q == 0.5 else "<= 1.0"
            print(f"| {name}: latency {label} (ms) | {d:.1f} | {b:.1f} | {d / b:.2f} | {target} |")
        d, b = statistics.median(f.throughput), statistics.median(f.bare_throughput)
        print(
            f"| {name}: burst of {args.burst} (jobs/s) | {d:.1f} | {b:.1f} | {d / b:.2f} | >= 0.8 |"
        )
        e = statistics.median(f.executed)
        print(f"| {name}: same bursts, until the last output tx sent | {e:.1f} | {b:.1f} | "
              f"{e / b:.2f} | |")  # fmt: skip
    print("\n| daemon | RSS idle (MiB) | RSS before / after (MiB) | growth per 1000 jobs (MiB) |")
    print("|---|---:|---:|---:|")
    for name, f in results.items():
        growth = (f.rss_after - f.rss_before) * 1000 / max(1, f.rss_jobs)
        print(
            f"| {name} | {f.rss_idle:.1f} | {f.rss_before:.1f} / {f.rss_after:.1f} "
            f"({f.rss_jobs} jobs) | {growth:+.1f} |"
        )
    for name, f in results.items():
        report_cpu(name, f, args.burst)
    for name, f in results.items():
        print(f"\nwhere one job's time goes, {name} (medians, ms; from the daemon's INFO log):\n")
        print("| phase | ms |\n|---|---:|")
        for phase, ms in f.phases.items():
            print(f"| {phase} | {ms:.1f} |")
        if f.profile:
            print(f"\nprofile of the daemon, {name}, during the latency runs:\n")
            print("\n".join(f.profile))
        if f.burst_profile:
            print(f"\nprofile of the daemon, {name}, during the bursts:\n")
            print("\n".join(f.burst_profile))


def report_cpu(name: str, f: Figures, burst: int) -> None:
    """CPU ms per job in the bursts, by who spent it (medians over the rounds)."""
    if not f.burst_cpu:
        return
    print(f"\nCPU per job during the bursts, {name} (ms of CPU per job, medians over rounds):\n")
    print("| part | daemon burst | bare burst |\n|---|---:|---:|")
    parts = list(f.burst_cpu[0]) + [p for p in f.bare_cpu[0] if p not in f.burst_cpu[0]]
    for part in parts:
        cells = []
        for rounds in (f.burst_cpu, f.bare_cpu):
            values = [r[part] for r in rounds if part in r]
            cells.append(f"{1000 * statistics.median(values) / burst:.1f}" if values else "")
        label = "whole machine (everything running)" if part == "machine" else part
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    busy = statistics.median(f.burst_busy), statistics.median(f.bare_busy)
    print(f"| machine busy share (2 cores = 100%) | {100 * busy[0]:.0f}% | {100 * busy[1]:.0f}% |")
    warm = ", ".join(str(n) for n in f.burst_warm)
    print(f"\njobs of each burst that ran on a warm slice (the rest cold): {warm} of {burst}")


async def main(args: argparse.Namespace) -> None:
    workerd = workerd_binary()
    folder = Path(tempfile.mkdtemp(prefix="oyster-e2e-"))
    variants: dict[str, int | None] = {"daemon, warm slices": None}
    if args.compare_cold:
        variants["daemon, cold (warm_workers 0)"] = 0
    results: dict[str, Figures] = {}
    try:
        for index, (name, warm_workers) in enumerate(variants.items()):
            # A fresh chain per variant: anvil slows down as its chain grows (thousands of blocks
            # after one variant), which would penalise whichever variant comes second.
            figures = await measure_variant(args, name, warm_workers, index, workerd, folder)
            if figures is not None:
                results[name] = figures
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(results, args, workerd)


async def measure_variant(
    args: argparse.Namespace,
    name: str,
    warm_workers: int | None,
    index: int,
    workerd: Path,
    folder: Path,
) -> Figures | None:
    """One daemon variant on its own anvil, devnet and slices; ``None`` (said) if it failed."""
    async with start_anvil() as anvil:
        w3 = AsyncWeb3(AsyncHTTPProvider(anvil.http_url))
        parent = make_slices(args.slices, tag=f"-{index}")
        if parent is None:
            raise SystemExit("the end-to-end benchmark needs cgroup slices (root)")
        try:
            devnet = await deploy_devnet(
                w3, DEV_ACCOUNTS[0], execution_buffer_time=60, num_selected_executors=1
            )
            codehash = await devnet.save_code(USER, CODE.decode())
            bench = Bench(devnet, codehash, workerd, folder, args.slices, anvil.pid, parent)
            async with (
                running_daemon(
                    folder / f"node-{index}",
                    anvil,
                    devnet,
                    cgroup_parent=parent,
                    warm_workers=warm_workers,
                    owner=DEV_ACCOUNTS[1],
                    gas=DEV_ACCOUNTS[4],
                ) as daemon,
                subscribe_responses(anvil.ws_url, devnet, daemon.files.key.address) as responses,
            ):
                print(f"measuring {name} (daemon pid {daemon.pid}) ...", flush=True)
                try:
                    return await measure(bench, daemon, responses, args)
                except (TimeoutError, RuntimeError):
                    kept = Path(tempfile.mkdtemp(prefix="oyster-e2e-failed-"))
                    shutil.copy(daemon.log_file, kept)
                    print(f"!! {name} failed (daemon log kept in {kept}):")
                    print(traceback.format_exc(limit=-3))
                    return None
        finally:
            remove_slices(parent)
            await w3.provider.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="sequential jobs (default 40)")
    parser.add_argument("--burst", type=int, default=60, help="jobs per burst (default 60)")
    parser.add_argument("--burst-rounds", type=int, default=2, help="bursts (default 2)")
    parser.add_argument("--slices", type=int, default=20, help="cgroup slices (default 20)")
    parser.add_argument(
        "--rss-jobs", type=int, default=1000, help="jobs for the RSS growth figure (default 1000)"
    )
    parser.add_argument("--compare-cold", action="store_true", help="also a cold-path daemon")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemons")
    asyncio.run(main(parser.parse_args()))
