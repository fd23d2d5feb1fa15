"""Shared pieces of the sandbox tests: real cgroup v2 slices under a parent of the test's own, made
and torn down with ``cgroup_setup.sh``; worker scripts; leak checks."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from executor.errors import ExecutorError, SliceSetupError
from executor.sandbox.cgroups import find_cgroup2_mount
from tests import polling

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO_ROOT / "cgroup_setup.sh"
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"

ECHO_JS = b"""
export default {
  async fetch(request, env) {
    const body = await request.text();
    console.log("echo got " + body.length + " bytes");
    console.error("to stderr");
    return new Response("echo:" + body);
  }
};
"""
SECRET_JS = b"""
export default {
  async fetch(request, env) {
    return new Response(new Uint8Array(env.secret));
  }
};
"""
# Keeps a timer alive, so workerd never answers and never gives up: only the deadline ends it.
HANG_JS = b"""
export default {
  async fetch(request, env) {
    await new Promise(() => setInterval(() => {}, 1000));
    return new Response("unreachable");
  }
};
"""
SYNTAX_ERROR_JS = b"export default { async fetch(request) { return new Response('x' + ; } };"
STACK_OVERFLOW_JS = b"""
function down(n) { return down(n + 1) + 1; }
export default { async fetch() { return new Response(String(down(0))); } };
"""
THROW_JS = b"export default { async fetch() { throw new Error('boom'); } };"
TOP_LEVEL_THROW_JS = b"throw new Error('not a syntax error'); export default {};"


def sized_js(size: int) -> bytes:
    """A worker whose response body is ``size`` bytes."""
    return b"export default { async fetch() { return new Response('a'.repeat(%d)); } };" % size


def cgroup2_mount_or_skip() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroup slices")
    try:
        mount = find_cgroup2_mount()
    except SliceSetupError as e:
        pytest.skip(f"no cgroup2 mount on this machine: {e}")
    if not os.access(mount / "cgroup.procs", os.W_OK):
        pytest.skip(f"cgroup2 mount {mount} is not writable")
    return mount


def run_setup(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SETUP_SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"cgroup_setup.sh {args} failed: {result.stdout}{result.stderr}")
    return result


SLICES_PER_PROCESS = 200


def first_slice() -> int:
    """The number of this test process's first slice (slice N listens on port 11000 + N).

    Slice ports are fixed by their numbers, so two test processes that number their slices alike
    collide (``bind(): Address already in use``). Each process takes a block of 200 numbers of
    its own instead, from 201 up (clear of the devnet's slices from 101, and with every port
    below the kernel's ephemeral range): pytest-xdist worker ``gwK`` takes block ``K + 1`` of its
    run's ten, a serial run a block chosen by its pid.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    if worker.startswith("gw") and worker[2:].isdigit() and int(worker[2:]) < 9:
        try:
            run_block = int(run, 16) % 9
        except ValueError:
            run_block = 0
        block = 1 + int(worker[2:]) + 10 * run_block
    else:
        block = 1 + os.getpid() % 98
    return 1 + SLICES_PER_PROCESS * block


@contextmanager
def slice_parent(count: int = 3) -> Iterator[Path]:
    """A fresh ``<mount>/oyster-test-<random>`` holding ``count`` slices numbered from
    :func:`first_slice`; removed afterwards."""
    mount = cgroup2_mount_or_skip()
    name = f"oyster-test-{secrets.token_hex(4)}"
    run_setup("--parent", name, "--count", str(count), "--first", str(first_slice()))
    try:
        yield mount / name
    finally:
        run_setup("--parent", name, "--remove")
        assert not (mount / name).exists()


def workerd_bin_or_skip() -> Path:
    from oyster_devnet.tools import workerd_binary

    try:
        return workerd_binary()
    except ExecutorError as e:
        pytest.skip(str(e))


def workerd_pids_referencing(path: Path) -> list[int]:
    """Live workerd processes whose command line mentions ``path`` or that run in it (a workerd
    started from a binary config names no file: the sandbox starts it in its runtime folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd") if b"workerd" in cmdline else ""
        except OSError:
            continue
        if b"workerd" in cmdline and (os.fsencode(path) in cmdline or cwd == str(path)):
            found.append(int(proc.name))
    return found


def start_in_cgroup(procs_file: Path, *argv: str) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside a cgroup (the same placement wrapper the sandbox uses)."""
    return subprocess.Popen(
        ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs_file), *argv],
        stdin=subprocess.DEVNULL,
    )


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """For synchronous code only (it blocks the event loop): async tests use
    :func:`tests.polling.wait_until`. Polls ``predicate()`` until it is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


async def eventually(predicate: Callable[[], object], within_s: float = 20.0) -> None:
    """:func:`tests.polling.wait_until` under its older name."""
    await polling.wait_until(predicate, timeout=within_s, interval=0.005)


def proc_file(pid: int, name: str) -> bytes:
    """``/proc/<pid>/<name>``."""
    return Path(f"/proc/{pid}/{name}").read_bytes()


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
