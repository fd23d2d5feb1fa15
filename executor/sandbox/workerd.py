"""workerd for one job: config, spawn (into a slice), readiness, the request, output captures.

Placement into a cgroup slice happens in the child before workerd is executed, through a tiny
shell wrapper::

    /bin/sh -c 'echo $$ > "$0" && exec "$@"' <slice>/cgroup.procs <workerd> serve <config> ...

The shell moves itself into the slice and then *becomes* workerd (same pid), so workerd's first
instruction, and every thread it ever starts, is already confined. If the write fails the shell
exits with an error and workerd never runs (fail closed). The alternatives are worse: ``cgexec``
is not installed everywhere; moving the pid from the parent after spawning leaves a window in
which workerd runs unconfined; ``preexec_fn`` runs Python in the forked child, which is unsafe
while other threads run (the asyncio child watcher, executors) and forces the slow fork path.
The wrapper costs one exec of ``/bin/sh`` (about a millisecond).

Exits are learnt through pidfds: asyncio's default from Python 3.12 on, and on 3.11
:class:`PidfdExitWatcher` rather than 3.11's default, a thread per child that the event loop waits
for to start (with a workerd per job, a thread start on the loop for every job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.sandbox.outbound import SERVICE as OUTBOUND_SERVICE
from executor.sandbox.outbound import OutboundBudget

log = logging.getLogger(__name__)

CAPTURE_LIMIT = 64 * 1024
"""Bytes of workerd's stdout and of its stderr kept (each); the rest is read and dropped."""
TAIL_LIMIT = 16 * 1024
"""Bytes kept of the end of each output, whatever came before (workerd's dying words)."""

JOB_HEAP_MB = 48
"""V8's heap cap for every isolate of a job's workerd (``--max-heap-size``): with workerd's own
~50 MB this keeps a heap-bloating job within the slice's ``memory.max`` of 100M on any host."""
JOB_DATA_BUDGET = 80 * 1024 * 1024
"""Bytes of writable private memory (``RLIMIT_DATA``) a job's workerd may add to what it had when
it got ready: bounds what the heap cap does not (``ArrayBuffer`` contents, Wasm memory)."""
JOB_NICE = 10
"""How much nicer than the daemon every workerd runs (a lower scheduling priority, at most nice
19): signing, submitting and the timeout watch keep their timing under a full load of spinning
jobs, and so does the re-arming of warm slices (workerd start-ups)."""
ARM_NICE = 19
"""The nice value of a warm slice's workerd while it starts and waits (the lowest priority): its
start-up CPU does not compete with running jobs; it gets :func:`job_nice` when a job takes it."""
V8_FLAGS = (f"--max-heap-size={JOB_HEAP_MB}",)
"""The ``v8Flags`` of every workerd config."""

COMPATIBILITY_DATE = "2023-03-07"
FILE_PREFIX = "oyster-job-"
"""Every per-execution file in the runtime folder starts with this."""

_PLACE_AND_EXEC = 'echo $$ > "$0" && exec "$@"'
_CHILD_ENV = {"PATH": "/usr/bin:/bin"}  # nothing of the daemon's environment reaches workerd


def capnp_string(value: str) -> str:
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"control character in a config string: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(
    *,
    code_file: str,
    port: int,
    secret_file: str | None = None,
    outbound: OutboundBudget | None = None,
) -> str:
    """The Cap'n Proto text config of docs/protocol.md §4.

    ``code_file`` and ``secret_file`` are embedded, so they are paths relative to the config file's
    folder. ``port`` 0 lets the kernel pick a free port (reported through the control fd). An
    active ``outbound`` budget routes the worker's ``fetch`` through its counting worker.
    """
    bindings = ""
    if secret_file is not None:
        bindings = (
            f'\n  bindings = [ (name = "secret", data = embed {capnp_string(secret_file)}) ],'
        )
    services, worker_outbound = outbound_parts(outbound)
    bindings += worker_outbound
    return f"""using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .mainWorker){services} ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
  v8Flags = [ {", ".join(capnp_string(flag) for flag in V8_FLAGS)} ],
);

const mainWorker :Workerd.Worker = (
  modules = [ (name = "main", esModule = embed {capnp_string(code_file)}) ],
  compatibilityDate = "{COMPATIBILITY_DATE}",{bindings}
);
"""


