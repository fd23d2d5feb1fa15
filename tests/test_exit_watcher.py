"""Child exits through pidfds: right exit statuses, no thread per child (Python 3.11's default
watcher), and no use of the child-watcher API where asyncio does it by itself (deprecated in 3.12,
removed in 3.14): on this interpreter, and on every later CPython found on the PATH."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from executor.sandbox.workerd import use_pidfd_exit_watcher

LATER_PYTHONS = ("python3.12", "python3.13", "python3.14", "python3.15")
CHECK = """
import asyncio, sys, threading, warnings
warnings.simplefilter("error")
from executor.sandbox import workerd

async def main():
    workerd.use_pidfd_exit_watcher()
    before = threading.active_count()
    procs = [await asyncio.create_subprocess_exec("sh", "-c", f"exit {c}") for c in (0, 3)]
    assert threading.active_count() == before, "a thread per child"
    assert [await p.wait() for p in procs] == [0, 3]

asyncio.run(main())
print("ok", sys.version_info[:2])
"""


@pytest.fixture(autouse=True)
def pidfds() -> None:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        pytest.skip("this kernel has no pidfds: asyncio's default watcher is kept")
    use_pidfd_exit_watcher()


async def test_exit_statuses_come_through() -> None:
    codes = [0, 3, 255]
    procs = [await asyncio.create_subprocess_exec("sh", "-c", f"exit {c}") for c in codes]
    assert [await p.wait() for p in procs] == codes
    killed = await asyncio.create_subprocess_exec("sleep", "30")
    killed.kill()
    assert await killed.wait() == -9


async def test_no_thread_per_child() -> None:
    before = threading.active_count()
    procs = [await asyncio.create_subprocess_exec("sleep", "0.3") for _ in range(8)]
    assert threading.active_count() == before  # the default would hold 8 more threads now
    assert await asyncio.gather(*(p.wait() for p in procs)) == [0] * 8


async def test_children_of_another_loop_are_watched_too() -> None:
    def in_a_thread() -> int:
        async def run() -> int:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 7")
            return await proc.wait()

        return asyncio.run(run())

    assert await asyncio.to_thread(in_a_thread) == 7


def test_spawning_is_warning_free_and_thread_free_on_later_pythons() -> None:
    """What the Python the suite runs on cannot show: the module imports and spawns without a
    DeprecationWarning (an error here) or a thread per child on each later CPython found."""
    found = [p for name in LATER_PYTHONS if (p := shutil.which(name))]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted(str(p) for p in pyenv.glob("3.1[2-9]*/bin/python3"))
    if not found:
        pytest.skip(f"no later CPython on the PATH or in pyenv ({', '.join(LATER_PYTHONS)})")
    root = Path(__file__).parents[1]
    checked = []
    for python in found:
        result = subprocess.run(
            [python, "-c", CHECK],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode == 127:
            continue  # a shim (pyenv) for a version that is not selected here
        assert result.returncode == 0, f"{python}: {result.stderr[-2000:]}"
        checked.append(result.stdout.strip())
    if not checked:
        pytest.skip(f"none of {found} runs here")
    print(checked)
