"""How a workerd's end is read as its job exhausting its memory, or not.

Each case is a real child process in workerd's place that prints to stderr what a real workerd
printed on this machine in that case (`tests/test_hostile_jobs.py` runs the real ones, whose shape
varies from run to run) and ends the way it ended: the decision reads the way the process ended,
not only its words, which a job can print too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from executor.sandbox.workerd import WorkerdProcess

V8_FATAL = (
    "workerd/jsg/setup.c++:44: fatal: V8 fatal error; location = Reached heap limit; "
    "message = : allocation failed: JavaScript heap out of memory\n"
)
ABORTED = "*** Received signal #6: Aborted\nstack: /lib/x86_64-linux-gnu/libc.so.6@0x8aeeb \n"
TCMALLOC_FAILED = "Unable to allocate 4096 (new failed)"
# tcmalloc's statistics page: longer than the stderr tail that is kept, cut by the abort.
TCMALLOC_STATS = "".join(
    f"class {n:3d} [        0 bytes ] :        0 objs;   0.0 MiB;    0.9 cum MiB;        0 live "
    "pages; spans:          0 ret /          0 req = 0.0000;          0 objs/span;\n"
    for n in range(200)
)
SEGFAULT = "*** Received signal #11: Segmentation fault\nstack: /bin/workerd@0x4cd1e07 \n"
MPROTECT_FAILED = (
    "10182 external/tcmalloc+/tcmalloc/internal/system_allocator.h:390] "
    "mprotect(0x1394bf800000, 2097152) failed (Cannot allocate memory)\n"
)
CENTRAL_FAILED = (
    "10182 external/tcmalloc+/tcmalloc/central_freelist.h:832] tcmalloc: allocation failed 40960\n"
)
PROCESS_OOM = "\n#\n# Fatal process out of memory: Failed to reserve virtual memory\n#\n"


def _script(tmp_path: Path, parts: list[str], end: str) -> Path:
    """A stand-in binary that writes ``parts`` to stderr one at a time, then ``end``s."""
    texts = [tmp_path / f"part{i}" for i in range(len(parts))]
    for text, part in zip(texts, parts, strict=True):
        text.write_text(part)
    writes = "".join(f"cat {text} >&2; sleep 0.05\n" for text in texts)
    script = tmp_path / "fake-workerd"
    script.write_text(f"#!/bin/sh\n{writes}{end}\n")
    script.chmod(0o755)
    return script


async def _ended_out_of_memory(tmp_path: Path, parts: list[str], end: str) -> bool:
    proc = await WorkerdProcess.spawn(
        _script(tmp_path, parts, end), b"", cwd=tmp_path, cgroup_procs=None
    )
    try:
        async with asyncio.timeout(10):
            await proc.wait()
            await proc.stderr.task
        return proc.ended_out_of_memory()
    finally:
        await proc.close()


@pytest.mark.parametrize(
    ("parts", "end"),
    [
        pytest.param([V8_FATAL + ABORTED], "exit 1", id="v8-heap-cap-then-abort"),
        pytest.param(
            [
                TCMALLOC_FAILED + "See the page\n",
                TCMALLOC_STATS + "class 77 [ 0 bytes ] :   ",
                ABORTED,
            ],
            "exit 1",
            id="tcmalloc-refused-then-abort",
        ),
        pytest.param(
            ["Unable to allo", "cate 4096 (new failed)\n" + TCMALLOC_STATS, ABORTED],
            "exit 1",
            id="tcmalloc-report-split-between-reads",
        ),
        pytest.param([PROCESS_OOM], "kill -TRAP $$", id="v8-process-oom-then-sigtrap"),
        pytest.param(
            [MPROTECT_FAILED + CENTRAL_FAILED, SEGFAULT], "exit 1", id="tcmalloc-segfault"
        ),
    ],
)
async def test_workerds_own_out_of_memory_ends_are_evidence(
    tmp_path: Path, parts: list[str], end: str
) -> None:
    assert await _ended_out_of_memory(tmp_path, parts, end)


@pytest.mark.parametrize(
    ("parts", "end"),
    [
        pytest.param([V8_FATAL + ABORTED], "kill -KILL $$", id="v8-report-then-killed-outside"),
        pytest.param(
            [TCMALLOC_FAILED + "\n" + ABORTED], "kill -KILL $$", id="tcmalloc-report-then-killed"
        ),
        pytest.param([PROCESS_OOM], "kill -KILL $$", id="process-oom-report-then-killed"),
        pytest.param([PROCESS_OOM], "exit 1", id="process-oom-report-without-its-sigtrap"),
        pytest.param([ABORTED], "exit 1", id="an-abort-without-any-report"),
        pytest.param([SEGFAULT], "exit 1", id="a-segfault-without-any-report"),
        pytest.param([CENTRAL_FAILED, SEGFAULT], "kill -KILL $$", id="tcmalloc-report-then-killed"),
        pytest.param([TCMALLOC_FAILED + "\n"], "exit 1", id="tcmalloc-report-without-an-abort"),
        pytest.param([V8_FATAL + ABORTED + "later words\n"], "exit 1", id="words-after-the-abort"),
        pytest.param([V8_FATAL + ABORTED], "exit 0", id="a-clean-exit"),
    ],
)
async def test_anything_else_is_no_evidence(tmp_path: Path, parts: list[str], end: str) -> None:
    assert not await _ended_out_of_memory(tmp_path, parts, end)