def outbound_parts(outbound: OutboundBudget | None) -> tuple[str, str]:
    """For a text config: the counting worker's service entry (after the main one) and the main
    worker's ``globalOutbound`` line; both empty without an active budget."""
    if outbound is None or not outbound.active:
        return "", ""
    service = (
        f', (name = "{OUTBOUND_SERVICE}", worker = (modules = [ (name = "outbound", '
        f"esModule = {capnp_string(outbound.worker_js())}) ], "
        f'compatibilityDate = "{COMPATIBILITY_DATE}"))'
    )
    return service, f'\n  globalOutbound = "{OUTBOUND_SERVICE}",'


@dataclass(frozen=True)
class JobFiles:
    """The code and config files of one execution, named uniquely inside the runtime folder."""

    code: Path
    config: Path

    @classmethod
    def write(
        cls,
        runtime_dir: Path,
        code: bytes,
        *,
        port: int,
        secret_path: Path | None,
        outbound: OutboundBudget | None = None,
    ) -> JobFiles:
        """Write both files; ``runtime_dir`` and ``secret_path`` must be resolved (no symlinks)."""
        stem = FILE_PREFIX + secrets.token_hex(8)
        files = cls(code=runtime_dir / f"{stem}.js", config=runtime_dir / f"{stem}.capnp")
        secret_rel = None if secret_path is None else os.path.relpath(secret_path, runtime_dir)
        config = render_config(
            code_file=files.code.name, port=port, secret_file=secret_rel, outbound=outbound
        )
        try:
            write_new_file(files.code, code)
            write_new_file(files.config, config.encode())
        except BaseException:
            files.remove()
            raise
        return files

    def remove(self) -> None:
        for path in (self.code, self.config):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def binary_config_fd(message: bytes) -> tuple[int, list[str]]:
    """A memfd holding a binary config message, and the ``serve`` arguments that name it (the
    fd must reach workerd under the same number: ``pass_fds``). The caller closes the fd."""
    fd = os.memfd_create("workerd-config", os.MFD_CLOEXEC)
    try:
        write_all(fd, message)
    except BaseException:
        os.close(fd)
        raise
    return fd, ["--binary", f"/proc/self/fd/{fd}"]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class BoundedCapture:
    """Drains one output pipe to EOF, keeping only its first ``limit`` bytes.

    ``watch``, if given, is looked for in everything read (kept or not, across reads):
    :attr:`watched` tells whether it was seen.
    """

    def __init__(
        self,
        stream: asyncio.StreamReader,
        limit: int = CAPTURE_LIMIT,
        watch: re.Pattern[bytes] | None = None,
    ) -> None:
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0
        self._limit = limit
        self.tail = b""
        """The last :data:`TAIL_LIMIT` bytes read, kept even when the limit dropped them."""
        self._watch = watch
        self.watched = False
        self.task = asyncio.ensure_future(self._drain(stream))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if self._watch is not None and not self.watched:
                # the end of the tail so far: a match split between two reads is still seen
                self.watched = self._watch.search(self.tail[-_WATCH_OVERLAP:] + chunk) is not None
            self.tail = (self.tail + chunk)[-TAIL_LIMIT:]
            room = self._limit - self._kept
            if room > 0:
                self._chunks.append(chunk[:room])
                self._kept += min(room, len(chunk))
            self.dropped += max(0, len(chunk) - max(room, 0))

    def forget(self) -> None:
        """Drop what was kept so far (a warm process's start-up), restarting the limit."""
        self._chunks.clear()
        self._kept = 0
        self.dropped = 0
        self.tail = b""
        self.watched = False

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[... {self.dropped} more bytes not kept]\n"
        return text


_NEEDS_OWN_WATCHER = sys.version_info < (3, 12)
"""Python 3.11's default child watcher starts a thread per child; from 3.12 on, asyncio watches
children through pidfds on the running loop by itself (and 3.14 removes the watcher API)."""

