"""The slice pool and cgroup_setup.sh, on real cgroup v2 groups under a parent of the tests' own."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.errors import NoFreeSliceError, SliceSetupError
from executor.sandbox.cgroups import Slice, SlicePool, find_cgroup2_mount
from tests.sandbox_helpers import (
    SETUP_SCRIPT,
    cgroup2_mount_or_skip,
    first_slice,
    run_setup,
    slice_parent,
    start_in_cgroup,
    wait_until,
)


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=3) as path:
        yield path


@pytest.fixture
def pool(parent: Path) -> SlicePool:
    return SlicePool.discover(parent)


# --- find_cgroup2_mount ---------------------------------------------------------------------


def test_find_cgroup2_mount_reads_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /my\\040cgroups rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_mount(mountinfo) == Path("/my cgroups")

    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    with pytest.raises(SliceSetupError, match="no cgroup v2"):
        find_cgroup2_mount(mountinfo)


# --- cgroup_setup.sh ------------------------------------------------------------------------


def test_setup_script_is_idempotent_reports_controllers_and_removes() -> None:
    mount = cgroup2_mount_or_skip()
    name = f"oyster-test-{os.urandom(4).hex()}"
    parent = mount / name
    try:
        first = run_setup("--parent", name, "--count", "2")
        second = run_setup("--parent", name, "--count", "2")
        assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["workerd_1", "workerd_2"]

        available = (mount / "cgroup.controllers").read_text().split()
        for result in (first, second):
            warnings = [line for line in result.stderr.splitlines() if "unavailable" in line]
            if {"memory", "cpu"} <= set(available):
                assert warnings == []
            else:
                assert len(warnings) == 1, result.stderr  # ONE clear line, not one per slice
                assert "NOT enforced" in warnings[0]
        for s in ("workerd_1", "workerd_2"):
            memory_max = parent / s / "memory.max"
            if "memory" in available:
                assert memory_max.read_text().strip() == str(100 * 1024 * 1024)
            else:
                assert not memory_max.exists()
            if "cpu" in available:
                assert (parent / s / "cpu.max").read_text().strip() == "50000 1000000"

        # --remove kills what runs in a slice, then removes the slices and the emptied parent.
        sleeper = start_in_cgroup(parent / "workerd_1" / "cgroup.procs", "sleep", "60")
        try:
            wait_until(lambda: (parent / "workerd_1" / "cgroup.procs").read_text().strip())
            removed = run_setup("--parent", name, "--remove")
            assert sleeper.wait(timeout=5) == -9
        finally:
            sleeper.kill()
            sleeper.wait()
        assert "removed 2 slices" in removed.stdout
        assert not parent.exists()
        again = run_setup("--parent", name, "--remove")
        assert "nothing to remove" in again.stdout
    finally:
        if parent.exists():
            run_setup("--parent", name, "--remove", check=False)


def test_setup_script_first_numbers_the_slices_from_k() -> None:
    mount = cgroup2_mount_or_skip()
    name = f"oyster-test-first-{os.getpid()}"
    try:
        made = run_setup("--parent", name, "--count", "2", "--first", "7")
        assert "workerd_7..workerd_8" in made.stdout
        pool = SlicePool.discover(mount / name)
        assert [s.name for s in pool.slices] == ["workerd_7", "workerd_8"]
    finally:
        run_setup("--parent", name, "--remove")
    bad = run_setup("--first", "0", check=False)
    assert bad.returncode == 2 and "--first must be a positive integer" in bad.stderr


def test_setup_script_rejects_bad_usage_and_non_root() -> None:
    help_ = subprocess.run([SETUP_SCRIPT, "--help"], capture_output=True, text=True, check=False)
    assert help_.returncode == 0 and "--remove" in help_.stdout

    bad = subprocess.run([SETUP_SCRIPT, "--count", "zero"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--count must be a positive integer" in bad.stderr
    bad = subprocess.run([SETUP_SCRIPT, "--parent", "a/../b"], capture_output=True, text=True)
    assert bad.returncode == 2 and "plain relative path" in bad.stderr

    if os.geteuid() != 0:
        pytest.skip("needs root (not root here): the rest runs the script as root and as nobody")
    no_cgroup2 = subprocess.run(
        [SETUP_SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "OYSTER_CGROUP_MOUNT": "/tmp"},
        check=False,
    )
    assert no_cgroup2.returncode == 1 and "not a cgroup v2 mount" in no_cgroup2.stderr

    # nobody may not be able to enter the checkout (a clone under /root or in a 0700 mktemp -d):
    # run a copy from a folder anyone can read, so only the script's own root check is tested.
    with tempfile.TemporaryDirectory(prefix="oyster-setup-") as folder:
        os.chmod(folder, 0o755)
        script = Path(folder) / "cgroup_setup.sh"
        shutil.copy(SETUP_SCRIPT, script)
        script.chmod(0o755)
        as_nobody = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script)],
            capture_output=True,
            text=True,
            check=False,
            cwd=folder,
        )
    assert as_nobody.returncode == 1
    assert "must be run as root" in as_nobody.stderr


# --- SlicePool ------------------------------------------------------------------------------


def test_discover_finds_the_slices(pool: SlicePool, parent: Path) -> None:
    first = first_slice()
    numbers = [first, first + 1, first + 2]
    assert [s.name for s in pool.slices] == [f"workerd_{n}" for n in numbers]
    assert pool.slices[0].path == parent / f"workerd_{first}"
    assert pool.capacity == pool.free_count == 3


def test_discover_without_slices_tells_to_run_the_setup_script(tmp_path: Path) -> None:
    with pytest.raises(SliceSetupError, match=r"no workerd_N cgroup slices.*cgroup_setup\.sh"):
        SlicePool.discover(tmp_path)
    with pytest.raises(SliceSetupError, match=r"cgroup_setup\.sh"):
        SlicePool.discover(tmp_path / "missing")


def test_limits_report_what_the_slices_carry(pool: SlicePool, parent: Path) -> None:
    limits = pool.limits()
    if (parent / f"workerd_{first_slice()}" / "memory.max").exists():
        assert limits.memory_max == str(100 * 1024 * 1024)
    else:
        assert limits.memory_max is None
        assert not limits.enforced
        assert "limits NOT enforced: controllers unavailable" in limits.describe()


async def test_reserve_all_then_no_free_slice_then_release(pool: SlicePool) -> None:
    taken = [pool.reserve() for _ in range(3)]
    assert len({s.index for s in taken}) == 3
    assert pool.free_count == 0
    with pytest.raises(NoFreeSliceError, match="no free cgroup slice"):
        pool.reserve()
    for s in taken:
        await pool.release(s)
    assert pool.free_count == 3
    with pytest.raises(ValueError, match="not reserved"):
        await pool.release(taken[0])


async def test_acquire_waits_for_a_release_and_fails_fast_without_slices(pool: SlicePool) -> None:
    taken = [pool.reserve() for _ in range(3)]
    waiter = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.1)  # a quiet period is the point: every slice busy, it keeps waiting
    assert not waiter.done()
    await pool.release(taken[1])
    got = await asyncio.wait_for(waiter, 2)
    assert got.index == taken[1].index
    for s in (taken[0], taken[2], got):
        await pool.release(s)
    for s in pool.slices:  # nothing in service: no point in waiting
        pool._take_out_of_service(s, "test")
    with pytest.raises(NoFreeSliceError):
        await asyncio.wait_for(pool.acquire(), 2)


async def test_release_kills_everything_in_the_slice(pool: SlicePool) -> None:
    async with pool.lease() as slice_:
        procs = [start_in_cgroup(slice_.procs_file, "sleep", "60") for _ in range(2)]
        wait_until(lambda: len(slice_.pids()) == 2)
        assert pool.free_count == 2
    try:
        assert slice_.pids() == []
        assert [p.wait(timeout=5) for p in procs] == [-9, -9]
        assert pool.free_count == 3
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def test_kill_all_without_cgroup_kill_falls_back_to_sigkill(
    pool: SlicePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kernels before 5.14 have no cgroup.kill: the listed pids get SIGKILL instead.
    monkeypatch.setattr(Slice, "trigger_kill", lambda self: False)
    slice_ = pool.reserve()
    proc = start_in_cgroup(slice_.procs_file, "sleep", "60")
    try:
        wait_until(slice_.pids)
        assert await slice_.kill_all()
        assert proc.wait(timeout=5) == -9
    finally:
        proc.kill()
        proc.wait()
        await pool.release(slice_)


async def test_another_process_holding_a_slice_is_respected(parent: Path) -> None:
    # Two pools opened separately behave like two processes: the flock keeps them apart.
    daemon, developer = SlicePool.discover(parent), SlicePool.discover(parent)
    held = [daemon.reserve(), daemon.reserve()]
    mine = developer.reserve()
    assert mine.index not in {s.index for s in held}
    with pytest.raises(NoFreeSliceError):
        developer.reserve()
    await developer.release(mine)
    for s in held:
        await daemon.release(s)


async def test_stray_processes_are_killed_and_the_slice_skipped(pool: SlicePool) -> None:
    first = pool.slices[0]
    stray = start_in_cgroup(first.procs_file, "sleep", "60")
    try:
        wait_until(first.pids)
        got = pool.reserve()
        assert got.index != first.index  # never handed out with someone else's process inside
        assert stray.wait(timeout=5) == -9
        await pool.release(got)
        again = pool.reserve()
        assert again.index == first.index  # emptied: usable again
        await pool.release(again)
    finally:
        stray.kill()
        stray.wait()


async def test_slice_that_cannot_be_emptied_goes_out_of_service(
    pool: SlicePool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A process that survives SIGKILL (stuck in uninterruptible sleep) cannot be produced on
    # demand, so kill_all reports the failure it would see.
    async def cannot_empty(self: Slice, wait_s: float = 0) -> bool:
        return False

    monkeypatch.setattr(Slice, "kill_all", cannot_empty)
    stuck = pool.reserve()
    with caplog.at_level(logging.ERROR, logger="executor.sandbox.cgroups"):
        await pool.release(stuck)
    assert f"{stuck.path} taken out of service" in caplog.text
    assert pool.capacity == 2 and pool.free_count == 2
    assert pool.out_of_service == [stuck]
    others = [pool.reserve(), pool.reserve()]
    assert stuck.index not in {s.index for s in others}
    with pytest.raises(NoFreeSliceError):
        pool.reserve()
    monkeypatch.undo()
    for s in others:
        await pool.release(s)


async def test_slice_removed_under_a_job_goes_out_of_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with slice_parent(count=2) as parent:
        pool = SlicePool.discover(parent)
        slice_ = pool.reserve()
        slice_.path.rmdir()  # e.g. `cgroup_setup.sh --remove` while the daemon runs
        with caplog.at_level(logging.ERROR, logger="executor.sandbox.cgroups"):
            await pool.release(slice_)
        assert "taken out of service" in caplog.text
        assert pool.capacity == 1
        other = pool.reserve()
        assert other.index != slice_.index
        await pool.release(other)
