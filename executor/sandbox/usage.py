"""CPU time and peak memory of the job's workerd process, read from outside the sandbox.

For the developer tools (``run``, ``replay``), not the daemon. It needs nothing from the
``Sandbox`` but that workerd runs as a child of this process, so it reads the same figures on the
warm path (the job's process was started and warmed before the job) and the cold path (it is
started for the job), confined to a slice or not, with or without a memory controller:

- while the job runs, every ``interval_s``, the children of this process are listed
  (``/proc/<pid>/task/*/children``) and each one's ``VmHWM`` (peak resident memory, a high-water
  mark kept by the kernel) and CPU ticks (``/proc/<pid>/stat``) are read;
- the job's process is the child that was alive during the job and is gone (reaped, or killed and
  waiting to be reaped) at its end: the sandbox kills the job's workerd before ``execute``
  returns, on both paths; when no such child was seen, the figures are unknown (None), not
  guessed;
- its CPU time is exact: what ``getrusage(RUSAGE_CHILDREN)`` gained while the job ran (the kernel
  adds a child's lifetime CPU when it is reaped), minus what it had used before the job (the warm
  path's start-up and warm-up); its peak memory is the kernel's ``ru_maxrss`` of it when that rose
  (exact), else its last ``VmHWM`` sample (growth in its last ``interval_s`` can be missed).
"""

from __future__ import annotations

import asyncio
import os
import resource
from dataclasses import dataclass, field
from types import TracebackType

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessUsage:
    """What the job's process used; None where it could not be read."""

    cpu_ms: int | None
    peak_rss_bytes: int | None
    exact_peak: bool = False
    """Whether ``peak_rss_bytes`` is the kernel's own maximum rather than a sample."""


@dataclass
class _Seen:
    first_cpu_s: float
    last_cpu_s: float
    hwm_bytes: int
    at_start: bool


@dataclass
class JobProcessProbe:
    """``async with JobProcessProbe() as probe: await sandbox.execute(...)``; then read
    ``probe.usage``."""

    interval_s: float = 0.005
    usage: ProcessUsage = field(default_factory=lambda: ProcessUsage(None, None))
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _before: resource.struct_rusage | None = None

    async def __aenter__(self) -> JobProcessProbe:
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._sample(at_start=True)
        self._task = asyncio.create_task(self._sample_forever(), name="job-process-probe")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None and self._before is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.usage = self._usage(self._before, after, set(children_of(os.getpid())))

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._sample(at_start=False)

    def _sample(self, *, at_start: bool) -> None:
        for pid in children_of(os.getpid()):
            read = read_process(pid)
            if read is None:
                continue
            cpu_s, hwm = read
            seen = self._seen.get(pid)
            if seen is None:
                self._seen[pid] = _Seen(cpu_s, cpu_s, hwm, at_start)
            else:
                seen.last_cpu_s, seen.hwm_bytes = cpu_s, max(seen.hwm_bytes, hwm)

    def _usage(
        self, before: resource.struct_rusage, after: resource.struct_rusage, alive: set[int]
    ) -> ProcessUsage:
        running = {pid for pid in alive if not is_zombie(pid)}
        gone = {pid: seen for pid, seen in self._seen.items() if pid not in running}
        if not gone:  # the job's process was never seen, or is still running: no guess
            return ProcessUsage(None, None)
        if any(pid in alive for pid in gone):  # killed, not reaped yet: its last samples
            cpu_s = sum(seen.last_cpu_s - seen.first_cpu_s for seen in gone.values())
            return ProcessUsage(round(cpu_s * 1000), max(s.hwm_bytes for s in gone.values()))
        reaped_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        earlier_s = sum(seen.first_cpu_s for seen in gone.values() if seen.at_start)
        cpu_ms = max(0, round((reaped_cpu_s - earlier_s) * 1000))
        if after.ru_maxrss > before.ru_maxrss:  # kB on Linux: the largest child reaped so far
            return ProcessUsage(cpu_ms, after.ru_maxrss * 1024, exact_peak=True)
        peak = max(seen.hwm_bytes for seen in gone.values())
        return ProcessUsage(cpu_ms, peak or None)


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children (every thread's), from ``/proc/<pid>/task/*/children``."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(child) for child in f.read().split()]
        except (OSError, ValueError):
            continue
    return pids


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (state ``Z`` in ``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "Z"


def read_process(pid: int) -> tuple[float, int] | None:
    """(CPU seconds used so far, VmHWM in bytes) of a live process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    try:
        cpu_s = (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (fields 14, 15)
    except (IndexError, ValueError):
        return None
    hwm = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024  # "VmHWM:   51234 kB"
            break
    return cpu_s, hwm