if _NEEDS_OWN_WATCHER:

    class PidfdExitWatcher(asyncio.AbstractChildWatcher):
        """asyncio's child watcher on pidfds (Linux 5.3+), for Python 3.11 only: it serves the
        running loop of each spawn (3.11's own ``PidfdChildWatcher`` serves the one loop it was
        attached to), as the default watcher of later Pythons does."""

        def is_active(self) -> bool:
            return True

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> PidfdExitWatcher:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def add_child_handler(  # type: ignore[override]  # (the stub's TypeVarTuple form)
            self, pid: int, callback: Callable[..., object], *args: Any
        ) -> None:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, self._exited, loop, pid, pidfd, callback, args)

        def remove_child_handler(self, pid: int) -> bool:
            return False  # asyncio calls this only for watchers that reap on their own schedule

        @staticmethod
        def _exited(
            loop: asyncio.AbstractEventLoop,
            pid: int,
            pidfd: int,
            callback: Callable[..., object],
            args: tuple[Any, ...],
        ) -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                _, status = os.waitpid(pid, 0)
                returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                returncode = 255  # reaped elsewhere; asyncio reports the same
            callback(pid, returncode, *args)


_exit_watcher_installed = False


def use_pidfd_exit_watcher() -> None:
    """On Python 3.11, install :class:`PidfdExitWatcher` for this process (idempotent); where
    the kernel has no pidfds, asyncio's default stays. Later Pythons need nothing."""
    global _exit_watcher_installed
    if _exit_watcher_installed or not _NEEDS_OWN_WATCHER:
        return
    _exit_watcher_installed = True
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        log.info("no pidfds here: child exits are watched by asyncio's default (a thread each)")
        return
    asyncio.set_child_watcher(PidfdExitWatcher())


_V8_FATAL_OOM = re.compile(
    # workerd's handler of V8's fatal errors (the heap cap, most often), then its crash handler
    rb"fatal: V8 fatal error; location = [^\n]*; message = [^\n]*"
    rb"(?:out of memory|Reached heap limit)[^\n]*\n"
    rb"\*\*\* Received signal #6: Aborted\nstack:[^\n]*\n*\Z"
)
_CRASHED = re.compile(
    rb"\*\*\* Received signal #(?:6: Aborted|11: Segmentation fault)\nstack:[^\n]*\n*\Z"
)
"""The crash handler's last words after an abort or a segfault; it then exits with status 1."""
ALLOCATOR_FAILED = re.compile(
    rb"Unable to allocate \d+ \(new failed\)"
    rb"|tcmalloc: allocation failed \d+"
    rb"|\] mprotect\([^)\n]*\) failed \(Cannot allocate memory\)"
)
"""tcmalloc's words when the kernel refuses it memory (RLIMIT_DATA): then ``operator new`` aborts
(after a statistics page longer than the tail kept), or a caller of a failed allocation
segfaults."""
_V8_PROCESS_OOM = re.compile(rb"\n# Fatal process out of memory: [^\n]*\n#\n*\Z")
"""V8's own report when the process cannot get memory at all (RLIMIT_DATA); SIGTRAP follows."""
_WATCH_OVERLAP = 64
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


_ready_data: dict[Path, int] = {}
"""Per workerd binary, the most writable private memory (bytes) a process had once ready."""


_learning: dict[Path, asyncio.Lock] = {}
TRIVIAL_JS = "export default { fetch() { return new Response(); } };"


def knows_ready_data(workerd_bin: Path) -> bool:
    return workerd_bin in _ready_data


async def learn_ready_data(workerd_bin: Path, config: bytes | str, cwd: Path) -> None:
    """Once per binary and process: start workerd on ``config`` (a trivial worker of ours, as a
    binary config message or a text config's contents) so that :meth:`WorkerdProcess.cap_memory`
    knows what a ready workerd holds before any job's code runs in one."""
    lock = _learning.setdefault(workerd_bin, asyncio.Lock())
    async with lock:
        if workerd_bin in _ready_data:
            return
        files: list[Path] = []
        if isinstance(config, str):
            stem = cwd / f"{FILE_PREFIX}learn-{secrets.token_hex(8)}"
            files = [stem.with_suffix(".js"), stem.with_suffix(".capnp")]
            write_new_file(files[0], TRIVIAL_JS.encode())
            write_new_file(files[1], config.replace("@CODE@", files[0].name).encode())
        target: Path | bytes = files[1] if files else config  # type: ignore[assignment]
        try:
            proc, port = await WorkerdProcess.start(workerd_bin, target, cwd=cwd, cgroup_procs=None)
            try:
                if port is not None:
                    proc.cap_memory(learn=True)
            finally:
                await proc.close()
        except OSError as e:
            _warn_once("learn", "cannot learn what a ready workerd holds: %s", e)
        finally:
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def vm_data(pid: int) -> int:
    """Bytes of writable private memory of process ``pid`` (``VmData``, what ``RLIMIT_DATA``
    bounds)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    match = re.search(r"^VmData:\s+(\d+) kB$", status, re.MULTILINE)
    if match is None:
        raise OSError(f"no VmData in /proc/{pid}/status")
    return int(match.group(1)) * 1024


def job_nice() -> int:
    """The nice value workerd gets: :data:`JOB_NICE` above this process's own, at most 19."""
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + JOB_NICE)


