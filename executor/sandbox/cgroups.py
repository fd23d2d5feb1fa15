"""The pool of cgroup v2 slices that confine workerd, one job per slice (docs/protocol.md §5).

Slices are the groups ``workerd_<N>`` that ``cgroup_setup.sh`` creates under a parent group (by
default the cgroup2 mount root). A slice owns no port: workerd in it listens on a port the kernel
picks (``127.0.0.1:0``, reported through workerd's control fd), so processes sharing a host never
collide on one.

A slice is handed to a job by :meth:`SlicePool.reserve` and given back by
:meth:`SlicePool.release`, which kills everything left in it and checks that it is empty. A slice
that cannot be emptied (or whose group vanished) is taken out of service for the life of the pool:
it is never handed to another job.

Reserving also takes an advisory ``flock`` on the slice's directory, so two processes using the
same slices (the daemon and a developer's ``oyster-executor run``) never share one. The lock goes
away with its process, so a crashed holder cannot wedge a slice; the processes it left behind are
killed by the next reservation that finds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from executor.errors import NoFreeSliceError, SliceSetupError

log = logging.getLogger(__name__)

SLICE_PREFIX = "workerd_"
KILL_TIMEOUT_S = 2.0
SETUP_HINT = "run ./cgroup_setup.sh as root (see --help) to create them"

_SLICE_NAME = re.compile(rf"^{SLICE_PREFIX}([1-9][0-9]*)$")
_MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape_mount_field(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def find_cgroup2_mount(mountinfo: Path = _MOUNTINFO) -> Path:
    """The mount point of the (first) cgroup v2 hierarchy, from ``/proc/self/mountinfo``."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as e:
        raise SliceSetupError(f"cannot read {mountinfo}: {e.strerror}") from e
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields = pre.split()
        if post.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return Path(_unescape_mount_field(fields[4]))
    raise SliceSetupError("no cgroup v2 (cgroup2) filesystem is mounted")


@dataclass(frozen=True)
class Slice:
    """One cgroup ``workerd_<index>``."""

    index: int
    path: Path

    @property
    def name(self) -> str:
        return f"{SLICE_PREFIX}{self.index}"

    @property
    def procs_file(self) -> Path:
        """Writing a pid here moves that process into the slice."""
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        """Processes currently in the slice (raises ``OSError`` if the group is gone)."""
        return [int(p) for p in self.procs_file.read_text().split()]

    def oom_kills(self) -> int | None:
        """The kernel's count of processes killed in the slice for exceeding ``memory.max``
        (``memory.events``); ``None`` without the memory controller."""
        try:
            events = (self.path / "memory.events").read_text()
        except OSError:
            return None
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None

    def trigger_kill(self) -> bool:
        """Have the kernel SIGKILL everything in the slice; ``False`` if there is no cgroup.kill."""
        try:
            with open(self.path / "cgroup.kill", "w") as f:
                f.write("1")
        except FileNotFoundError:
            if not self.path.is_dir():
                raise
            return False
        return True

    async def kill_all(self, wait_s: float = KILL_TIMEOUT_S) -> bool:
        """SIGKILL every process in the slice and wait (at most ``wait_s``) until it is empty.

        Uses ``cgroup.kill`` (kernel >= 5.14), which also catches processes forked meanwhile;
        without it, SIGKILLs the listed pids until none are left. Returns whether it is empty.
        """
        has_cgroup_kill = self.trigger_kill()
        deadline = time.monotonic() + wait_s
        pause = 0.0005
        while True:
            pids = self.pids()
            if not pids:
                return True
            if not has_cgroup_kill:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)


@dataclass(frozen=True)
class SliceLimits:
    """The resource limits the slices really carry (``memory.max`` / ``cpu.max``, if present)."""

    memory_max: str | None
    cpu_max: str | None
    available_controllers: str

    @property
    def enforced(self) -> bool:
        return self.memory_max is not None and self.cpu_max is not None

    def describe(self) -> str:
        if self.enforced:
            return f"slice limits enforced: memory.max={self.memory_max} cpu.max={self.cpu_max}"
        missing = [
            name
            for name, value in (("memory", self.memory_max), ("cpu", self.cpu_max))
            if value is None
        ]
        return (
            f"{'/'.join(missing)} limits NOT enforced: controllers unavailable "
            f"(parent cgroup.controllers: {self.available_controllers or 'none'})"
        )


