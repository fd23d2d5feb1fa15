"""Run one job's code in workerd, confined to a cgroup slice; turn what happens into a JobOutcome.

This implements the execution half of docs/protocol.md §3 (error codes 0, 3, 4, 5). Anything the
protocol has no code for raises ``SandboxError`` and the caller submits nothing.

A job takes one of two paths with the same semantics. Warm (the daemon's default): a workerd already
started in a free slice loads the code into a fresh isolate (:mod:`.warm`, :mod:`.loader`) and is
killed after this one job. Cold (``warm_workers = 0``, a workerd without Worker Loader, or a job
that finds no armed slice but a free one): workerd is spawned for the job in a free slice.

``total_time_ms`` is measured from the moment the sandbox takes the job (waiting for a free slice
when all are busy, which is normally no wait at all; on the cold path, writing the job's two files,
well under a millisecond, then spawning workerd) until the response body has been read. The
deadline runs on the same clock, so it bounds the wait for a slice, workerd's start-up, the request
and the response, and a job that hits it reports ``total_time_ms == deadline_ms``. Waiting for a
slice rather than failing at once matters: a job that gets no submission at all costs the operator
a slash.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from executor.errors import SandboxError
from executor.outcome import ErrorCode, JobOutcome
from executor.sandbox.admission import Admission
from executor.sandbox.capnp_config import BinaryConfigs
from executor.sandbox.cgroups import Slice, SlicePool
from executor.sandbox.loader import encode_frame, preload_key
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.paths import ColdPath, ExecutionPath, Job, WarmPath
from executor.sandbox.warm import WarmPool, WarmWorker
from executor.sandbox.workerd import ARM_NICE, lower_priority
from executor.supervisor import Supervisor

log = logging.getLogger(__name__)

LONG_JOB_S = 0.25
"""A job still running after this long is demoted to :data:`LONG_JOB_NICE` (``_Demotion``)."""
LONG_JOB_NICE = ARM_NICE


class Sandbox:
    """Executes untrusted JavaScript: one workerd per job, one cgroup slice per workerd.

    ``warm_workers`` slices (None: all) are kept armed for the next job (:mod:`.warm`; 0: every
    job starts workerd cold); :meth:`start` arms them, :meth:`close` releases them.
    ``outbound``: an optional budget of fetches and bytes received per job (:mod:`.outbound`;
    off by default). ``complete_logs=False`` (the daemon, which never reads them) returns a warm
    job's outcome as soon as its process is killed, with the logs read so far, instead of after
    the process exited.

    ``pool=None`` runs workerd UNCONFINED (no slice, so no cgroup limits; the in-process memory
    caps and the lower priority of :mod:`.workerd` still hold): for local development only.
    ``execute`` may run concurrently (each job holds its own slice) and may be cancelled at any
    point; either way the process is killed before it returns. On the cold path the slice is also
    released and the files removed by then; on the warm path that happens right after, in the
    background, before the slice is armed again.
    """

    def __init__(
        self,
        *,
        workerd_bin: Path,
        runtime_path: Path,
        secret_store_path: Path,
        pool: SlicePool | None,
        warm_workers: int | None = 0,
        complete_logs: bool = True,
        binary_configs: bool = True,
        outbound: OutboundBudget | None = None,
    ) -> None:
        self._outbound = outbound if outbound is not None and outbound.active else None
        workerd_bin = workerd_bin.absolute()  # workerd runs with the runtime folder as its cwd
        self._workerd_bin = workerd_bin
        self._complete_logs = complete_logs
        # Resolved once so that the secret's path relative to the config file is also its real path.
        self._runtime_path = runtime_path.resolve()
        self._secret_store_path = secret_store_path.resolve()
        self._pool = pool
        if not self._runtime_path.is_dir():
            raise SandboxError(f"workerd runtime folder {runtime_path} does not exist")
        if pool is None:
            log.warning(
                "sandbox is UNCONFINED: workerd runs outside any cgroup slice, "
                "without cgroup memory/cpu limits"
            )
        self.runs: collections.Counter[str] = collections.Counter()
        """Jobs that took each path ("warm", "cold") so far."""
        self.preloaded_runs = 0
        """Warm jobs whose code (and secret) had been pre-loaded in their process."""
        self._warm: WarmPool | None = None
        if pool is None and warm_workers != 0:
            log.info("no cgroup slices, so no warm slices: every job starts workerd cold")
        self._configs = BinaryConfigs.load(workerd_bin) if binary_configs else None
        """Binary workerd configs (:mod:`.capnp_config`), or ``None``: text configs."""
        if pool is not None and warm_workers != 0:
            self._warm = WarmPool(
                pool=pool,
                workerd_bin=workerd_bin,
                runtime_path=self._runtime_path,
                target=warm_workers,
                configs=self._configs,
                outbound=self._outbound,
            )
        self._admission = Admission(pool, self._warm) if pool is not None else None

    @property
    def pool(self) -> SlicePool | None:
        return self._pool

    @property
    def binary_configs(self) -> bool:
        """Whether workerd starts from binary configs (:mod:`.capnp_config`) rather than text."""
        return self._configs is not None

    @property
    def warm(self) -> WarmPool | None:
        """The warm slices, if this sandbox keeps any (see :mod:`executor.sandbox.warm`)."""
        return self._warm

    @property
    def slices(self) -> list[Slice]:
        return self._pool.slices if self._pool is not None else []

    @property
    def capacity(self) -> int:
        """Slices in service (what the slices gauge calls free + busy)."""
        return self._pool.capacity if self._pool is not None else 0

    @property
    def free_count(self) -> int:
        """Slices not running a job: unreserved ones and warm ones waiting for a job."""
        if self._pool is None:
            return 0
        idle = self._warm.idle_count if self._warm is not None else 0
        return self._pool.free_count + idle

    def start(self, supervisor: Supervisor | None = None) -> None:
        """Start arming the warm slices in the background (under ``supervisor``); returns at
        once."""
        if self._warm is not None:
            self._warm.start(supervisor)

    async def close(self) -> None:
        """Kill the warm processes and release their slices (running jobs finish on their own)."""
        if self._warm is not None:
            await self._warm.close()

    def secret_path(self, secret_id: int) -> Path | None:
        """The file a job with ``secret_id`` embeds (``None`` for 0); raises if it is missing."""
        if secret_id == 0:
            return None
        if secret_id < 0:
            raise SandboxError(f"invalid secret id {secret_id}")
        path = self._secret_store_path / f"{secret_id}.bin"
        if not path.is_file():
            raise SandboxError(f"secret {secret_id} not found: {path} does not exist")
        return path

    async def execute(
        self,
        code: bytes,
        inputs: bytes,
        *,
        deadline_ms: int,
        secret_id: int = 0,
        label: str = "",
    ) -> JobOutcome:
        """Run ``code`` once with ``inputs`` as the request body, within ``deadline_ms``."""
        name = f"job {label}" if label else "job"
        secret = self.secret_path(secret_id)
        # Read before a slot is taken: a warm job hands the bytes to the loader, a binary config
        # carries them.
        wanted = self._warm is not None or self._configs is not None
        job = Job(name, code, inputs, secret, _read_secret(name, secret) if wanted else None)
        key = preload_key(code, secret_id, job.secret) if self._warm is not None else None
        path: ExecutionPath | None = None
        demote: _Demotion | None = None
        extra_logs = ""
        if self._warm is not None:
            self._warm.job_started()
        try:
            started = time.monotonic()
            timeout = asyncio.timeout(deadline_ms / 1000)
            try:
                async with timeout:
                    path = await self._take_path(key)
                    demote = _Demotion(path)
                    self.runs[path.name] += 1
                    if isinstance(path, WarmPath) and path.preloaded:
                        self.preloaded_runs += 1
                    error_code, output, extra_logs = await path.run(job)
                    if key is not None and error_code == ErrorCode.OK and self._warm is not None:
                        # pre-loaded for its next job (see warm.WarmPool.remember)
                        self._warm.remember(key, encode_frame(code, b"", job.secret))
            except TimeoutError:
                if not timeout.expired():
                    raise
                error_code, output, elapsed_ms = ErrorCode.DEADLINE_EXCEEDED, b"", deadline_ms
            else:
                elapsed_ms = min(deadline_ms, int((time.monotonic() - started) * 1000))
        finally:
            if demote is not None:
                demote.cancel()
            try:
                if path is not None:
                    await _run_to_completion(path.finish())
            finally:
                if self._warm is not None:
                    self._warm.job_finished()
        where = path.name if path is not None else "no slot"
        log.debug("%s: error code %d in %d ms (%s)", name, error_code, elapsed_ms, where)
        proc = path.proc if path is not None else None
        return JobOutcome(
            output=output,
            error_code=error_code,
            total_time_ms=elapsed_ms,
            logs=(proc.logs() if proc is not None else "") + extra_logs,
        )

    async def _take_path(self, key: bytes | None) -> ExecutionPath:
        """The path of the next job: a warm worker's, else a cold start in a free slice."""
        worker, slice_ = await self._take_slot(key)
        if worker is not None:
            assert self._warm is not None
            return WarmPath(self._warm, worker, complete_logs=self._complete_logs)
        return ColdPath(
            workerd_bin=self._workerd_bin,
            runtime_path=self._runtime_path,
            configs=self._configs,
            pool=self._pool,
            slice_=slice_,
            warm=self._warm,
            outbound=self._outbound,
        )

    async def _take_slot(self, key: bytes | None) -> tuple[WarmWorker | None, Slice | None]:
        """A warm worker, else a free slice for a cold start, queueing while there is neither."""
        if self._admission is None:
            return None, None
        return await self._admission.take(key)


