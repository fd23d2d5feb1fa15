"""The outbound budget's byte count, on real workerd, with the config the sandbox renders.

No public server is reachable here, and workerd's network refuses loopback (as it must: that is
what keeps user code away from the host), so the counting worker's own outbound is pointed at a
worker in the same process that answers 10,000 bytes per call. Everything the job's ``fetch`` goes
through up to that point is the rendered config and the counting worker the daemon uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.sandbox import http1
from executor.sandbox.outbound import SERVICE, OutboundBudget
from executor.sandbox.workerd import COMPATIBILITY_DATE, JobFiles, WorkerdProcess, capnp_string
from tests.sandbox_helpers import workerd_bin_or_skip

pytestmark = pytest.mark.workerd

FETCH_THREE_TIMES_JS = b"""
export default {
  async fetch() {
    const out = [];
    for (let i = 0; i < 3; i++) {
      try { out.push(String((await (await fetch("https://example.com/")).text()).length)); }
      catch (e) { out.push(String(e.message)); }
    }
    return new Response(out.join(","));
  }
};
"""
UPSTREAM_JS = "export default { fetch() { return new Response('x'.repeat(10000)); } };"


def _with_local_upstream(config: str) -> str:
    """``config`` with the counting worker's outbound sent to an in-process upstream."""
    counting_end = f'compatibilityDate = "{COMPATIBILITY_DATE}"))'
    assert config.count(counting_end) == 1, config
    upstream = (
        f', (name = "upstream", worker = (modules = [ (name = "up", esModule = '
        f'{capnp_string(UPSTREAM_JS)}) ], compatibilityDate = "{COMPATIBILITY_DATE}"))'
    )
    return config.replace(
        counting_end,
        f'compatibilityDate = "{COMPATIBILITY_DATE}", globalOutbound = "upstream")){upstream}',
    )


async def _run(tmp_path: Path, budget: OutboundBudget) -> bytes:
    code = FETCH_THREE_TIMES_JS
    files = JobFiles.write(tmp_path, code, port=0, secret_path=None, outbound=budget)
    try:
        config = files.config.read_text()
        assert f'globalOutbound = "{SERVICE}"' in config  # the job's fetch goes through it
        files.config.write_text(_with_local_upstream(config))
        proc, port = await WorkerdProcess.start(
            workerd_bin_or_skip(), files.config, cwd=tmp_path, cgroup_procs=None
        )
        try:
            assert port is not None, proc.stderr_tail()
            return await http1.post(port, b"", limit=1 << 16)
        finally:
            await proc.close()
    finally:
        files.remove()


async def test_the_fetch_whose_body_passes_the_byte_budget_fails(tmp_path: Path) -> None:
    output = await _run(tmp_path, OutboundBudget(received=25_000))
    assert output == b"10000,10000,outbound budget: more than 25000 bytes received"


async def test_within_the_byte_budget_every_body_arrives_whole(tmp_path: Path) -> None:
    assert await _run(tmp_path, OutboundBudget(received=30_000)) == b"10000,10000,10000"


async def test_both_budgets_count_in_one_job(tmp_path: Path) -> None:
    output = await _run(tmp_path, OutboundBudget(fetches=2, received=100_000))
    assert output == b"10000,10000,outbound budget: more than 2 fetches"
