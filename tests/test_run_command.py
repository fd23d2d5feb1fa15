"""``oyster-executor run`` as a developer runs it: a subprocess, real workerd, real slices."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.sandbox.cgroups import SlicePool
from tests.sandbox_helpers import (
    ECHO_JS,
    HANG_JS,
    PYTHON,
    REPO_ROOT,
    SECRET_JS,
    SYNTAX_ERROR_JS,
    sized_js,
    slice_parent,
    workerd_bin_or_skip,
)

pytestmark = pytest.mark.workerd


@pytest.fixture(scope="module")
def parent() -> Iterator[Path]:
    with slice_parent(count=2) as path:
        yield path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    workerd_bin_or_skip()
    return subprocess.run(
        [str(PYTHON), "-m", "executor", "run", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("path_flags", [(), ("--cold",)], ids=["warm", "cold"])
def test_confined_run_prints_output_code_time_and_logs(
    parent: Path, tmp_path: Path, path_flags: tuple[str, ...]
) -> None:
    code = write(tmp_path, "echo.js", ECHO_JS)
    result = run(code, "--input", '{"n": 5}', "--cgroup-parent", parent, *path_flags)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "error code: 0 (executed; the output is the worker's response body)"
    assert lines[1].startswith("total time: ") and lines[1].endswith(" ms")
    assert lines[2:4] == ["output (13 bytes, UTF-8 text):", 'echo:{"n": 5}']
    assert "echo got 8 bytes" in result.stdout and "to stderr" in result.stdout
    assert "UNCONFINED" not in result.stderr
    warm = "warm slices available" in result.stderr
    assert warm == (not path_flags), result.stderr  # the default is the daemon's warm path


def test_json_with_secret_and_binary_input_file(parent: Path, tmp_path: Path) -> None:
    code = write(tmp_path, "secret.js", SECRET_JS)
    secret = write(tmp_path, "my.secret", b"\x01\x02\xff")
    body = write(tmp_path, "body.bin", b"\x00\x01")
    result = run(
        code, "--input", f"@{body}", "--secret-file", secret, "--cgroup-parent", parent, "--json"
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["error_code"] == 0
    assert outcome["output"] is None  # not UTF-8
    assert outcome["output_hex"] == "0x0102ff"
    assert isinstance(outcome["total_time_ms"], int)


@pytest.mark.parametrize(
    ("code", "deadline", "status", "meaning"),
    [
        (SYNTAX_ERROR_JS, "5000", 13, "syntax error in the code"),
        (HANG_JS, "300", 14, "the deadline passed before a response"),
        (sized_js(20481), "5000", 15, "the response is larger than 20480 bytes"),
    ],
    ids=["syntax-error", "deadline", "too-large"],
)
@pytest.mark.parametrize("path_flags", [(), ("--cold",)], ids=["warm", "cold"])
def test_exit_status_reflects_the_error_code(
    parent: Path,
    tmp_path: Path,
    code: bytes,
    deadline: str,
    status: int,
    meaning: str,
    path_flags: tuple[str, ...],
) -> None:
    path = write(tmp_path, "job.js", code)
    result = run(path, "--deadline-ms", deadline, "--cgroup-parent", parent, *path_flags)
    assert result.returncode == status, result.stdout + result.stderr
    assert f"error code: {status - 10} ({meaning}" in result.stdout
    assert "output: (empty)" in result.stdout
    if status == 14:
        assert "total time: 300 ms" in result.stdout


def test_slices_all_held_by_another_process_fail_at_once(parent: Path, tmp_path: Path) -> None:
    # As when a daemon keeps a warm workerd in every slice: this process holds their locks.
    pool = SlicePool.discover(parent)
    held = [pool.reserve() for _ in pool.slices]
    try:
        code = write(tmp_path, "echo.js", ECHO_JS)
        result = run(code, "--cgroup-parent", parent)
    finally:
        for slice_ in held:
            asyncio.run(pool.release(slice_))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no free cgroup slice" in result.stderr and "warm_workers" in result.stderr


def test_unconfined_says_so_loudly(tmp_path: Path) -> None:
    code = write(tmp_path, "echo.js", ECHO_JS)
    result = run(code, "--unconfined", "--input", "hi")
    assert result.returncode == 0, result.stderr
    assert "UNCONFINED" in result.stderr and "WITHOUT a cgroup slice" in result.stderr
    assert "echo:hi" in result.stdout


def test_missing_slices_and_bad_usage_exit_2(tmp_path: Path) -> None:
    code = write(tmp_path, "echo.js", ECHO_JS)
    result = run(code, "--cgroup-parent", tmp_path)
    assert result.returncode == 2
    assert "cgroup_setup.sh" in result.stderr and "--limits none" in result.stderr
    assert "Traceback" not in result.stderr

    result = run(tmp_path / "missing.js", "--unconfined")
    assert result.returncode == 2 and "cannot read code file" in result.stderr

    result = run("--help")
    assert result.returncode == 0
    assert "exit status" in result.stdout and "14 deadline passed" in result.stdout


HEAP_JS = b"""
export default {
  async fetch(request) {
    const keep = [];
    for (let i = 0; i < 40; i++) keep.push(new Uint8Array(4 * 1024 * 1024).fill(i + 1));
    return new Response("kept " + keep.length * 4 + " MiB");
  }
};
"""


@pytest.mark.parametrize("path_flags", [(), ("--cold",)], ids=["warm", "cold"])
def test_report_shows_a_heap_hungry_functions_peak_memory(
    parent: Path, tmp_path: Path, path_flags: tuple[str, ...]
) -> None:
    code = write(tmp_path, "heap.js", HEAP_JS)
    result = run(code, "--cgroup-parent", parent, "--json", *path_flags)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    # The heap cap inside every workerd holds on any host: the job exhausts its memory and gets
    # the deterministic answer a production executor signs.
    assert report["error_code"] == 0 and report["output"] == "Internal Server Error", report
    assert report["limits"] == "production"
    assert report["peak_memory_bytes"] > 40 * 1024 * 1024  # it did grow before the cap
    assert report["memory_limit_bytes"] == 100 * 1024 * 1024
    assert report["cpu_time_ms"] > 0 and report["wall_time_ms"] >= report["total_time_ms"] - 1

    text = run(code, "--cgroup-parent", parent, *path_flags).stdout
    assert "peak memory: " in text and "V8 heap cap" in text
    assert "error code for the chain: 0 (OK)" in text


def test_report_of_a_small_function(parent: Path, tmp_path: Path) -> None:
    code = write(tmp_path, "echo.js", ECHO_JS)
    result = run(code, "--cgroup-parent", parent, "--input", "hi")
    assert result.returncode == 0, result.stderr
    report = result.stdout.split("report:\n", 1)[1].splitlines()
    assert report[0].startswith("  wall time: ") and report[1].startswith("  cpu time: ")
    assert "within it" in report[2]  # an echo stays far below the slice's memory limit
    assert report[3] == "  output size: 7 of 20480 bytes (0.0% of the cap)"
    assert report[4] == "  error code for the chain: 0 (OK)"


def test_report_of_an_oversized_output_and_limits_none(tmp_path: Path) -> None:
    code = write(tmp_path, "big.js", sized_js(20481))
    result = run(code, "--limits", "none")
    assert result.returncode == 15, result.stdout + result.stderr
    assert "output size: over the 20480-byte cap (error code 5)" in result.stdout
    assert "limits: no cgroup slice" in result.stdout
    assert "UNCONFINED" in result.stderr