class _Demotion:
    """After :data:`LONG_JOB_S` of running, a job's workerd drops to the lowest priority
    (:data:`LONG_JOB_NICE`): where no cpu controller divides the CPU, jobs that spin do not
    crowd out the short ones that arrive with them (a block of 19 spinners and one normal job),
    and the daemon keeps its own priority above them all."""

    def __init__(self, path: ExecutionPath) -> None:
        self._path = path
        self._handle = asyncio.get_running_loop().call_later(LONG_JOB_S, self._fire)

    def _fire(self) -> None:
        proc = self._path.proc
        if proc is None:  # a cold start not started yet: look again shortly
            self._handle = asyncio.get_running_loop().call_later(LONG_JOB_S / 4, self._fire)
            return
        if proc.returncode is None:
            lower_priority(proc.pid, LONG_JOB_NICE)

    def cancel(self) -> None:
        self._handle.cancel()


def _read_secret(job: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise SandboxError(f"{job}: cannot read its secret {path}: {e.strerror}") from e


async def _run_to_completion(cleanup: Coroutine[Any, Any, None]) -> None:
    """Await ``cleanup`` to its end even if this task is cancelled meanwhile, then re-raise.

    Clean-up is bounded (kills are SIGKILL, waits have timeouts), so deferring a cancellation until
    it is done cannot hang the caller; abandoning it halfway could leak a process or a slice.
    """
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
