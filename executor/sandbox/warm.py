"""Warm single-use slices: per free slice, a workerd already started in it and warmed.

Cold, a job pays for the blocking ``cgroup.procs`` write, workerd's start-up and its first request
before its own code runs (BENCHMARKS.md has the figures). Here those happen before the job arrives:
a keeper task holds up to ``target`` slices, each running one ``workerd serve --experimental`` with
the loader worker of :mod:`executor.sandbox.loader`, already asked once (a throwaway GET) so that
the loader's isolate is ready. A job takes one ready process (:meth:`WarmPool.take`), sends it its
code and inputs, and the process is then killed with everything in its slice
(:meth:`WarmPool.retire`); the slice is emptied, released and armed again in the background. One
process serves exactly one job, so jobs stay as isolated from each other as on the cold path.

Arming yields to jobs. While jobs queue for a slot (a burst larger than the armed slices), freed
slices go to them for a cold start instead of being armed: arming and then loading costs more CPU
than one cold start. And while as many jobs run as the machine has cores, nothing is armed: a
start-up (tens of ms of CPU, mostly the kernel mapping workerd) would take CPU from the jobs that
are running, and a burst would pay for the next burst's preparation. Arming resumes as soon as the
CPU has room and the jobs have paused for a moment (``ARM_QUIET_S``: the jobs of one block reach
the sandbox over some milliseconds, not at once), so an idle node keeps every slice warm. The
pause is short (20 ms): a longer one never came between the jobs of a user sending one job after
another, so the armed slices ran out and jobs started cold (the tail of BENCHMARKS.md); a start-up
runs at the lowest priority (nice 19) anyway, so it yields to the jobs that follow.

Every loader listens on a port the kernel picks (``127.0.0.1:0``, reported on workerd's control
fd), so slices own no port and processes sharing a host cannot collide.

Pre-loading (:meth:`WarmPool.remember`): after two jobs of the same code and secret in a row
answered errorCode 0, up to
:data:`PRELOAD_SLICES` slices, never all, are armed with that job's code and secret already
loaded (:mod:`.loader`), for the next job of that code and secret; its isolate is then ready
before it arrives. Jobs of any other code or secret take a plain slice (or have a pre-loaded one
re-armed when no other slot is left). A pre-loaded process not taken within
:data:`PRELOAD_TTL_S` is re-armed plain, and the code is no longer pre-loaded.

Whether this workerd has a Worker Loader at all is decided once, at start, by a probe: if it has
not (no ``--experimental`` / ``workerLoader``), the pool says so in the log and stands down, and
every job takes the cold path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.errors import ArmError, NoFreeSliceError, SandboxError
from executor.outcome import MAX_OUTPUT_BYTES
from executor.sandbox import http1
from executor.sandbox.capnp_config import BinaryConfigs
from executor.sandbox.cgroups import Slice, SlicePool
from executor.sandbox.loader import (
    LOADER_JS,
    VERDICT_HEADER,
    Verdict,
    render_loader_config,
)
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.workerd import (
    ARM_NICE,
    FILE_PREFIX,
    WorkerdProcess,
    lower_priority,
    write_new_file,
)
from executor.supervisor import Supervisor
from executor.tasks import TaskSet

log = logging.getLogger(__name__)

ARM_TIMEOUT_S = 10.0
"""Longest a slice may take to start its loader and answer the warm-up request."""
ARM_CONCURRENCY = 4
"""Slices armed at the same time: start-ups are CPU-bound, more at once only queue for the CPU."""
RETRY_PAUSE_S = 1.0
KEEPER_POLL_S = 1.0
REUSE_S = 5.0
"""The job's request goes on the warm-up request's connection if it has been idle for less than this
(else on a new one), saving a connect. workerd closes an idle connection after 15 s (BENCHMARKS.md),
so one idle under 5 s cannot be closed under the request; the most recently armed slice is taken
first, so that it often is."""
BUSY_JOBS = os.cpu_count() or 1
"""While this many jobs run, nothing is armed (see the module docstring)."""
ARM_QUIET_S = 0.02
"""Nothing is armed until this long after a job last started or finished."""
RETIRE_AFTER_S = 0.005
"""A used worker is killed this long after its job's answer was read, not at once: a killed
workerd's teardown (the kernel unmapping its memory) takes 2-3 ms of CPU that, on a small host,
competed with the output's signing and sending (BENCHMARKS.md: it held the end-to-end p50 at about
0.5 of bare workerd, 0.36-0.39 without it). The answer is taken and the slice stays the job's
until it is retired, so what the process does meanwhile changes nothing."""
PRELOAD_TTL_S = 30.0
"""A pre-loaded process no job has taken for this long is re-armed plain (its top level may
keep a core busy at the lowest priority: it is the code's, not a job's)."""
PRELOAD_SLICES = 2
"""Warm slices at most that hold the last job's code pre-loaded (see :meth:`WarmPool.remember`);
the others stay plain, for jobs of any other code or secret."""


@dataclass(eq=False)
class WarmWorker:
    """One armed slice: its loader process listens on :attr:`port` and has served nobody yet."""

    slice: Slice
    proc: WorkerdProcess
    files: tuple[Path, ...]
    """The loader's text config and code (none with a binary config)."""
    port: int
    connection: http1.KeptConnection | None = None
    """The warm-up request's connection, kept open for the job's request (see ``REUSE_S``)."""
    preloaded: bytes | None = None
    """The :func:`.loader.preload_key` of the code pre-loaded in it; ``None``: a plain one."""
    ready_at: float = 0.0
    """``time.monotonic()`` when it got ready."""

    def connection_for_job(self) -> http1.KeptConnection | None:
        """The kept connection if it may carry the job's request now; else ``None`` (closed)."""
        connection, self.connection = self.connection, None
        if connection is not None and connection.usable(REUSE_S):
            return connection
        if connection is not None:
            connection.writer.close()
        return None

    def close_connection(self) -> None:
        if self.connection is not None:
            self.connection.writer.close()
            self.connection = None

    def remove_files(self) -> None:
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class WarmPool:
    """Keeps up to ``target`` slices of ``pool`` armed; see the module docstring."""

    def __init__(
        self,
        *,
        pool: SlicePool,
        workerd_bin: Path,
        runtime_path: Path,
        target: int | None,
        configs: BinaryConfigs | None = None,
        outbound: OutboundBudget | None = None,
    ) -> None:
        self._pool = pool
        self._outbound = outbound
        self._configs = configs
        self._workerd_bin = workerd_bin
        self._runtime_path = runtime_path
        self.target = pool.capacity if target is None else min(target, pool.capacity)
        self._ready: deque[WarmWorker] = deque()
        self._arming = 0
        self.available: bool | None = None if self.target > 0 else False
        """``None`` until the start-up probe tells; ``False``: this workerd has no loader."""
        self._changed = asyncio.Event()  # a worker got ready, a slice freed, or stood down
        self.on_change: list[Callable[[], None]] = []
        """Called whenever :attr:`_changed` is set (the admission queue hands slots on)."""
        self._wanted = asyncio.Event()  # a slot opened: the keeper arms another slice
        self.waiting = 0
        """Jobs waiting for a slot (see :meth:`_should_arm`); kept by the sandbox."""
        self.running = 0
        """Jobs between taking a slot and giving it back; kept through :meth:`job_started` and
        :meth:`job_finished`."""
        self.busy_jobs = BUSY_JOBS
        self.quiet_s = ARM_QUIET_S
        self._last_job_event = -ARM_QUIET_S  # loop time a job last started or finished
        self._arm_gate = asyncio.Semaphore(ARM_CONCURRENCY)
        self._preload: tuple[bytes, bytes] | None = None  # (key, frame) of the last job's code
        self._preloading = 0
        self._last_key: bytes | None = None  # the key of the last job remembered
        self._tasks = TaskSet("warm")
        self._keeper: asyncio.Task[None] | None = None
        self._retiring: dict[WarmWorker, asyncio.TimerHandle] = {}
        """Used workers waiting out :data:`RETIRE_AFTER_S` (see :meth:`retire_soon`)."""

    @property
    def active(self) -> bool:
        """Whether jobs should look here first (the pool has not stood down and is running)."""
        return self.available is not False and self._keeper is not None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def idle_count(self) -> int:
        """Slices held without a job: armed and waiting, or being armed."""
        return len(self._ready) + self._arming

    def ready_pids(self) -> list[int]:
        """The pids of the armed processes waiting for a job."""
        return [w.proc.pid for w in self._ready]

    def ready_ports(self) -> list[int]:
        """The loopback ports the armed processes listen on (each picked by the kernel)."""
        return [w.port for w in self._ready]

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start arming in the background (returns at once): the keeper is the part
        ``warm-keeper`` of ``supervisor`` (restarted if it dies), arming and retiring tasks its
        part ``warm-tasks`` (each failure logged and counted)."""
        if self._keeper is not None or self.target == 0:
            return
        supervisor = supervisor or Supervisor()
        self._tasks = supervisor.tasks("warm-tasks")
        self._keeper = supervisor.run("warm-keeper", self._keep)
        self._wanted.set()
        log.info("warm slices: arming %d of %d in the background", self.target, self._pool.capacity)

    async def close(self) -> None:
        """Stop arming, kill every warm process and release its slice; waits for all of it."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await self._tasks.wait(None)  # armings in progress end by themselves (ARM_TIMEOUT_S)
        while self._retiring:
            worker, handle = self._retiring.popitem()
            handle.cancel()
            await self.retire(worker)
        while self._ready:
            await self.retire(self._ready.popleft())
        self._notify()

    def take(self, key: bytes | None = None) -> WarmWorker | None:
        """A ready worker for one job, now; ``None`` if none is ready. A worker pre-loaded with
        the job's ``key`` (:func:`.loader.preload_key`) first, else a plain one; never one
        pre-loaded with another code or secret."""
        while True:
            worker = self._pick(key)
            if worker is None:
                return None
            self._ready.remove(worker)
            if worker.proc.returncode is None:
                self._wanted.set()
                lower_priority(worker.proc.pid)  # from the arming priority to a job's
                return worker
            log.warning("warm workerd in %s died while idle; re-arming", worker.slice.name)
            self._background(self.retire(worker), f"retire {worker.slice.name}")

    def _pick(self, key: bytes | None) -> WarmWorker | None:
        plain = None
        for worker in reversed(self._ready):  # the most recently armed: the freshest connection
            if key is not None and worker.preloaded == key:
                return worker
            if plain is None and worker.preloaded is None:
                plain = worker
        return plain

    def remember(self, key: bytes, frame: bytes) -> None:
        """The code (and secret) of a job that just ran: once the same code and secret have run
        twice in a row, pre-load them into up to :data:`PRELOAD_SLICES` slices as they are armed,
        for the next job. Slices pre-loaded with an older code are then re-armed (their processes
        killed). Jobs of changing codes thus cause no re-arming."""
        repeated, self._last_key = key == self._last_key, key
        if not repeated or (self._preload is not None and self._preload[0] == key):
            return
        self._preload = (key, frame)
        for worker in [w for w in self._ready if w.preloaded not in (None, key)]:
            self._ready.remove(worker)
            self._background(self.retire(worker), f"retire {worker.slice.name}")
        self._wanted.set()

    def _expire_preloads(self) -> None:
        now = time.monotonic()
        for worker in [w for w in self._ready if w.preloaded is not None]:
            if now - worker.ready_at > PRELOAD_TTL_S:
                if self._preload is not None and worker.preloaded == self._preload[0]:
                    self._preload = None  # not run again for a while: stop pre-loading it
                self._ready.remove(worker)
                self._background(self.retire(worker), f"retire {worker.slice.name}")

    def _wants_preload(self) -> tuple[bytes, bytes] | None:
        if self._preload is None:
            return None
        key = self._preload[0]
        held = sum(1 for w in self._ready if w.preloaded == key) + self._preloading
        # At least one armed slice stays plain, for jobs of other codes.
        return self._preload if held < min(PRELOAD_SLICES, self.target - 1) else None

    def evict_preloaded(self, key: bytes | None) -> bool:
        """Re-arm one process pre-loaded with a code other than ``key`` (for a job that found
        neither its own nor a plain one, and no free slice); whether there was one."""
        for worker in self._ready:
            if worker.preloaded is not None and worker.preloaded != key:
                self._ready.remove(worker)
                self._background(self.retire(worker), f"retire {worker.slice.name}")
                return True
        return False

    async def wait_changed(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until a worker gets ready, a slice is freed or the pool
        stands down."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    async def settle(self, within_s: float = ARM_TIMEOUT_S) -> bool:
        """Wait until a worker is ready or the pool stood down (bounded); whether one is ready."""
        deadline = asyncio.get_running_loop().time() + within_s
        while not self._ready and self.available is not False:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await self.wait_changed(remaining)
        return bool(self._ready)

    async def request(self, worker: WarmWorker, frame: bytes) -> tuple[Verdict, bytes]:
        """POST one job's frame to ``worker``'s loader; the verdict and up to 20481 body bytes."""
        reuse = worker.connection_for_job()
        async with http1.Exchange(worker.port, frame, reuse=reuse) as exchange:
            verdict = Verdict.from_header(exchange.headers.get(VERDICT_HEADER))
            limit = MAX_OUTPUT_BYTES + 1 if verdict is Verdict.RESPONDED else 64 * 1024
            return verdict, await exchange.read(limit)

    def kill(self, worker: WarmWorker) -> None:
        """SIGKILL the worker's process and everything else in its slice, at once (no wait)."""
        worker.proc.kill()
        worker.close_connection()
        with contextlib.suppress(OSError):
            worker.slice.trigger_kill()

    async def retire(self, worker: WarmWorker) -> None:
        """Kill the worker, remove its files, empty and release its slice, wake the keeper."""
        try:
            self.kill(worker)
            worker.remove_files()
            await worker.proc.close()
        finally:
            try:
                await self._pool.release(worker.slice)
            finally:
                self.slice_freed()

    def slice_freed(self) -> None:
        """A slice of the pool was released: wake waiting jobs and the keeper."""
        self._notify()
        self._wanted.set()

    def _notify(self) -> None:
        self._changed.set()
        for callback in self.on_change:
            try:
                callback()
            except Exception:
                log.exception("warm pool change callback failed")

    def give_back(self, worker: WarmWorker) -> None:
        """Return a worker :meth:`take` gave out and no job used (its job was cancelled first)."""
        self._ready.append(worker)
        self._notify()

    def job_started(self) -> None:
        self.running += 1
        self._last_job_event = asyncio.get_running_loop().time()

    def job_finished(self) -> None:
        """A job gave its slot back: if the CPU has room now, the keeper may arm again (once the
        jobs have paused)."""
        self.running -= 1
        self._last_job_event = asyncio.get_running_loop().time()
        if self.running < self.busy_jobs:
            self._wanted.set()

    def retire_later(self, worker: WarmWorker) -> None:
        """:meth:`retire` in the background (the caller already has what it needs)."""
        self._background(self.retire(worker), f"retire {worker.slice.name}")

    def retire_soon(self, worker: WarmWorker) -> None:
        """:meth:`retire_later` once :data:`RETIRE_AFTER_S` has passed; :meth:`close` retires
        a worker still waiting at once."""

        def due() -> None:
            if self._retiring.pop(worker, None) is not None:
                self.retire_later(worker)

        self._retiring[worker] = asyncio.get_running_loop().call_later(RETIRE_AFTER_S, due)

    # --- the keeper ------------------------------------------------------------------------

    async def _keep(self) -> None:
        if self.available is None:  # not again when the keeper is restarted
            await self._probe()
        while self.available is not False:
            with contextlib.suppress(TimeoutError):  # also polls: another process may free one
                async with asyncio.timeout(self._until_quiet_s() or KEEPER_POLL_S):
                    await self._wanted.wait()
            self._wanted.clear()
            self._expire_preloads()
            while self._should_arm():
                await self._arm_gate.acquire()  # a slice is taken only when it can be armed now
                if not self._should_arm():
                    self._arm_gate.release()
                    break
                try:
                    slice_ = self._pool.reserve()
                except NoFreeSliceError:
                    self._arm_gate.release()
                    break
                self._arming += 1
                self._background(self._arm(slice_), f"arm {slice_.name}")

    def _until_quiet_s(self) -> float:
        """Seconds until the jobs will have paused for :attr:`quiet_s` (0: they have)."""
        since = asyncio.get_running_loop().time() - self._last_job_event
        return max(0.0, self.quiet_s - since)

    def _should_arm(self) -> bool:
        # Jobs first (see the module docstring): nobody waits for a slot, the running jobs leave
        # a core free, and no job started or finished just now.
        return (
            self.available is not False
            and self.waiting == 0
            and self.running < self.busy_jobs
            and self._until_quiet_s() == 0
            and self._arming + len(self._ready) < self.target
        )

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name=name)

    async def _arm(self, slice_: Slice) -> None:
        try:
            worker = await self._start_worker(slice_)  # releases the slice if it fails
        except ArmError as e:
            log.warning(
                "cannot arm slice %s (retrying in %.0f s): %s", slice_.name, RETRY_PAUSE_S, e
            )
        else:
            self._ready.append(worker)
            self._notify()
            return
        finally:
            self._arming -= 1
            self._arm_gate.release()
        await asyncio.sleep(RETRY_PAUSE_S)
        self._wanted.set()

    async def _probe(self) -> None:
        """Decide once whether this workerd has a Worker Loader: start the loader outside any
        slice (it runs only our loader, no user code), and ask it once."""
        try:
            proc, files, _, connection = await self._launch(cgroup_procs=None)
        except ArmError as e:
            self.available = False
            log.error(
                "warm slices UNAVAILABLE, every job runs cold: "
                "the Worker Loader did not start (%s)",
                e,
            )
            self._notify()
            return
        if connection is not None:
            await connection.close()
        proc.kill()
        await proc.close()
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.available = True
        log.info("warm slices available: workerd serves jobs through its Worker Loader")

    async def _start_worker(self, slice_: Slice) -> WarmWorker:
        try:
            proc, files, port, connection = await self._launch(cgroup_procs=slice_.procs_file)
        except BaseException:
            with contextlib.suppress(OSError):
                slice_.trigger_kill()
            await self._pool.release(slice_)
            raise
        worker = WarmWorker(slice_, proc, files, port, connection, ready_at=time.monotonic())
        preload = self._wants_preload()
        if preload is not None:
            self._preloading += 1
            try:
                worker.preloaded = await self._preload_into(worker, *preload)
            finally:
                self._preloading -= 1
        return worker

    async def _preload_into(self, worker: WarmWorker, key: bytes, frame: bytes) -> bytes:
        """Have the loader start the code's isolate (its top level runs, nothing is called);
        returns the key, or raises ``ArmError`` with the slice released (the process is not
        plain any more: it is killed, and :meth:`_arm` tries again)."""
        try:
            async with asyncio.timeout(ARM_TIMEOUT_S):
                async with http1.Exchange(worker.port, frame, method="PUT") as exchange:
                    verdict = Verdict.from_header(exchange.headers.get(VERDICT_HEADER))
                    body = await exchange.read(64)
            if (verdict, body) == (Verdict.RESPONDED, b"preloaded"):
                return key
            problem = f"answered {verdict.value}: {body[:100]!r}"
        except (OSError, SandboxError) as e:  # TimeoutError and HttpError are OSErrors
            problem = f"{type(e).__name__}: {e}"
        self.kill(worker)
        worker.remove_files()
        await worker.proc.close()
        await self._pool.release(worker.slice)
        raise ArmError(f"pre-loading failed: {problem}")

    async def _launch(
        self, *, cgroup_procs: Path | None
    ) -> tuple[WorkerdProcess, tuple[Path, ...], int, http1.KeptConnection | None]:
        """Start the loader (from a binary config, else from its files, written here), ask it
        once; ``ArmError`` (all cleaned up) if that fails."""
        files: tuple[Path, ...] = ()
        proc: WorkerdProcess | None = None
        try:
            config: Path | bytes
            if self._configs is not None:
                config = self._configs.loader(LOADER_JS, port=0, outbound=self._outbound)
            else:
                stem = self._runtime_path / f"{FILE_PREFIX}loader-{secrets.token_hex(8)}"
                files = (stem.with_suffix(".js"), stem.with_suffix(".capnp"))
                write_new_file(files[0], LOADER_JS.encode())
                rendered = render_loader_config(
                    loader_file=files[0].name, port=0, outbound=self._outbound
                )
                write_new_file(files[1], rendered.encode())
                config = files[1]
            async with asyncio.timeout(ARM_TIMEOUT_S):
                proc, listening = await WorkerdProcess.start(
                    self._workerd_bin,
                    config,
                    cwd=self._runtime_path,
                    cgroup_procs=cgroup_procs,
                    extra_args=("--experimental",),
                    nice=ARM_NICE,
                )
                if listening is None:
                    raise ArmError(
                        f"workerd exited with status {proc.returncode}: {proc.stderr_tail()}"
                    )
                verdict, body, connection = await self._warm_up(listening)
            if (verdict, body) != (Verdict.RESPONDED, b"ready"):
                if connection is not None:
                    connection.writer.close()
                raise ArmError(f"warm-up answered {verdict.value}: {body[:200]!r}")
            proc.stdout.forget()
            proc.stderr.forget()
            proc.cap_memory(learn=True)  # from here on, what the job may add
            return proc, files, listening, connection
        except BaseException as e:
            if proc is not None:
                proc.kill()
                await proc.close()
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            if isinstance(e, ArmError):
                raise
            if isinstance(e, TimeoutError):
                raise ArmError(f"not ready within {ARM_TIMEOUT_S} s") from e
            if isinstance(e, (OSError, SandboxError)):
                raise ArmError(f"{type(e).__name__}: {e}") from e
            raise

    async def _warm_up(self, port: int) -> tuple[Verdict, bytes, http1.KeptConnection | None]:
        """The throwaway request that readies the loader's isolate (a GET: loads nothing), on a
        connection kept for the job's request."""
        async with http1.Exchange(port, b"", method="GET", keep_alive=True) as exchange:
            verdict = Verdict.from_header(exchange.headers.get(VERDICT_HEADER))
            body = await exchange.read(64)
            return verdict, body, exchange.keep()
