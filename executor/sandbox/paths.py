"""The two ways a job runs, behind one interface: :class:`WarmPath` and :class:`ColdPath`.

A path is made for one job once the sandbox holds its slot (a warm worker, or a free slice, or
nothing when unconfined). :meth:`run` executes the job and returns its error code, output and
extra logs; it raises ``SandboxError`` for what the protocol has no code for (no submission).
:meth:`finish` always follows, even after a cancellation, and gives the slot back.

Both paths decide an exhausted memory the same way (:func:`memory_exhausted`): when workerd ends
under a job, the answer is the one a cold workerd killed under its cgroup limit gets in the
original executor, errorCode 0 with ``Internal Server Error``, but only on evidence the job cannot
fake: the slice's ``memory.events`` counted an OOM kill during the job, or the process ended by
itself the way workerd ends when its memory runs out (``WorkerdProcess.ended_out_of_memory``: its
last words and the way it exited). Without such evidence it is a host fault:
``WorkerdCrashError``, nothing submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from executor.errors import SandboxError, WorkerdCrashError
from executor.outcome import MAX_OUTPUT_BYTES, ErrorCode
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
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.warm import WarmPool, WarmWorker
from executor.sandbox.workerd import (
    TRIVIAL_JS,
    JobFiles,
    WorkerdProcess,
    knows_ready_data,
    learn_ready_data,
    render_config,
)

log = logging.getLogger(__name__)

EXIT_WAIT_S = 2.0
NO_RESPONSE = b"the handler sent no response"
"""What workerd logs when it drops a request its module has no handler for (it stays up)."""
"""After a broken request, how long workerd may take to finish dying (its crash handler prints a
stack trace first) before the evidence is judged; the job's deadline bounds it too."""

Result = tuple[ErrorCode, bytes, str]
"""(error code, output, extra logs) of one job."""


@dataclass(frozen=True)
class Job:
    """What one execution needs: the code, the request body, the secret (path and bytes)."""

    label: str
    code: bytes
    inputs: bytes
    secret_path: Path | None
    secret: bytes | None


class ExecutionPath(Protocol):
    name: str
    """``warm`` or ``cold`` (the ``sandbox_runs`` metric's label)."""

    @property
    def proc(self) -> WorkerdProcess | None:
        """The job's workerd, once there is one (its logs go into the outcome)."""

    async def run(self, job: Job) -> Result: ...

    async def finish(self) -> None: ...


class WarmPath:
    """The job goes to a warm worker's loader, whose process is killed after it."""

    name = "warm"

    def __init__(self, warm: WarmPool, worker: WarmWorker, *, complete_logs: bool) -> None:
        self._warm = warm
        self._worker = worker
        self._complete_logs = complete_logs
        self._oom_kills = worker.slice.oom_kills()

    @property
    def proc(self) -> WorkerdProcess:
        return self._worker.proc

    @property
    def preloaded(self) -> bool:
        """Whether the job's code was pre-loaded in the process (see :mod:`.warm`)."""
        return self._worker.preloaded is not None

    async def run(self, job: Job) -> Result:
        frame = encode_frame(job.code, job.inputs, job.secret)
        try:
            verdict, body = await self._warm.request(self._worker, frame)
        except http1.HttpError as e:
            if await memory_exhausted(self.proc, self._worker.slice, self._oom_kills):
                return _out_of_memory(job, self.proc)
            raise _crashed(job, self.proc, f"request to workerd failed: {e}") from e
        return _warm_outcome(job.label, verdict, body)

    async def finish(self) -> None:
        """Have the job's process killed and its slice re-armed in the background, a few ms
        later (``warm.RETIRE_AFTER_S``: its teardown would compete with the output's sending);
        with ``complete_logs``, kill it at once and read its output to the end first."""
        if not self._complete_logs:
            self._warm.retire_soon(self._worker)
            return
        self._warm.kill(self._worker)
        try:
            await self._worker.proc.close()
        finally:
            self._warm.retire_later(self._worker)


