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
the sandbox over some milliseconds, not at once), so an idle node keeps every slice warm.

Whether this workerd has a Worker Loader at all is decided once, at start, by a probe on an
ephemeral port: if it has not (no ``--experimental`` / ``workerLoader``), the pool says so in the
log and stands down, and every job takes the cold path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Coroutine
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
from executor.sandbox.workerd import FILE_PREFIX, WorkerdProcess, write_new_file

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
ARM_QUIET_S = 0.1
"""Nothing is armed until this long after a job last started or finished."""


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
    ) -> None:
        self._pool = pool
        self._configs = configs
        self._workerd_bin = workerd_bin
        self._runtime_path = runtime_path
        self.target = pool.capacity if target is None else min(target, pool.capacity)
        self._ready: deque[WarmWorker] = deque()
        self._arming = 0
        self.available: bool | None = None if self.target > 0 else False
        """``None`` until the start-up probe tells; ``False``: this workerd has no loader."""
        self._changed = asyncio.Event()  # a worker got ready, a slice freed, or stood down
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None

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

    def start(self) -> None:
        """Start arming in the background (returns at once)."""
        if self._keeper is not None or self.target == 0:
            return
        self._keeper = asyncio.ensure_future(self._keep())
        self._wanted.set()
        log.info("warm slices: arming %d of %d in the background", self.target, self._pool.capacity)

    async def close(self) -> None:
        """Stop arming, kill every warm process and release its slice; waits for all of it."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        while self._tasks:  # armings in progress end by themselves (bounded by ARM_TIMEOUT_S)
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._ready:
            await self.retire(self._ready.popleft())
        self._changed.set()

    def take(self) -> WarmWorker | None:
        """A ready worker for one job, now; ``None`` if none is ready."""
        while self._ready:
            worker = self._ready.pop()  # the most recently armed: its connection is the freshest
            if worker.proc.returncode is None:
                self._wanted.set()
                return worker
            log.warning("warm workerd in %s died while idle; re-arming", worker.slice.name)
            self._background(self.retire(worker), f"retire {worker.slice.name}")
        return None

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
        self._changed.set()
        self._wanted.set()

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

    # --- the keeper ------------------------------------------------------------------------

    async def _keep(self) -> None:
        await self._probe()
        while self.available is not False:
            with contextlib.suppress(TimeoutError):  # also polls: another process may free one
                async with asyncio.timeout(self._until_quiet_s() or KEEPER_POLL_S):
                    await self._wanted.wait()
            self._wanted.clear()
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
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _arm(self, slice_: Slice) -> None:
        try:
            worker = await self._start_worker(slice_)  # releases the slice if it fails
        except ArmError as e:
            log.warning(
                "cannot arm slice %s (retrying in %.0f s): %s", slice_.name, RETRY_PAUSE_S, e
            )
        else:
            self._ready.append(worker)
            self._changed.set()
            return
        finally:
            self._arming -= 1
            self._arm_gate.release()
        await asyncio.sleep(RETRY_PAUSE_S)
        self._wanted.set()

    async def _probe(self) -> None:
        """Decide once whether this workerd has a Worker Loader: start the loader on an ephemeral
        port, outside any slice (it runs only our loader, no user code), and ask it once.

        A slice's own port may be taken for a while (another process): that is a reason to retry
        that slice, not to give up on warm slices.
        """
        try:
            proc, files, _, connection = await self._launch(port=0, cgroup_procs=None)
        except ArmError as e:
            self.available = False
            log.error(
                "warm slices UNAVAILABLE, every job runs cold: "
                "the Worker Loader did not start (%s)",
                e,
            )
            self._changed.set()
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
            proc, files, port, connection = await self._launch(
                port=slice_.port, cgroup_procs=slice_.procs_file
            )
        except BaseException:
            with contextlib.suppress(OSError):
                slice_.trigger_kill()
            await self._pool.release(slice_)
            raise
        return WarmWorker(slice_, proc, files, port, connection)

    async def _launch(
        self, *, port: int, cgroup_procs: Path | None
    ) -> tuple[WorkerdProcess, tuple[Path, ...], int, http1.KeptConnection | None]:
        """Start the loader (from a binary config, else from its files, written here), ask it
        once; ``ArmError`` (all cleaned up) if that fails."""
        files: tuple[Path, ...] = ()
        proc: WorkerdProcess | None = None
        try:
            config: Path | bytes
            if self._configs is not None:
                config = self._configs.loader(LOADER_JS, port=port)
            else:
                stem = self._runtime_path / f"{FILE_PREFIX}loader-{secrets.token_hex(8)}"
                files = (stem.with_suffix(".js"), stem.with_suffix(".capnp"))
                write_new_file(files[0], LOADER_JS.encode())
                rendered = render_loader_config(loader_file=files[0].name, port=port)
                write_new_file(files[1], rendered.encode())
                config = files[1]
            async with asyncio.timeout(ARM_TIMEOUT_S):
                proc = await WorkerdProcess.spawn(
                    self._workerd_bin,
                    config,
                    cwd=self._runtime_path,
                    cgroup_procs=cgroup_procs,
                    extra_args=("--experimental",),
                )
                listening = await proc.wait_listening()
                if listening is None:
                    await proc.wait()
                    await asyncio.wait([proc.stderr.task])
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