def lower_priority(pid: int, nice: int | None = None) -> None:
    """Give process group ``pid`` (a workerd started in its own session) ``nice`` (default
    :func:`job_nice`): every thread it has now; the threads it starts later inherit it. Raising
    a priority again needs CAP_SYS_NICE; without it, the process keeps the lower one."""
    try:
        os.setpriority(os.PRIO_PGRP, pid, job_nice() if nice is None else nice)
    except ProcessLookupError:
        pass
    except OSError as e:
        _warn_once("nice", "cannot lower workerd's scheduling priority: %s", e)


class WorkerdProcess:
    """One running ``workerd serve``; its pid stays the same through the placement wrapper."""

    def __init__(self, proc: asyncio.subprocess.Process, control_fd: int) -> None:
        self._proc = proc
        self._control_fd = control_fd
        self._killed = False
        self._workerd_bin: Path | None = None
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout = BoundedCapture(proc.stdout)
        self.stderr = BoundedCapture(proc.stderr, watch=ALLOCATOR_FAILED)

    @classmethod
    async def spawn(
        cls,
        workerd_bin: Path,
        config: Path | bytes,
        *,
        cwd: Path,
        cgroup_procs: Path | None,
        extra_args: tuple[str, ...] = (),
        nice: int | None = None,
    ) -> WorkerdProcess:
        """Start workerd on ``config``: a text config file, or a binary config message
        (:mod:`.capnp_config`), handed over in a memfd. With ``cgroup_procs``, workerd runs inside
        that slice from its first instruction."""
        use_pidfd_exit_watcher()
        config_fd = -1
        read_fd, write_fd = os.pipe()
        try:
            if isinstance(config, bytes):
                config_fd, config_args = binary_config_fd(config)
            else:
                config_args = [str(config)]
            argv = [str(workerd_bin), "serve", *config_args, "--verbose"]
            argv += ["--control-fd", str(write_fd), *extra_args]
            if cgroup_procs is not None:
                argv = ["/bin/sh", "-c", _PLACE_AND_EXEC, str(cgroup_procs), *argv]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=_CHILD_ENV,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,) if config_fd < 0 else (write_fd, config_fd),
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if config_fd >= 0:
                os.close(config_fd)
        lower_priority(proc.pid, nice)
        started = cls(proc, read_fd)
        ready = _ready_data.get(workerd_bin)
        if ready is not None:  # bounds what the job's top level may take before it is ready
            started._limit_data(ready + JOB_DATA_BUDGET)
        started._workerd_bin = workerd_bin
        return started

    @classmethod
    async def start(
        cls,
        workerd_bin: Path,
        config: Path | bytes,
        *,
        cwd: Path,
        cgroup_procs: Path | None,
        extra_args: tuple[str, ...] = (),
        nice: int | None = None,
    ) -> tuple[WorkerdProcess, int | None]:
        """:meth:`spawn`, then wait until it listens: the process and its port, or ``None`` if it
        exited first (then it has been reaped and all of its stderr read)."""
        proc = await cls.spawn(
            workerd_bin,
            config,
            cwd=cwd,
            cgroup_procs=cgroup_procs,
            extra_args=extra_args,
            nice=nice,
        )
        try:
            port = await proc.wait_listening()
            if port is None:
                await proc.wait()
                await asyncio.wait([proc.stderr.task])  # all of stderr, uncancelled
        except BaseException:
            proc.kill()
            await proc.close()
            raise
        return proc, port

    def cap_memory(self, budget: int = JOB_DATA_BUDGET, *, learn: bool = False) -> None:
        """Let the process add at most ``budget`` bytes of writable private memory to what it
        has now (``RLIMIT_DATA``); called once it is ready, before it runs the job. With
        ``learn`` (a process that ran none of a job's code: a warm loader), what it has is
        remembered per binary, and later starts get that plus ``budget`` at once, so that a
        job's module top level is bounded too. A process that ran user code never teaches it:
        its top level could raise the bound of every later start."""
        try:
            data = vm_data(self.pid)
        except ProcessLookupError:
            return  # it died meanwhile: nothing left to cap
        except OSError as e:
            _warn_once("cap_memory", "cannot cap workerd's memory (RLIMIT_DATA): %s", e)
            return
        if learn and self._workerd_bin is not None:
            _ready_data[self._workerd_bin] = max(data, _ready_data.get(self._workerd_bin, 0))
        self._limit_data(data + budget)

    def _limit_data(self, limit: int) -> None:
        """Lower ``RLIMIT_DATA`` to ``limit`` (never raises it: a bound set at the start holds)."""
        try:
            _, hard = resource.prlimit(self.pid, resource.RLIMIT_DATA)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.prlimit(self.pid, resource.RLIMIT_DATA, (limit, limit))
        except ProcessLookupError:
            pass
        except OSError as e:
            _warn_once("cap_memory", "cannot cap workerd's memory (RLIMIT_DATA): %s", e)

    def ended_out_of_memory(self) -> bool:
        """Whether the process ended by itself the way workerd ends when its memory runs out.

        Its last words are one of three reports, each with the exit it ends in: workerd's V8
        fatal-error line then its crash handler's abort (which exits with a status); tcmalloc's
        refused memory then (after its statistics) the same abort, or the crash handler's
        segfault; V8's "Fatal process out of memory" then death by SIGTRAP. User code can print
        anything through ``console.error``, but it cannot make workerd exit that way: a process
        killed from outside (another signal) after printing a report did not run out of memory.
        """
        if self._killed or self.returncode is None or self.returncode == 0:
            return False
        tail = self.stderr.tail
        if self.returncode == -signal.SIGTRAP:
            return _V8_PROCESS_OOM.search(tail) is not None
        if self.returncode < 0:  # killed by a signal: not by its crash handler's own exit
            return False
        if _V8_FATAL_OOM.search(tail) is not None:
            return True
        return self.stderr.watched and _CRASHED.search(tail) is not None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait_listening(self) -> int | None:
        """The port workerd listens on, once it does; ``None`` if it exited first."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(self._control_fd, "rb", buffering=0)
        self._control_fd = -1
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    event = json.loads(line)
                    if event["event"] == "listen" and event["socket"] == "http":
                        return int(event["port"])
            return None
        finally:
            transport.close()

    async def wait(self) -> int:
        return await self._proc.wait()

    def kill(self) -> None:
        """SIGKILL workerd (it ignores SIGTERM while a request hangs); later calls do nothing.

        ``os.kill`` rather than ``Process.kill``: the latter polls (and may reap) the child
        itself, racing asyncio's child watcher, which then reports a bogus exit status.
        """
        if not self._killed and self._proc.returncode is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)

    async def close(self, wait_s: float = 2.0) -> None:
        """Kill, reap and finish reading the output pipes (bounded)."""
        self.kill()
        if self._control_fd >= 0:
            os.close(self._control_fd)
            self._control_fd = -1
        tasks = [self.stdout.task, self.stderr.task]
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(self._proc.wait()), *tasks], timeout=wait_s
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.error("workerd pid %d did not exit/close its pipes within %.1f s", self.pid, wait_s)

    def logs(self) -> str:
        """What the worker printed: stdout, then stderr (each bounded)."""
        out, err = self.stdout.text(), self.stderr.text()
        return out + err if not out or out.endswith("\n") else f"{out}\n{err}"

    def stderr_tail(self, limit: int = 400) -> str:
        """The end of stderr, printable ASCII only, for an error message; led by workerd's last
        ``Uncaught`` report when the end is only a stack trace after it."""
        data = self.stderr.data
        tail = _printable(data[-limit:])
        start = data.rfind(b"Uncaught")
        if start == -1 or start >= len(data) - limit:
            return tail
        line = data[start : data.find(b"\n", start) if b"\n" in data[start:] else len(data)]
        return f"{_printable(line[:200])} ... {tail}"


def _printable(data: bytes) -> str:
    return re.sub(r"[^\x20-\x7e]+", " ", data.decode("ascii", errors="replace")).strip()