class ColdPath:
    """workerd is started for the job, in ``slice_`` (``None``: unconfined), and killed after."""

    name = "cold"

    def __init__(
        self,
        *,
        workerd_bin: Path,
        runtime_path: Path,
        configs: BinaryConfigs | None,
        pool: SlicePool | None,
        slice_: Slice | None,
        warm: WarmPool | None,
        outbound: OutboundBudget | None = None,
    ) -> None:
        self._outbound = outbound
        self._workerd_bin = workerd_bin
        self._runtime_path = runtime_path
        self._configs = configs
        self._pool = pool
        self._slice = slice_
        self._warm = warm
        self._files: JobFiles | None = None
        self._proc: WorkerdProcess | None = None
        self._oom_kills = slice_.oom_kills() if slice_ is not None else None

    @property
    def proc(self) -> WorkerdProcess | None:
        return self._proc

    async def run(self, job: Job) -> Result:
        if not knows_ready_data(self._workerd_bin):  # once: bounds the top level of every job
            trivial: bytes | str | None = None
            if self._configs is not None:
                trivial = self._configs.job(TRIVIAL_JS.encode(), port=0, secret=None)
            if trivial is None:
                trivial = render_config(code_file="@CODE@", port=0)
            await learn_ready_data(self._workerd_bin, trivial, self._runtime_path)
        config: Path | bytes | None = None
        if self._configs is not None:
            config = self._configs.job(job.code, port=0, secret=job.secret, outbound=self._outbound)
        try:
            if config is None:
                try:
                    self._files = JobFiles.write(
                        self._runtime_path,
                        job.code,
                        port=0,
                        secret_path=job.secret_path,
                        outbound=self._outbound,
                    )
                except OSError as e:
                    raise SandboxError(f"{job.label}: cannot write its files: {e}") from e
                config = self._files.config
            self._proc, port = await WorkerdProcess.start(
                self._workerd_bin,
                config,
                cwd=self._runtime_path,
                cgroup_procs=self._slice.procs_file if self._slice is not None else None,
            )
            proc = self._proc
            if port is None:
                if b"SyntaxError" in proc.stderr.data and not proc.ended_out_of_memory():
                    return ErrorCode.SYNTAX_ERROR, b"", ""
                if await memory_exhausted(proc, self._slice, self._oom_kills):
                    return _out_of_memory(job, proc)
                shape = f"; {HANDLER_SHAPE}" if NOT_A_HANDLER in proc.stderr.data else ""
                raise SandboxError(
                    f"{job.label}: workerd exited with status {proc.returncode} before "
                    f"listening: {proc.stderr_tail()}{shape}"
                )
            proc.cap_memory()
            try:
                body = await http1.post(port, job.inputs, limit=MAX_OUTPUT_BYTES + 1)
            except http1.HttpError as e:
                if await memory_exhausted(proc, self._slice, self._oom_kills):
                    return _out_of_memory(job, proc)
                if proc.returncode is None and NO_RESPONSE in proc.stderr.data:
                    # workerd alive, request dropped: what it does to a module without a handler
                    raise SandboxError(
                        f"{job.label}: workerd sent no response, as for a module without a "
                        f"default fetch handler: {HANDLER_SHAPE}"
                    ) from e
                raise _crashed(job, proc, f"request to workerd failed: {e}") from e
        except OSError as e:  # not TimeoutError: the caller's deadline
            if isinstance(e, TimeoutError):
                raise
            raise SandboxError(f"{job.label}: cannot start workerd: {e}") from e
        if len(body) > MAX_OUTPUT_BYTES:
            return ErrorCode.OUTPUT_TOO_LARGE, b"", ""
        return ErrorCode.OK, body, ""

    async def finish(self) -> None:
        try:
            if self._proc is not None:
                self._proc.kill()
            if self._files is not None:
                self._files.remove()
            if self._proc is not None:
                # Reaped before the slice is free again: an empty cgroup.procs does not prove
                # that every thread has exited.
                await self._proc.close()
        finally:
            if self._slice is not None:
                assert self._pool is not None
                await self._pool.release(self._slice)
                if self._warm is not None:
                    self._warm.slice_freed()


async def memory_exhausted(
    proc: WorkerdProcess, slice_: Slice | None, oom_kills_before: int | None
) -> bool:
    """Whether ``proc`` ended because its job exhausted its memory (see the module docstring).

    Waits (at most :data:`EXIT_WAIT_S`) for the process to end and its stderr to close first: a
    process still running after that did not die of its job's memory.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(EXIT_WAIT_S):
            await proc.wait()
            await asyncio.wait([proc.stderr.task])
    if proc.returncode is None:
        return False
    if slice_ is not None and oom_kills_before is not None:
        after = slice_.oom_kills()
        if after is not None and after > oom_kills_before:
            return True
    return proc.ended_out_of_memory()


def _out_of_memory(job: Job, proc: WorkerdProcess) -> Result:
    log.warning(
        "%s: exhausted its memory (workerd status %s): answered %r",
        job.label,
        proc.returncode,
        COLD_500_BODY.decode(),
    )
    return ErrorCode.OK, COLD_500_BODY, ""


def _crashed(job: Job, proc: WorkerdProcess, what: str) -> WorkerdCrashError:
    return WorkerdCrashError(
        f"{job.label}: {what}; workerd status {proc.returncode}, no evidence the job exhausted "
        f"its memory (a host fault): {proc.stderr_tail()}"
    )


def _warm_outcome(job: str, verdict: Verdict, body: bytes) -> Result:
    """The cold path's outcome for what the loader reported."""
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
