"""Where the CPU goes during a stretch of a benchmark: per process (or cgroup) and for the machine.

On a 2-core machine a burst of jobs is CPU-bound, so throughput is decided by the CPU each job
costs, summed over everyone who works for it: the daemon, its workerd processes (all inside the
slices' parent cgroup), anvil, and the benchmark itself. :class:`CpuMeter` reads those counters
before and after a stretch and reports the difference in CPU milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of one process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / _TICKS, int(fields[12]) / _TICKS  # utime, stime (14, 15)
    return user + system, system


def cgroup_cpu_s(cgroup: Path) -> float:
    """CPU seconds used by every process that ever ran in ``cgroup`` and its children.

    ``cpu.stat`` exists in every cgroup v2 group, whether or not the cpu controller is enabled."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise RuntimeError(f"no usage_usec in {cgroup}/cpu.stat")


def own_cpu_s() -> float:
    """This process's CPU seconds, plus those of its children that were reaped (bare workerd)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / _TICKS, total / _TICKS


@dataclass
class CpuMeter:
    """Named CPU counters read at :meth:`start` and :meth:`stop`; the difference per part."""

    pids: dict[str, int] = field(default_factory=dict)
    cgroups: dict[str, Path] = field(default_factory=dict)
    own: str | None = None
    _start: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each part over the last stretch; ``machine`` is the whole machine's."""
    machine_share: float = 0.0
    """Busy fraction of all cores over the last stretch (1.0: every core busy all the time)."""

    def _read(self) -> dict[str, float]:
        values = {}
        for name, pid in self.pids.items():
            values[name], values[f"{name}: of which in the kernel"] = process_cpu_s(pid)
        values |= {name: cgroup_cpu_s(path) for name, path in self.cgroups.items()}
        if self.own is not None:
            values[self.own] = own_cpu_s()
        values["machine"], values["machine total"] = machine_busy_s()
        return values

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        used = {name: end[name] - self._start[name] for name in end}
        total = used.pop("machine total")
        self.machine_share = used["machine"] / total if total else 0.0
        self.used = used
        return used


def _live_cpu_s(meter: CpuMeter) -> float:
    """CPU seconds of ``meter``'s live threads (``schedstat``: nanoseconds, where ``stat`` counts
    10 ms ticks) and cgroups: fine enough to see a quiet 25 ms."""
    total = sum(cgroup_cpu_s(path) for path in meter.cgroups.values())
    for pid in meter.pids.values():
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
            except (FileNotFoundError, ProcessLookupError):
                pass  # the thread ended meanwhile
    return total


async def wait_quiet(
    meter: CpuMeter,
    *,
    quiet_s: float = 0.2,
    interval_s: float = 0.025,
    idle_ms: float = 1.0,
    timeout_s: float = 10.0,
) -> float:
    """Wait until ``meter``'s processes and cgroups used at most ``idle_ms`` of CPU in every
    ``interval_s`` stretch for ``quiet_s`` (the daemon done arming its slices, which starts 20 ms
    after the last job; anvil done mining), so that the next measurement, ours or bare workerd's,
    does not pay for work left over from the previous one. Returns the seconds waited (gives up,
    quietly, after ``timeout_s``).
    """
    started = time.perf_counter()
    quiet = 0.0
    last = _live_cpu_s(meter)
    while quiet < quiet_s and time.perf_counter() - started < timeout_s:
        await asyncio.sleep(interval_s)
        now = _live_cpu_s(meter)
        quiet = quiet + interval_s if (now - last) * 1000 <= idle_ms else 0.0
        last = now
    return time.perf_counter() - started
