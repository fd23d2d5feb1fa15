"""Benchmarks: how close a job through the executor's sandbox gets to bare workerd.

Run with ``make bench`` (or ``.venv/bin/python -m benchmarks.run [--runs N]``). Every figure is
measured in the same run, interleaved, so the ratios hold on a noisy machine even when the absolute
numbers drift. Prints a Markdown table for BENCHMARKS.md.

Measured per job (one workerd process each, as the protocol requires):
- bare workerd: write config + code, spawn ``workerd serve``, wait for its listen report on the
  control fd, POST the input, read the body, SIGKILL + reap; no slice, no sandbox bookkeeping;
- sandbox, unconfined: ``Sandbox.execute`` without a slice;
- sandbox, in a slice: ``Sandbox.execute`` with a real cgroup v2 slice (skipped, and said so, when
  slices cannot be created here);
- sandbox, warm slice: the same with warm single-use slices (the daemon's default): the workerd
  was started in its slice before the job, which its Worker Loader runs in a fresh isolate;
- the daemon's memory: RSS of this process after the runs, and its growth over them (leak check).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool, find_cgroup2_mount
from executor.sandbox.workerd import render_config
from oyster_devnet.tools import REPO_ROOT, workerd_binary

CODE = b"""export default { async fetch(request) {
  const { n } = await request.json();
  let s = 0; for (let i = 0; i < n; i++) s += i;
  return new Response(JSON.stringify({ n, s }));
} };"""
INPUT = b'{"n": 1000}'


PLAIN_CONFIG = """using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [ (name = "main", worker = .w) ],
  sockets = [ (name = "http", address = "127.0.0.1:%d", http = (), service = "main") ],
);
const w :Workerd.Worker = (
  modules = [ (name = "main", esModule = embed "%s") ],
  compatibilityDate = "2023-03-07",
);
"""
"""A plain user's config: the worker on a fixed port, nothing else (no flags, no control fd)."""


def plain_bare(workerd: Path, folder: Path) -> float:
    """How a user would time workerd by hand: spawn it on a free port, try to connect every 1 ms
    until it listens, one POST, read the answer, SIGKILL. Seconds from spawn to the answer.

    Blocking on purpose (nothing else runs meanwhile, as for a user at a shell)."""
    stem = folder / f"plain-{secrets.token_hex(4)}"
    code, config = stem.with_suffix(".js"), stem.with_suffix(".capnp")
    code.write_bytes(CODE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(PLAIN_CONFIG % (port, code.name))
    request = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(INPUT)
    ) + INPUT
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(workerd), "serve", str(config)],
        cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            sock = socket.socket()
            try:
                sock.connect(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                sock.close()
                if proc.poll() is not None:
                    raise RuntimeError("bare workerd exited before listening") from None
                time.sleep(0.001)
        with sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        elapsed = time.perf_counter() - started
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"bare workerd answered {answer[:80]!r}")
    finally:
        proc.kill()
        proc.wait()
        code.unlink()
        config.unlink()
    return elapsed


async def bare_workerd(workerd: Path, folder: Path) -> float:
    started = time.perf_counter()
    stem = folder / f"bare-{secrets.token_hex(4)}"
    code, config = stem.with_suffix(".js"), stem.with_suffix(".capnp")
    code.write_bytes(CODE)
    config.write_text(render_config(code_file=code.name, port=0))
    read_fd, write_fd = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        str(workerd), "serve", str(config), "--control-fd", str(write_fd),
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    try:
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, _read_line, read_fd)
        port = int(line.split('"port":')[1].split("}")[0])
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/", data=INPUT) as resp,
        ):
            await resp.read()
    finally:
        os.close(read_fd)
        proc.kill()
        await proc.wait()
        code.unlink()
        config.unlink()
    return time.perf_counter() - started


async def _in_thread(fn: Callable[[Path, Path], float], workerd: Path, folder: Path) -> float:
    return await asyncio.get_running_loop().run_in_executor(None, fn, workerd, folder)


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def sandboxed(sandbox: Sandbox) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        started = time.perf_counter()
        outcome = await sandbox.execute(CODE, INPUT, deadline_ms=10_000)
        assert outcome.error_code == 0, outcome
        return time.perf_counter() - started

    return run


def make_slices(count: int, tag: str = "") -> Path | None:
    parent = f"oyster-bench-{os.getpid()}{tag}"
    made = subprocess.run(
        [str(REPO_ROOT / "cgroup_setup.sh"), "--parent", parent, "--count", str(count)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        print(f"(no cgroup slices here: {made.stderr.strip() or made.stdout.strip()})")
        return None
    return find_cgroup2_mount() / parent


def remove_slices(parent: Path) -> None:
    subprocess.run(
        [str(REPO_ROOT / "cgroup_setup.sh"), "--parent", parent.name, "--remove"],
        capture_output=True,
    )


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


async def main(runs: int) -> None:
    workerd = workerd_binary()
    folder = Path(tempfile.mkdtemp(prefix="oyster-bench-"))
    parent = make_slices(4)  # slices 1-2 for the cold variant, 3-4 (other ports) for the warm one
    warm: Sandbox | None = None
    try:
        variants: dict[str, Callable[[], Awaitable[float]]] = {
            "bare workerd, plain (the baseline)": lambda: _in_thread(plain_bare, workerd, folder),
            "bare workerd, control fd + aiohttp": lambda: bare_workerd(workerd, folder),
            "sandbox, unconfined": sandboxed(
                Sandbox(
                    workerd_bin=workerd, runtime_path=folder, secret_store_path=folder, pool=None
                )
            ),
        }
        if parent is not None:
            variants["sandbox, in a cgroup slice"] = sandboxed(
                Sandbox(
                    workerd_bin=workerd,
                    runtime_path=folder,
                    secret_store_path=folder,
                    pool=SlicePool(SlicePool.discover(parent).slices[:2], parent),
                )
            )
            warm = Sandbox(
                workerd_bin=workerd,
                runtime_path=folder,
                secret_store_path=folder,
                pool=SlicePool(SlicePool.discover(parent).slices[2:], parent),
                warm_workers=None,
                complete_logs=False,  # as the daemon runs it
            )
            warm.start()
            variants["sandbox, warm slice"] = sandboxed(warm)
        for run in variants.values():  # warm-up: page cache, first-spawn costs
            for _ in range(3):
                await run()
        rss_before = rss_mib()
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):  # interleaved, so drift hits every variant alike
            for name, run in variants.items():
                samples[name].append(await run())
        rss_after = rss_mib()
    finally:
        if warm is not None:
            await warm.close()
        if parent is not None:
            remove_slices(parent)
        shutil.rmtree(folder, ignore_errors=True)

    base, base_p90 = summary(samples["bare workerd, plain (the baseline)"])
    print(
        f"\n{runs} sequential jobs per variant, interleaved; workerd {workerd_version(workerd)}\n"
    )
    print("| variant | p50 ms | p90 ms | p50 / bare p50 | p90 / bare p90 |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        median, p90 = summary(values)
        print(f"| {name} | {median:.1f} | {p90:.1f} | {median / base:.2f} | {p90 / base_p90:.2f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nbenchmark process RSS: {rss_after:.1f} MiB after the runs "
        f"({rss_after - rss_before:+.1f} MiB over {runs * len(variants)} jobs), peak {peak:.1f} MiB"
    )


def workerd_version(workerd: Path) -> str:
    out = subprocess.run([str(workerd), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="jobs per variant (default 40)")
    asyncio.run(main(parser.parse_args().runs))