class SlicePool:
    """The slices of one parent group; hands each to at most one job at a time."""

    def __init__(self, slices: Iterable[Slice], parent: Path | None = None) -> None:
        self._slices = sorted(slices, key=lambda s: s.index)
        if not self._slices:
            raise SliceSetupError("a slice pool needs at least one slice")
        self.parent = parent if parent is not None else self._slices[0].path.parent
        self._locks: dict[int, int] = {}  # slice index -> fd of its locked directory
        self._out_of_service: set[int] = set()
        self._freed = asyncio.Event()
        self.on_release: list[Callable[[], None]] = []
        """Called after every release (the admission queue hands the slice on)."""
        self.foreign_locked = 0
        """Slices the last :meth:`reserve` found locked by another process."""

    @classmethod
    def discover(cls, parent: Path | None = None) -> SlicePool:
        """Find the ``workerd_N`` slices under ``parent`` (default: the cgroup2 mount root)."""
        if parent is None:
            parent = find_cgroup2_mount()
        try:
            entries = list(parent.iterdir())
        except OSError as e:
            raise SliceSetupError(
                f"cannot list cgroup slices in {parent}: {e.strerror}; {SETUP_HINT}"
            ) from e
        slices = []
        for entry in entries:
            m = _SLICE_NAME.match(entry.name)
            if m and entry.is_dir():
                slices.append(Slice(index=int(m.group(1)), path=entry))
        if not slices:
            raise SliceSetupError(f"no {SLICE_PREFIX}N cgroup slices in {parent}; {SETUP_HINT}")
        pool = cls(slices, parent)
        unwritable = [s.name for s in pool._slices if not os.access(s.procs_file, os.W_OK)]
        if unwritable:
            raise SliceSetupError(
                f"cannot move processes into slices {', '.join(unwritable)} in {parent} "
                "(cgroup.procs not writable: run as root)"
            )
        return pool

    @property
    def slices(self) -> list[Slice]:
        return list(self._slices)

    @property
    def capacity(self) -> int:
        """How many jobs can run at once: slices in service."""
        return len(self._slices) - len(self._out_of_service)

    @property
    def free_count(self) -> int:
        return self.capacity - len(self._locks)

    @property
    def out_of_service(self) -> list[Slice]:
        return [s for s in self._slices if s.index in self._out_of_service]

    def limits(self) -> SliceLimits:
        """The limits found on the slices; a limit counts only if every slice has it."""

        def common(file: str) -> str | None:
            values = set()
            for s in self._slices:
                try:
                    values.add((s.path / file).read_text().strip())
                except OSError:
                    return None
            return values.pop() if len(values) == 1 else "mixed: " + ", ".join(sorted(values))

        try:
            controllers = (self.parent / "cgroup.controllers").read_text().strip()
        except OSError:
            controllers = "unknown"
        return SliceLimits(common("memory.max"), common("cpu.max"), controllers)

    def reserve(self) -> Slice:
        """Take a free, empty slice for one job; raises ``NoFreeSliceError`` when there is none."""
        self.foreign_locked = 0
        for s in self._slices:
            if s.index in self._locks or s.index in self._out_of_service:
                continue
            fd = self._try_lock(s)
            if fd is None:
                if s.index not in self._out_of_service:
                    self.foreign_locked += 1
                continue
            try:
                leftovers = s.pids()
            except OSError as e:
                os.close(fd)
                self._take_out_of_service(s, f"cannot read its cgroup.procs: {e}")
                continue
            if leftovers:
                # Left by a holder that died without cleaning up: kill them, use another slice now.
                log.warning("slice %s holds stray processes %s; killing them", s.name, leftovers)
                with contextlib.suppress(OSError):
                    s.trigger_kill()
                os.close(fd)
                continue
            self._locks[s.index] = fd
            return s
        raise NoFreeSliceError(
            f"no free cgroup slice: {len(self._locks)} in use by this process, "
            f"{len(self._out_of_service)} out of service, of {len(self._slices)} in {self.parent}"
        )

    async def release(self, slice_: Slice) -> None:
        """Kill everything in ``slice_`` and make it free again, or take it out of service."""
        fd = self._locks.get(slice_.index)
        if fd is None:
            raise ValueError(f"slice {slice_.name} is not reserved")
        reason = None
        try:
            if not await slice_.kill_all():
                reason = f"processes {slice_.pids()} survived SIGKILL for {KILL_TIMEOUT_S} s"
        except OSError as e:
            reason = f"cannot empty it: {e}"
        except BaseException:
            reason = "release was interrupted before it was verified empty"
            raise
        finally:
            if reason is not None:
                self._take_out_of_service(slice_, reason)
            del self._locks[slice_.index]
            os.close(fd)
            self._freed.set()
            self._released()

    def unreserve(self, slice_: Slice) -> None:
        """Give back a slice :meth:`reserve` returned and nothing has used (still empty)."""
        fd = self._locks.pop(slice_.index)
        os.close(fd)
        self._freed.set()
        self._released()

    def _released(self) -> None:
        for callback in self.on_release:
            try:
                callback()
            except Exception:
                log.exception("slice release callback failed")

    async def acquire(self, poll_s: float = 0.05) -> Slice:
        """Reserve a slice, waiting while every slice is busy; bound it with a timeout or cancel.

        Only "all busy" waits: when no slice is in service it raises ``NoFreeSliceError`` at once.
        Releases in this process wake the waiters; slices locked by another process (a local
        ``oyster-executor run``) are noticed by looking again every ``poll_s``. (The sandbox queues
        its jobs with :class:`.admission.Admission` instead.)
        """
        while True:
            try:
                return self.reserve()
            except NoFreeSliceError:
                if self.capacity == 0:
                    raise
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):
                    await self._freed.wait()

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Slice]:
        """``async with pool.lease() as slice_:`` reserve a slice and always release it."""
        slice_ = self.reserve()
        try:
            yield slice_
        finally:
            await self.release(slice_)

    def _try_lock(self, s: Slice) -> int | None:
        try:
            fd = os.open(s.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self._take_out_of_service(s, f"cannot open it: {e}")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                self._take_out_of_service(s, f"cannot lock it: {e}")
            return None  # held by another process (e.g. a daemon and `oyster-executor run`)
        return fd

    def _take_out_of_service(self, s: Slice, reason: str) -> None:
        self._out_of_service.add(s.index)
        log.error(
            "cgroup slice %s taken out of service: %s (capacity now %d)",
            s.path,
            reason,
            self.capacity,
        )
