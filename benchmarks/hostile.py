"""Jobs that exhaust their memory: two at once per path, their outcomes, their peak RSS.

Run with ``.venv/bin/python -m benchmarks.hostile`` (root: it makes cgroup slices). For each path
(warm, cold) and each kind of bloat (V8 heap, ``ArrayBuffer`` contents, module top level), two jobs
run at once in a sandbox of three slices while a thread samples the peak RSS (``VmHWM``) of every
workerd; then one normal job. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.run import make_slices, remove_slices, workerd_version
from executor.sandbox import Sandbox
from executor.sandbox.cgroups import SlicePool
from oyster_devnet.tools import workerd_binary

BLOATS = {
    "V8 heap": b"export default { async fetch() { const keep = []; "
    b"for (;;) keep.push(new Array(1 << 16).fill(keep.length)); } };",
    "ArrayBuffers": b"export default { async fetch() { const keep = []; "
    b"for (;;) { const a = new Uint8Array(1 << 20); a.fill(1); keep.push(a); } } };",
    "top level": b"const keep = []; for (;;) keep.push(new Array(1 << 16).fill(keep.length)); "
    b"export default {};",
}
ECHO = b'export default { async fetch(r) { return new Response("ok:" + await r.text()); } };'


def _workerd_peaks(folder: Path, peaks: dict[int, int], stop: threading.Event) -> None:
    while not stop.is_set():
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "comm").read_text().strip() != "workerd":
                    continue
                if Path(f"/proc/{proc.name}/cwd").readlink() != folder:
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        kib = int(line.split()[1])
                        peaks[int(proc.name)] = max(peaks.get(int(proc.name), 0), kib)
            except OSError:
                continue
        stop.wait(0.002)


async def one(parent: Path, warm: bool, code: bytes) -> tuple[str, float, float, str]:
    folder = _new_folder()
    sandbox = Sandbox(
        workerd_bin=workerd_binary(),
        runtime_path=folder,
        secret_store_path=folder,
        pool=SlicePool.discover(parent),
        warm_workers=None if warm else 0,
    )
    sandbox.start()
    try:
        if sandbox.warm is not None:
            while sandbox.warm.ready_count < 3:  # every slice armed (a benchmark may poll)
                await sandbox.warm.wait_changed(1.0)
        peaks: dict[int, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_workerd_peaks, args=(folder, peaks, stop))
        sampler.start()
        started = time.perf_counter()
        try:
            outcomes = await asyncio.gather(
                *(sandbox.execute(code, b"", deadline_ms=10_000) for _ in range(2)),
                return_exceptions=True,
            )
        finally:
            stop.set()
            sampler.join()
        seconds = time.perf_counter() - started
        answers = ", ".join(
            f"{o.error_code} {o.output.decode()!r}"
            if not isinstance(o, BaseException)
            else type(o).__name__
            for o in outcomes
        )
        top_two = sorted(peaks.values())[-2:]
        following = await sandbox.execute(ECHO, b"next", deadline_ms=5000)
        answers += f"; next job: {following.error_code} {following.output.decode()!r}"
        return answers, sum(top_two) / 1024, seconds, ""
    finally:
        await sandbox.close()
        shutil.rmtree(folder, ignore_errors=True)


def _new_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="oyster-hostile-")).resolve()


async def main() -> None:
    parent = make_slices(3, tag="-hostile")
    if parent is None:
        raise SystemExit("needs cgroup slices (root)")
    rows = []
    try:
        for warm in (True, False):
            for name, code in BLOATS.items():
                answers, mib, seconds, _ = await one(parent, warm, code)
                rows.append((("warm" if warm else "cold"), name, answers, mib, seconds))
    finally:
        remove_slices(parent)
    print(f"\ntwo bloating jobs at once per row; workerd {workerd_version(workerd_binary())}\n")
    print("| path | bloat | outcomes | peak RSS of the two (MiB) | both answered after (s) |")
    print("|---|---|---|---:|---:|")
    for path, name, answers, mib, seconds in rows:
        print(f"| {path} | {name} | {answers} | {mib:.0f} | {seconds:.2f} |")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    asyncio.run(main())
