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
import re
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from executor.errors import NoFreeSliceError, SandboxError
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode, JobOutcome
from executor.sandbox import http1
from executor.sandbox.capnp_config import BinaryConfigs
from executor.sandbox.cgroups import Slice, SlicePool
from executor.sandbox.loader import (
    COLD_500_BODY,
    HANDLER_SHAPE,
    NO_HANDLER,
    NOT_A_HANDLER,
    Verdict,
    encode_frame,
)
from executor.sandbox.warm import WarmPool, WarmWorker
from executor.sandbox.workerd import JobFiles, WorkerdProcess

log = logging.getLogger(__name__)

SLOT_POLL_S = 0.05
"""While every slice is busy, how often a waiting job looks again (releases also wake it)."""


class Sandbox:
    """Executes untrusted JavaScript: one workerd per job, one cgroup slice per workerd.

    ``warm_workers`` slices (None: all) are kept armed for the next job (:mod:`.warm`; 0: every
    job starts workerd cold); :meth:`start` arms them, :meth:`close` releases them.
    ``complete_logs=False`` (the daemon, which never reads them) returns a warm job's outcome as
    soon as its process is killed, with the logs read so far, instead of after the process exited.

    ``pool=None`` runs workerd UNCONFINED (no slice, no resource limits, an ephemeral port): for
    local development only. ``execute`` may run concurrently (each job holds its own slice) and may
    be cancelled at any point; either way the process is killed before it returns. On the cold
    path the slice is also released and the files removed by then; on the warm path that happens
    right after, in the background, before the slice is armed again.
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
    ) -> None:
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
                "without memory/cpu limits"
            )
        self.runs: collections.Counter[str] = collections.Counter()
        """Jobs that took each path ("warm", "cold") so far."""
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
            )

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

    def start(self) -> None:
        """Start arming the warm slices in the background; returns at once."""
        if self._warm is not None:
            self._warm.start()

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
        job = f"job {label}" if label else "job"
        secret = self.secret_path(secret_id)
        # Read before a slot is taken: a warm job hands the bytes to the loader, a binary config
        # carries them.
        wanted = self._warm is not None or self._configs is not None
        secret_bytes = _read_secret(job, secret) if wanted else None
        slice_: Slice | None = None
        files: JobFiles | None = None
        proc: WorkerdProcess | None = None
        worker: WarmWorker | None = None
        extra_logs = ""
        if self._warm is not None:
            self._warm.job_started()
        try:
            started = time.monotonic()
            timeout = asyncio.timeout(deadline_ms / 1000)
            try:
                async with timeout:
                    worker, slice_ = await self._take_slot()
                    self.runs["warm" if worker is not None else "cold"] += 1
                    if worker is not None:
                        assert self._warm is not None
                        proc = worker.proc
                        frame = encode_frame(code, inputs, secret_bytes)
                        verdict, body = await self._warm.request(worker, frame)
                    else:
                        listen = slice_.port if slice_ is not None else 0
                        config: Path | bytes | None = None
                        if self._configs is not None:
                            config = self._configs.job(code, port=listen, secret=secret_bytes)
                        if config is None:
                            files = self._write_files(job, code, slice_, secret)
                            config = files.config
                        proc = await WorkerdProcess.spawn(
                            self._workerd_bin,
                            config,
                            cwd=self._runtime_path,
                            cgroup_procs=slice_.procs_file if slice_ is not None else None,
                        )
                        port = await proc.wait_listening()
                        if port is None:
                            await proc.wait()
                            await asyncio.wait([proc.stderr.task])  # all of stderr, uncancelled
                        else:
                            body = await http1.post(port, inputs, limit=MAX_OUTPUT_BYTES + 1)
            except TimeoutError:
                if not timeout.expired():
                    raise
                error_code, output, elapsed_ms = ErrorCode.DEADLINE_EXCEEDED, b"", deadline_ms
            except http1.HttpError as e:
                if "broke" in str(e):  # what workerd does to a module without a handler
                    raise SandboxError(
                        f"{job}: workerd sent no response, as for a module without a default "
                        f"fetch handler: {HANDLER_SHAPE}"
                    ) from e
                raise SandboxError(f"{job}: request to workerd failed: {e}") from e
            except OSError as e:  # after TimeoutError and HttpError, which are OSErrors too
                raise SandboxError(f"{job}: cannot start workerd: {e}") from e
            else:
                elapsed_ms = min(deadline_ms, int((time.monotonic() - started) * 1000))
                if worker is not None:
                    error_code, output, extra_logs = _warm_outcome(job, verdict, body)
                elif port is None:
                    assert proc is not None
                    if b"SyntaxError" not in proc.stderr.data:
                        shape = f"; {HANDLER_SHAPE}" if NOT_A_HANDLER in proc.stderr.data else ""
                        raise SandboxError(
                            f"{job}: workerd exited with status {proc.returncode} before "
                            f"listening: {proc.stderr_tail()}{shape}"
                        )
                    error_code, output = ErrorCode.SYNTAX_ERROR, b""
                elif len(body) > MAX_OUTPUT_BYTES:
                    error_code, output = ErrorCode.OUTPUT_TOO_LARGE, b""
                else:
                    error_code, output = ErrorCode.OK, body
        finally:
            try:
                if worker is not None:
                    await _run_to_completion(self._finish_warm(worker))
                else:
                    await _run_to_completion(self._clean_up(proc, slice_, files))
            finally:
                if self._warm is not None:
                    self._warm.job_finished()
        log.debug(
            "%s: error code %d in %d ms (%s)",
            job,
            error_code,
            elapsed_ms,
            "warm" if worker is not None else "cold",
        )
        return JobOutcome(
            output=output,
            error_code=error_code,
            total_time_ms=elapsed_ms,
            logs=(proc.logs() if proc is not None else "") + extra_logs,
        )

    async def _take_slot(self) -> tuple[WarmWorker | None, Slice | None]:
        """A warm worker, else a free slice for a cold start, waiting while there is neither."""
        if self._pool is None:
            return None, None
        warm = self._warm
        if warm is None or not warm.active:
            return None, await self._pool.acquire()
        warm.waiting += 1
        try:
            while warm.active:
                worker = warm.take()
                if worker is not None:
                    return worker, None
                try:
                    return None, self._pool.reserve()
                except NoFreeSliceError:
                    if self._pool.capacity == 0:
                        raise
                await warm.wait_changed(SLOT_POLL_S)
        finally:
            warm.waiting -= 1
            if warm.waiting == 0:
                warm.slice_freed()  # nobody waits: the keeper may arm again
        return None, await self._pool.acquire()

    async def _finish_warm(self, worker: WarmWorker) -> None:
        """Kill the job's process (at once: it can run nothing more), then re-arm its slice in
        the background; with ``complete_logs``, first read its output to the end."""
        assert self._warm is not None
        self._warm.kill(worker)
        try:
            if self._complete_logs:
                await worker.proc.close()
        finally:
            self._warm.retire_later(worker)

    def _write_files(
        self, job: str, code: bytes, slice_: Slice | None, secret: Path | None
    ) -> JobFiles:
        try:
            return JobFiles.write(
                self._runtime_path,
                code,
                port=slice_.port if slice_ is not None else 0,
                secret_path=secret,
            )
        except OSError as e:
            raise SandboxError(f"{job}: cannot write its files: {e}") from e

    async def _clean_up(
        self, proc: WorkerdProcess | None, slice_: Slice | None, files: JobFiles | None
    ) -> None:
        try:
            if proc is not None:
                proc.kill()
            if files is not None:
                files.remove()
            if proc is not None:
                # Reaped before the slice is free again: an empty cgroup.procs does not prove
                # that every thread has exited, and the next job in this slice needs its port.
                await proc.close()
        finally:
            if slice_ is not None:
                assert self._pool is not None
                await self._pool.release(slice_)
                if self._warm is not None:
                    self._warm.slice_freed()


def _read_secret(job: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise SandboxError(f"{job}: cannot read its secret {path}: {e.strerror}") from e


def _warm_outcome(job: str, verdict: Verdict, body: bytes) -> tuple[ErrorCode, bytes, str]:
    """The cold path's outcome for what the loader reported: (error code, output, extra logs)."""
    if verdict is Verdict.RESPONDED:
        if len(body) > MAX_OUTPUT_BYTES:
            return ErrorCode.OUTPUT_TOO_LARGE, b"", ""
        return ErrorCode.OK, body, ""
    report = body.decode("utf-8", errors="replace")
    if verdict is Verdict.EXCEPTION:  # cold: workerd answers 500 with this body
        return ErrorCode.OK, COLD_500_BODY, ""
    if verdict is Verdict.NO_HANDLER:  # cold: workerd drops the request -> no submission
        raise SandboxError(f"{job}: {NO_HANDLER}: {HANDLER_SHAPE}")
    if verdict is Verdict.START_SYNTAX:  # cold: workerd exits before listening, SyntaxError
        return ErrorCode.SYNTAX_ERROR, b"", report + "\n"
    # cold: workerd exits before listening for another reason
    tail = re.sub(r"[^\x20-\x7e]+", " ", report[-400:]).strip()
    shape = f"; {HANDLER_SHAPE}" if NOT_A_HANDLER.decode() in report else ""
    raise SandboxError(f"{job}: the code failed to start (before listening, cold): {tail}{shape}")


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
